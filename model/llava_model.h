// The LLaVA-1.5 network loaded from a checkpoint: CLIP tower + projector (ImageEncoder), the LLaMA
// decoder, and the attention mode (model/modes/mode.h) with the weights it adds. Two steps on top:
// building a prompt's input embeddings with the image placeholder rows replaced by features (HF
// LlavaForConditionalGeneration's merge), and the batched prefill / decode that turn packed
// prompts or tokens into next-token logits, with the mode's decoder hooks. No per-mode code here.
// Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "model/modes/mode.h"
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
  const ImageEncoder& encoder() const { return *encoder_; }
  const Mode& mode() const { return *mode_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // pixels [N, 3, S, S] -> projected image features [N, image_tokens, D].
  at::Tensor EncodeImages(const at::Tensor& pixels) const { return encoder_->Encode(pixels); }

  // Prefills the prompts in one packed forward pass; returns the fp32 logits of each prompt's last
  // position [B, V]. hooks: the mode's for this batch (Mode::Hooks; null: plain decoder), their
  // AfterStep called before it returns (DecodeLogits too).
  // all_logits (optional, for the engine's logits sink): receives the logits of every packed row
  // [N, V], computed apart so that the returned rows are the same numbers with or without it.
  at::Tensor PrefillLogits(const std::vector<PromptChunk>& prompts, KvCache& cache,
                           LayerHooks* hooks = nullptr, at::Tensor* all_logits = nullptr) const;
  // One decode step: tokens[b] is appended to slots[b], as one batch padded to its bucket
  // (PlanDecode). Returns fp32 logits [bucket, V]: rows [0, B) are the tokens', the rest padding.
  at::Tensor DecodeLogits(const std::vector<int32_t>& tokens, const std::vector<int>& slots,
                          KvCache& cache, LayerHooks* hooks = nullptr) const;
  // DecodeLogits in its three parts, for a step captured as a CUDA graph (model/nn/cuda/
  // step_graph.h): the host plan and upload into the bucket's fixed buffers (PlanDecode), the
  // device work from those buffers to the logits (no host read, no host state changed), and the
  // host bookkeeping after it (the hooks' StepOutputs / AfterStep, which the caller runs, and
  // LlamaDecoder::CommitLengths).
  DecoderBatch PlanDecodeStep(const std::vector<int32_t>& tokens, const std::vector<int>& slots,
                              KvCache& cache) const;
  at::Tensor DecodeStepLogits(const DecoderBatch& batch, KvCache& cache, LayerHooks* hooks) const;

 private:
  LlavaConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::Device(at::kCPU);
  std::unique_ptr<ImageEncoder> encoder_;
  std::unique_ptr<LlamaDecoder> decoder_;
  std::unique_ptr<Mode> mode_;
};

}  // namespace flexvqa
