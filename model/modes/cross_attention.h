// xattn mode (docs/modes.md): CogAgent-style cross-attention from the decoder's hidden states (text
// and LR image rows) to an image's high-resolution features, as an extra residual sub-block after
// self-attention in every `xattn_every`-th layer. CrossAttentionWeights holds
// model.layers.{i}.cross_attn.* of those layers; CrossKeyValues is one request's HR keys/values
// (computed once at prefill, kept until Release, never per step); CrossAttention is the per-Forward
// hook (model/nn/llama.h). Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "model/nn/llama.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

// One request's cross-attention memory: per decoder layer (undefined where the layer has none),
// keys and values [Hc, M, Dc] of its M HR tokens.
struct CrossKeyValues {
  std::vector<at::Tensor> keys, values;
};

class CrossAttentionWeights {
 public:
  // Per cross-attending layer i: cross_attn_norm.weight [D], cross_attn.{q,o}_proj.weight [C, D] /
  // [D, C], cross_attn.{k,v}_proj.weight [C, D] (they read the projector's D-wide HR features).
  static StatusOr<std::unique_ptr<CrossAttentionWeights>> Load(const WeightLoader& weights,
                                                               const LlavaConfig& config,
                                                               at::ScalarType dtype,
                                                               at::Device device);

  // features [M, D]: the raw HR features (projector outputs of the tiles, stitched row-major).
  CrossKeyValues KeysAndValues(const at::Tensor& features) const;

  // The sub-block's residual for packed rows x [N, D] of `chunks`; memory[c] is chunk c's (null: no
  // image, the residual is zero). Returns [N, D], or an undefined tensor when `layer` has no
  // cross-attention.
  at::Tensor Residual(int layer, const at::Tensor& x, const std::vector<ChunkSpan>& chunks,
                      const std::vector<const CrossKeyValues*>& memory) const;

 private:
  struct Layer {
    at::Tensor norm;     // [D]
    at::Tensor q_proj;   // [C, D]
    at::Tensor kv_proj;  // [2 C, D]: k and v fused.
    at::Tensor o_proj;   // [D, C]
  };
  std::vector<Layer> layers_;  // Per decoder layer; empty tensors where none.
  int64_t heads_ = 0, width_ = 0;
  double eps_ = 1e-6;
};

// The hook for one Forward over chunks (model/nn/llama.h CrossAttentionHook).
class CrossAttention : public CrossAttentionHook {
 public:
  CrossAttention(const CrossAttentionWeights& weights, std::vector<const CrossKeyValues*> memory)
      : weights_(weights), memory_(std::move(memory)) {}
  at::Tensor Residual(int layer, const at::Tensor& x,
                      const std::vector<ChunkSpan>& chunks) override {
    return weights_.Residual(layer, x, chunks, memory_);
  }

 private:
  const CrossAttentionWeights& weights_;
  std::vector<const CrossKeyValues*> memory_;
};

}  // namespace flexvqa
