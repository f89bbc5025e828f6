// CLIP ViT vision tower as LLaVA uses it (HF CLIPVisionModel): patch embedding (conv, no bias) +
// class token + learned positions, pre-LayerNorm, pre-LN encoder blocks with quick_gelu MLPs. LLaVA
// takes the hidden state `vision_feature_layer` (-2: the output of the second-to-last block) and,
// for the "default"/"patch" strategy, drops the CLS token; blocks past that layer are never loaded
// or run, and post_layernorm is unused. Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

class ClipVisionTower {
 public:
  static StatusOr<std::unique_ptr<ClipVisionTower>> Load(const WeightLoader& weights,
                                                         const LlavaConfig& config,
                                                         at::ScalarType dtype, at::Device device);

  // pixels [B, 3, S, S] (normalised, any float dtype) -> features [B, tokens, Dv] in the model
  // dtype, tokens = (S/patch)^2 (+1 when the CLS token is kept).
  at::Tensor Forward(const at::Tensor& pixels) const;

  int num_blocks_run() const { return static_cast<int>(layers_.size()); }

 private:
  struct Block {
    at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
    at::Tensor qkv_w, qkv_b;  // q, k, v fused: [3 Dv, Dv], [3 Dv]
    at::Tensor out_w, out_b;
    at::Tensor fc1_w, fc1_b, fc2_w, fc2_b;
  };

  VisionConfig config_;
  bool keep_cls_ = false;
  at::ScalarType dtype_ = at::kFloat;
  at::Tensor class_embedding_;     // [Dv]
  at::Tensor patch_embedding_;     // [Dv, 3, p, p]
  at::Tensor position_embedding_;  // [1 + (S/p)^2, Dv]
  at::Tensor pre_ln_w_, pre_ln_b_;
  std::vector<Block> layers_;
};

// LLaVA's mlp2x_gelu projector (HF LlavaMultiModalProjector): Linear(Dv, D) -> GELU -> Linear(D,
// D).
class MultiModalProjector {
 public:
  static StatusOr<std::unique_ptr<MultiModalProjector>> Load(const WeightLoader& weights,
                                                             const LlavaConfig& config,
                                                             at::ScalarType dtype,
                                                             at::Device device);
  at::Tensor Forward(const at::Tensor& features) const;  // [.., Dv] -> [.., D]

 private:
  at::Tensor w1_, b1_, w2_, b2_;
};

}  // namespace flexvqa
