#include "model/llava_model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "model/weights/weights.h"

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
  if (config.flex.enabled) {
    FLEXVQA_ASSIGN_OR_RETURN(model->highres_,
                             HighResProjections::Load(*weights, config, dtype, device));
  }
  if (config.mode.name == "xattn") {
    FLEXVQA_ASSIGN_OR_RETURN(model->cross_,
                             CrossAttentionWeights::Load(*weights, config, dtype, device));
  }
  return model;
}

at::Tensor LlavaModel::EncodeImages(const at::Tensor& pixels) const {
  return projector_->Forward(vision_->Forward(pixels.to(device_)));
}

std::pair<at::Tensor, at::Tensor> LlavaModel::EncodeTwoResolutions(const at::Tensor& high,
                                                                   const at::Tensor& low) const {
  const int64_t n = high.size(0);
  const int64_t s = low.size(-1);
  const int64_t z = high.size(-1) / s;
  // [N, 3, Z S, Z S] -> [N, 3, Z, S, Z, S] -> [N, Z(row), Z(col), 3, S, S] -> [N Z^2, 3, S, S]:
  // tiles in row-major order (mm_utils.py:250-334 crop_images_to_subimages).
  const at::Tensor tiles =
      high.view({n, 3, z, s, z, s}).permute({0, 2, 4, 1, 3, 5}).reshape({n * z * z, 3, s, s});
  // One vision batch for the tiles and the LR images alike.
  const at::Tensor features = EncodeImages(at::cat({tiles, low.to(tiles.scalar_type())}, 0));
  const int64_t tokens = features.size(1);
  const int64_t side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(tokens))));
  const int64_t d = features.size(2);
  // [N Z^2, s^2, D] -> [N, Z(row), Z(col), s(row), s(col), D] -> [N, Z, s, Z, s, D]: the tiles'
  // grids stitched into one (Z s) x (Z s) grid, flattened row-major (combine_subimages_to_images).
  const at::Tensor hr = features.narrow(0, 0, n * z * z)
                            .view({n, z, z, side, side, d})
                            .permute({0, 1, 3, 2, 4, 5})
                            .reshape({n, z * side * z * side, d});
  return {features.narrow(0, n * z * z, n), hr};
}

at::Tensor LlavaModel::EncodeHd(const at::Tensor& high, const at::Tensor& low) const {
  const auto [lr, hr] = EncodeTwoResolutions(high, low);  // [N, s^2, D], [N, (Z s)^2, D]
  return at::cat({lr, hr}, 1);
}

ChunkSpan LlavaModel::PromptSpan(const std::vector<int32_t>& tokens, int slot,
                                 int64_t row_begin) const {
  ChunkSpan span{slot, 0, row_begin, static_cast<int64_t>(tokens.size())};
  if (config_.mode.name == "composite") {
    // The image's rows are contiguous (one placeholder expanded in place).
    const auto first = std::find(tokens.begin(), tokens.end(), config_.image_token_id);
    span.no_attention_begin = first - tokens.begin();
    span.no_attention_length = std::count(tokens.begin(), tokens.end(), config_.image_token_id);
  }
  return span;
}

at::Tensor LlavaModel::PrefillLogits(const std::vector<PromptChunk>& prompts, KvCache& cache,
                                     LastRowAttention* last_row, CrossAttentionHook* cross) const {
  // Embeddings of every prompt, packed row after row, image rows replaced by the features.
  std::vector<at::Tensor> rows;
  std::vector<ChunkSpan> chunks;
  std::vector<int64_t> last_rows;
  int64_t row = 0;
  for (const PromptChunk& p : prompts) {
    const at::Tensor ids = at::tensor(std::vector<int64_t>(p.tokens->begin(), p.tokens->end()),
                                      at::TensorOptions().dtype(at::kLong))
                               .to(device_);
    rows.push_back(EmbedPrompt(ids, p.image_features));
    const int64_t length = static_cast<int64_t>(p.tokens->size());
    chunks.push_back(PromptSpan(*p.tokens, p.slot, row));
    row += length;
    last_rows.push_back(row - 1);
  }
  const at::Tensor hidden =
      decoder_->Forward(at::cat(rows, 0), chunks, cache, last_row, cross);  // [N, D]
  const at::Tensor last = hidden.index_select(
      0, at::tensor(last_rows, at::TensorOptions().dtype(at::kLong)).to(device_));
  return decoder_->Logits(last);
}

at::Tensor LlavaModel::DecodeLogits(const std::vector<int32_t>& tokens,
                                    const std::vector<int>& slots, KvCache& cache,
                                    LastRowAttention* last_row, CrossAttentionHook* cross) const {
  std::vector<ChunkSpan> chunks;
  for (size_t i = 0; i < slots.size(); ++i) {
    chunks.push_back({slots[i], cache.length(slots[i]), static_cast<int64_t>(i), 1});
  }
  const at::Tensor ids = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()),
                                    at::TensorOptions().dtype(at::kLong))
                             .to(device_);
  const at::Tensor hidden =
      decoder_->Forward(decoder_->Embed(ids), chunks, cache, last_row, cross);  // [B, D]
  return decoder_->Logits(hidden);
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
  const at::Tensor host = token_ids.to(at::kCPU).to(at::kLong).contiguous();
  const std::vector<int32_t> tokens(host.data_ptr<int64_t>(),
                                    host.data_ptr<int64_t>() + host.numel());
  const at::Tensor hidden =
      decoder_->Forward(EmbedPrompt(ids, features), {PromptSpan(tokens, slot, 0)}, cache);
  return decoder_->Logits(hidden);
}

}  // namespace flexvqa
