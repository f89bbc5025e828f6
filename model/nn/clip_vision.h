// CLIP ViT vision tower as LLaVA uses it (HF CLIPVisionModel): patch embedding (conv, no bias) +
// class token + learned positions, pre-LayerNorm, pre-LN encoder blocks with quick_gelu MLPs. LLaVA
// takes the hidden state `vision_feature_layer` (-2: the output of the second-to-last block) and,
// for the "default"/"patch" strategy, drops the CLS token; blocks past that layer are never loaded
// or run, and post_layernorm is unused. ImageEncoder runs the tower and the mlp2x_gelu projector
// together. Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>
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

// The tower and the projector together: images to the LLM-wide features the attention modes place
// (model/modes/mode.h).
class ImageEncoder {
 public:
  static StatusOr<std::unique_ptr<ImageEncoder>> Load(const WeightLoader& weights,
                                                      const LlavaConfig& config,
                                                      at::ScalarType dtype, at::Device device);

  // pixels [N, 3, S, S] -> projected image features [N, image_tokens, D].
  at::Tensor Encode(const at::Tensor& pixels) const;

  // One vision pass over both views (FlexAttention's llava_arch.py:205-225, reused by hd and
  // xattn). high [N, 3, Z S, Z S] is cut into Z x Z tiles of S, row-major; low [N, 3, S, S].
  // Returns {LR features [N, s^2, D], raw HR features [N, (Z s)^2, D] stitched row-major over the
  // (Z s) x (Z s) grid}.
  std::pair<at::Tensor, at::Tensor> EncodeTwoResolutions(const at::Tensor& high,
                                                         const at::Tensor& low) const;

 private:
  std::unique_ptr<ClipVisionTower> tower_;
  std::unique_ptr<MultiModalProjector> projector_;
  at::Device device_ = at::Device(at::kCPU);
};

}  // namespace flexvqa
