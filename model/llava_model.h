// The LLaVA-1.5 network (CLIP tower + projector + LLaMA decoder) loaded from a checkpoint, with the two
// steps the engine and the parity tests share: encoding images to projected features, and building a
// prompt's input embeddings with the image placeholder rows replaced by those features
// (HF LlavaForConditionalGeneration's merge). Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "model/clip_vision.h"
#include "model/llama.h"
#include "model/model_config.h"
#include "model/status.h"

namespace flexvqa {

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

  // token ids [T] (on the model's device) -> embeddings [T, D]; the rows whose id is the image token
  // take `features` [image_tokens, D] in order (features may be undefined for text-only prompts).
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
};

}  // namespace flexvqa
