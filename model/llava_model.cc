#include "model/llava_model.h"

#include <ATen/ATen.h>

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
  FLEXVQA_ASSIGN_OR_RETURN(model->encoder_, ImageEncoder::Load(*weights, config, dtype, device));
  FLEXVQA_ASSIGN_OR_RETURN(model->decoder_,
                           LlamaDecoder::Load(*weights, config.text, dtype, device, max_positions));
  FLEXVQA_ASSIGN_OR_RETURN(model->mode_, CreateMode(config, *weights, dtype, device));
  return model;
}

at::Tensor LlavaModel::PrefillLogits(const std::vector<PromptChunk>& prompts, KvCache& cache,
                                     LayerHooks* hooks, at::Tensor* all_logits) const {
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
    chunks.push_back({p.slot, 0, row, length});
    row += length;
    last_rows.push_back(row - 1);
  }
  const DecoderBatch batch = PlanChunks(chunks, cache, device_);
  const at::Tensor hidden = decoder_->Forward(at::cat(rows, 0), batch, cache, hooks);  // [N, D]
  if (all_logits != nullptr) *all_logits = decoder_->Logits(hidden);
  const at::Tensor last = hidden.index_select(
      0, at::tensor(last_rows, at::TensorOptions().dtype(at::kLong)).to(device_));
  return decoder_->Logits(last);
}

at::Tensor LlavaModel::DecodeLogits(const std::vector<int32_t>& tokens,
                                    const std::vector<int>& slots, KvCache& cache,
                                    LayerHooks* hooks) const {
  const DecoderBatch batch = PlanDecode(tokens, slots, config_.text.vocab_size, cache);
  const at::Tensor hidden = decoder_->Forward(decoder_->EmbedInVocabulary(batch.ids), batch, cache,
                                              hooks);  // [bucket, D]
  return decoder_->Logits(hidden);  // Every row of the bucket: one shape per bucket.
}

at::Tensor LlavaModel::EmbedPrompt(const at::Tensor& token_ids, const at::Tensor& features) const {
  at::Tensor embeds = decoder_->Embed(token_ids);  // [T, D]
  if (features.defined()) {
    const at::Tensor rows = (token_ids == config_.image_token_id).nonzero().view({-1});
    embeds.index_copy_(0, rows, features.to(embeds.scalar_type()));
  }
  return embeds;
}

}  // namespace flexvqa
