// Checkpoint tensors by section and module-relative name, whatever the public layout stores them
// as. One WeightLoader per model load; it memory-maps every safetensors file it needs
// (model.safetensors or the shards of model.safetensors.index.json, for the model and, in the
// original-LLaVA layout, the CLIP directory). Get() checks the shape and returns a copy in the
// requested dtype on the requested device; a missing or wrongly shaped tensor is a NOT_FOUND /
// INVALID_ARGUMENT status naming the tensor, the file and both shapes. Not thread-safe; used at
// load time only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "model/status.h"
#include "model/weights/model_config.h"

namespace flexvqa {

class SafetensorsFile;

// Names within a section are those of the Hugging Face modules, without the section's prefix:
//   kText:      embed_tokens.weight, layers.{i}.self_attn.{q,k,v,o}_proj.weight,
//               layers.{i}.mlp.{gate,up,down}_proj.weight,
//               layers.{i}.{input,post_attention}_layernorm.weight, norm.weight
//   kLmHead:    weight
//   kVision:    embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight},
//               pre_layrnorm.{weight,bias},
//               encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias},
//               encoder.layers.{i}.layer_norm{1,2}.{weight,bias},
//               encoder.layers.{i}.mlp.fc{1,2}.{weight,bias}, post_layernorm.{weight,bias}
//   kProjector: linear_1.{weight,bias}, linear_2.{weight,bias}
// Stored prefixes tried, in order (first hit wins):
//   kHfLlava:       kText: language_model.model., model.language_model.;  kLmHead:
//   language_model.lm_head.,
//                   lm_head.;  kVision: vision_tower.vision_model., vision_tower.,
//                   model.vision_tower.
//                   (+vision_model.);  kProjector: multi_modal_projector.,
//                   model.multi_modal_projector.
//   kOriginalLlava: kText: model.;  kLmHead: lm_head.;  kVision (CLIP dir): vision_model.;
//                   kProjector: model.mm_projector. with linear_1 -> 0 and linear_2 -> 2.
enum class WeightSection { kText, kLmHead, kVision, kProjector };

class WeightLoader {
 public:
  static StatusOr<std::unique_ptr<WeightLoader>> Open(const LlavaConfig& config);
  ~WeightLoader();

  bool Has(WeightSection section, const std::string& name) const;
  // Returns the tensor as [shape] in `dtype` on `device` (a fresh, contiguous copy).
  StatusOr<at::Tensor> Get(WeightSection section, const std::string& name,
                           const std::vector<int64_t>& shape, at::ScalarType dtype,
                           at::Device device) const;
  // Every stored name the loader resolved (for diagnostics and tests).
  std::vector<std::string> StoredNames() const;

 private:
  WeightLoader();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flexvqa
