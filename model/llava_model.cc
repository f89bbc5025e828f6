#include "model/llava_model.h"

#include <ATen/ATen.h>

#include "model/weights.h"

namespace flexvqa {

StatusOr<std::unique_ptr<LlavaModel>> LlavaModel::Load(const LlavaConfig& config,
                                                       at::ScalarType dtype, at::Device device,
                                                       int64_t max_positions) {
  auto model = std::unique_ptr<LlavaModel>(new LlavaModel());
  model->config_ = config;
  model->dtype_ = dtype;
  model->device_ = device;
  FLEXVQA_ASSIGN_OR_RETURN(auto weights, WeightLoader::Open(config));
  FLEXVQA_ASSIGN_OR_RETURN(model->vision_, ClipVisionTower::Load(*weights, config, dtype, device));
  FLEXVQA_ASSIGN_OR_RETURN(model->projector_,
                           MultiModalProjector::Load(*weights, config, dtype, device));
  FLEXVQA_ASSIGN_OR_RETURN(model->decoder_,
                           LlamaDecoder::Load(*weights, config.text, dtype, device, max_positions));
  return model;
}

at::Tensor LlavaModel::EncodeImages(const at::Tensor& pixels) const {
  return projector_->Forward(vision_->Forward(pixels.to(device_)));
}

at::Tensor LlavaModel::EmbedPrompt(const at::Tensor& token_ids, const at::Tensor& features) const {
  at::Tensor embeds = decoder_->Embed(token_ids);  // [T, D]
  if (features.defined()) {
    const at::Tensor rows = (token_ids == config_.image_token_id).nonzero().view({-1});
    embeds.index_copy_(0, rows, features.to(embeds.scalar_type()));
  }
  return embeds;
}

at::Tensor LlavaModel::PromptLogits(const at::Tensor& token_ids, const at::Tensor& pixels,
                                    KvCache& cache, int slot) const {
  const at::Tensor ids = token_ids.to(device_);
  const at::Tensor features = pixels.defined() ? EncodeImages(pixels)[0] : at::Tensor();
  const at::Tensor hidden =
      decoder_->Forward(EmbedPrompt(ids, features), {{slot, 0, 0, ids.size(0)}}, cache);
  return decoder_->Logits(hidden);
}

}  // namespace flexvqa
