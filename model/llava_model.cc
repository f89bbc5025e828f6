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
  // Every prompt packed row after row: one upload of [ids (N) | last rows (B) | image rows (M)]
  // (image rows found on the host: no nonzero sync), one embedding, one copy of all features.
  std::vector<ChunkSpan> chunks;
  std::vector<int64_t> ids, last_rows, image_rows;
  std::vector<at::Tensor> features;
  for (const PromptChunk& p : prompts) {
    const int64_t begin = static_cast<int64_t>(ids.size());
    const int64_t length = static_cast<int64_t>(p.tokens->size());
    for (int64_t i = 0; i < length; ++i) {
      const int32_t t = (*p.tokens)[i];
      ids.push_back(t);
      if (p.image_features.defined() && t == config_.image_token_id)
        image_rows.push_back(begin + i);
    }
    if (p.image_features.defined()) features.push_back(p.image_features);
    chunks.push_back({p.slot, 0, begin, length});
    last_rows.push_back(begin + length - 1);
  }
  const int64_t n = static_cast<int64_t>(ids.size()), b = static_cast<int64_t>(prompts.size());
  std::vector<int64_t> host = ids;
  host.insert(host.end(), last_rows.begin(), last_rows.end());
  host.insert(host.end(), image_rows.begin(), image_rows.end());
  const at::Tensor all = at::tensor(host, at::TensorOptions().dtype(at::kLong)).to(device_);
  at::Tensor embeds = decoder_->Embed(all.narrow(0, 0, n));  // [N, D]
  if (!image_rows.empty()) {
    embeds.index_copy_(0, all.narrow(0, n + b, static_cast<int64_t>(image_rows.size())),
                       at::cat(features, 0).to(embeds.scalar_type()));
  }
  const DecoderBatch batch = PlanChunks(chunks, cache, device_);
  const at::Tensor hidden = decoder_->Forward(embeds, batch, cache, hooks);  // [N, D]
  if (hooks != nullptr) hooks->AfterStep(hooks->StepOutputs());
  if (all_logits != nullptr) *all_logits = decoder_->Logits(hidden);
  return decoder_->Logits(hidden.index_select(0, all.narrow(0, n, b)));  // [B, V]
}

at::Tensor LlavaModel::DecodeLogits(const std::vector<int32_t>& tokens,
                                    const std::vector<int>& slots, KvCache& cache,
                                    LayerHooks* hooks) const {
  const DecoderBatch batch = PlanDecodeStep(tokens, slots, cache);
  const at::Tensor logits = DecodeStepLogits(batch, cache, hooks);
  if (hooks != nullptr) hooks->AfterStep(hooks->StepOutputs());
  LlamaDecoder::CommitLengths(batch, cache);
  return logits;
}

DecoderBatch LlavaModel::PlanDecodeStep(const std::vector<int32_t>& tokens,
                                        const std::vector<int>& slots, KvCache& cache) const {
  return PlanDecode(tokens, slots, config_.text.vocab_size, cache);
}

at::Tensor LlavaModel::DecodeStepLogits(const DecoderBatch& batch, KvCache& cache,
                                        LayerHooks* hooks) const {
  const at::Tensor hidden = decoder_->ForwardOnDevice(decoder_->EmbedInVocabulary(batch.ids), batch,
                                                      cache, hooks);  // [bucket, D]
  return decoder_->Logits(hidden);  // Every row of the bucket: one shape per bucket.
}

}  // namespace flexvqa
