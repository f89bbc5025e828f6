// The LLaVA-1.5 network (CLIP tower + projector + LLaMA decoder) loaded from a checkpoint, with the
// two steps the engine and the parity tests share: encoding images to projected features, and
// building a prompt's input embeddings with the image placeholder rows replaced by those features
// (HF LlavaForConditionalGeneration's merge), and the batched prefill / decode steps that turn
// packed prompts or tokens into next-token logits (with an optional last-row attention hook: flex).
// For FlexAttention checkpoints it also holds the HR projections and runs the two-resolution vision
// pass. Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "model/modes/cross_attention.h"
#include "model/modes/flex_attention.h"
#include "model/nn/clip_vision.h"
#include "model/nn/llama.h"
#include "model/status.h"
#include "model/weights/model_config.h"

namespace flexvqa {

// One prompt of a packed prefill: its ids (image placeholders expanded), the image features its
// placeholder rows take ([image_tokens, D], or undefined), and the KV-cache slot it fills from 0.
struct PromptChunk {
  const std::vector<int32_t>* tokens = nullptr;
  at::Tensor image_features;
  int slot = 0;
};

class LlavaModel {
 public:
  // max_positions: rows of the RoPE tables (the context the engine serves).
  static StatusOr<std::unique_ptr<LlavaModel>> Load(const LlavaConfig& config, at::ScalarType dtype,
                                                    at::Device device, int64_t max_positions);

  const LlavaConfig& config() const { return config_; }
  const LlamaDecoder& decoder() const { return *decoder_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // pixels [N, 3, S, S] -> projected image features [N, image_tokens, D].
  at::Tensor EncodeImages(const at::Tensor& pixels) const;

  // flex: the HR projections (null for other checkpoints).
  const HighResProjections* highres() const { return highres_.get(); }
  // xattn: the cross-attention weights (null for other checkpoints).
  const CrossAttentionWeights* cross() const { return cross_.get(); }
  // flex: one vision pass over both views (llava_arch.py:205-225). high [N, 3, Z S, Z S] is cut
  // into Z x Z tiles of S, row-major; low [N, 3, S, S]. Returns {LR features [N, s^2, D] (they
  // enter the sequence), raw HR features [N, (Z s)^2, D] stitched row-major over the (Z s) x (Z s)
  // grid}.
  std::pair<at::Tensor, at::Tensor> EncodeTwoResolutions(const at::Tensor& high,
                                                         const at::Tensor& low) const;

  // hd (docs/modes.md): the features one image adds to the sequence, [N, s^2 + (Z s)^2, D]: its LR
  // features followed by the raw HR features of the Z x Z tiles (EncodeTwoResolutions, same views).
  at::Tensor EncodeHd(const at::Tensor& high, const at::Tensor& low) const;

  // composite (docs/modes.md): the chunk span of a prompt, its image rows marked as running no
  // attention.
  ChunkSpan PromptSpan(const std::vector<int32_t>& tokens, int slot, int64_t row_begin) const;

  // Prefills the prompts in one packed forward pass; returns the fp32 logits of each prompt's last
  // position [B, V]. last_row: optional hook, its chunk c being prompts[c].
  at::Tensor PrefillLogits(const std::vector<PromptChunk>& prompts, KvCache& cache,
                           LastRowAttention* last_row = nullptr,
                           CrossAttentionHook* cross = nullptr) const;
  // One decode step: tokens[b] is appended to slots[b]. Returns fp32 logits [B, V].
  at::Tensor DecodeLogits(const std::vector<int32_t>& tokens, const std::vector<int>& slots,
                          KvCache& cache, LastRowAttention* last_row = nullptr,
                          CrossAttentionHook* cross = nullptr) const;

  // token ids [T] (on the model's device) -> embeddings [T, D]; the rows whose id is the image
  // token take `features` [image_tokens, D] in order (features may be undefined for text-only
  // prompts).
  at::Tensor EmbedPrompt(const at::Tensor& token_ids, const at::Tensor& features) const;

  // Logits [T, V] (fp32) of every prompt position, computed in `slot` of `cache` from position 0.
  // For parity tests and tools; the engine calls the decoder directly.
  at::Tensor PromptLogits(const at::Tensor& token_ids, const at::Tensor& pixels, KvCache& cache,
                          int slot) const;

 private:
  LlavaConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::Device(at::kCPU);
  std::unique_ptr<ClipVisionTower> vision_;
  std::unique_ptr<MultiModalProjector> projector_;
  std::unique_ptr<LlamaDecoder> decoder_;
  std::unique_ptr<HighResProjections> highres_;
  std::unique_ptr<CrossAttentionWeights> cross_;
};

}  // namespace flexvqa
