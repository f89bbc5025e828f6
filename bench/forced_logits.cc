#include "bench/forced_logits.h"

#include <ATen/ATen.h>

#include "model/llava_model.h"
#include "model/nn/kv_cache.h"
#include "model/nn/torch_compat.h"
#include "model/weights/model_config.h"

namespace flexvqa {

ForcedLogitsRunner::~ForcedLogitsRunner() = default;

StatusOr<std::unique_ptr<ForcedLogitsRunner>> ForcedLogitsRunner::Open(const std::string& model_dir,
                                                                       const std::string& device,
                                                                       const std::string& dtype,
                                                                       int64_t max_positions) {
  FLEXVQA_ASSIGN_OR_RETURN(at::Device dev, ParseDevice(device));
  FLEXVQA_ASSIGN_OR_RETURN(at::ScalarType type, ParseDtype(dtype, dev));
  FLEXVQA_ASSIGN_OR_RETURN(LlavaConfig config, LoadLlavaConfig(model_dir));
  auto runner = std::unique_ptr<ForcedLogitsRunner>(new ForcedLogitsRunner());
  try {
    FLEXVQA_ASSIGN_OR_RETURN(runner->model_, LlavaModel::Load(config, type, dev, max_positions));
    const TextConfig& t = config.text;
    KvCacheShape shape{t.num_hidden_layers, /*num_slots=*/1, static_cast<int>(max_positions),
                       t.num_key_value_heads, t.head_dim()};
    FLEXVQA_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape, type, dev));
    runner->cache_ = std::make_unique<KvCache>(std::move(cache));
  } catch (const std::exception& e) {
    return StatusFromTorchError(e, "loading " + model_dir);
  }
  return runner;
}

std::string ForcedLogitsRunner::dtype_name() const { return DtypeName(model_->dtype()); }

StatusOr<ForcedLogitsRunner::Result> ForcedLogitsRunner::Run(const std::vector<int64_t>& ids,
                                                             const at::Tensor& pixels,
                                                             const std::vector<int64_t>& forced) {
  if (forced.empty()) return InvalidArgumentError("no forced tokens");
  if (static_cast<int64_t>(ids.size() + forced.size()) > cache_->shape().max_context) {
    return InvalidArgumentError("prompt + forced tokens exceed the cache's positions");
  }
  const int slot = cache_->Allocate();
  Result r;
  try {
    // One prompt through the model's own packed prefill, without mode hooks: the plain decoder
    // (full-mode checkpoints, which is what the parity runs feed it). all_logits: every row.
    const std::vector<int32_t> tokens(ids.begin(), ids.end());
    PromptChunk chunk;
    chunk.tokens = &tokens;
    chunk.slot = slot;
    if (pixels.defined()) chunk.image_features = model_->EncodeImages(pixels)[0];
    at::Tensor all;
    model_->PrefillLogits({chunk}, *cache_, /*hooks=*/nullptr, &all);
    r.prompt_logits = all.to(at::kCPU).to(at::kFloat);
    std::vector<at::Tensor> steps = {r.prompt_logits[r.prompt_logits.size(0) - 1]};
    for (size_t i = 0; i + 1 < forced.size(); ++i) {
      const at::Tensor logits =
          model_->DecodeLogits({static_cast<int32_t>(forced[i])}, {slot}, *cache_);  // [1, V]
      steps.push_back(logits[0].to(at::kCPU));
    }
    r.step_logits = at::stack(steps).to(at::kFloat);
  } catch (const std::exception& e) {
    cache_->Free(slot);
    return StatusFromTorchError(e, "forced run");
  }
  cache_->Free(slot);
  return r;
}

}  // namespace flexvqa
