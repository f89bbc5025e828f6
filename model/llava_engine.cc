// LLaVA-1.5 behind the Engine interface of model/engine.h, in the attention mode its checkpoint
// asks for: "full" (LLaVA-1.5 at 336 px), "flex" (FlexAttention at 1008 px,
// model/modes/flex_attention.h), "hd" (HR tile tokens in the sequence), "composite" (image tokens
// skip attention) or "xattn" (cross-attention to HR features, model/modes/cross_attention.h);
// docs/modes.md. CLIP tower + mlp2x_gelu projector + LLaMA decoder, a slot-per-sequence KV cache,
// per-sequence samplers, streaming detokenisation and stop strings. Prefill packs every new
// sequence's prompt into one forward pass; decode packs one row per running sequence
// (model/nn/llama.h). flex and xattn keep each request's high-resolution state (flex: features, HR
// keys/values, selection trace; xattn: cross-attention keys/values) beside its slot, freed at
// Release.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <unordered_map>

#include "model/engine.h"
#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/llava_model.h"
#include "model/modes/cross_attention.h"
#include "model/modes/flex_attention.h"
#include "model/nn/flop_counter.h"
#include "model/nn/kv_cache.h"
#include "model/nn/llama.h"
#include "model/nn/sampler.h"
#include "model/nn/torch_compat.h"
#include "model/request_validation.h"
#include "model/text/detokenizer.h"
#include "model/text/prompt.h"
#include "model/text/tokenizer.h"
#include "model/weights/model_config.h"

namespace flexvqa {
namespace {

// What Prepare produces: token ids with the image placeholder expanded, and the image's pixels.
class LlavaPrepared : public PreparedRequest {
 public:
  std::vector<int32_t> tokens;
  std::vector<float> pixels;  // [3, S, S] normalised; empty without an image.
  // flex, hd, xattn: the normalised high-resolution image [3, Z S, Z S] (`pixels` is its
  // downsample); flex: the original image size (for the selection's padding bands) and the
  // selection threshold.
  std::vector<float> highres_pixels;
  int image_width = 0;
  int image_height = 0;
  int threshold = 0;
};

struct Sequence {
  std::shared_ptr<const LlavaPrepared> request;
  int slot = -1;
  bool prefilled = false;
  bool finished = false;
  int generated = 0;
  int32_t last_token = -1;
  std::unique_ptr<SequenceSampler> sampler;
  std::unique_ptr<StreamingDetokenizer> detokenizer;
  std::unique_ptr<StopStringMatcher> stop;
  std::unique_ptr<HighResSequence> highres;  // flex with an image: created at prefill.
  std::unique_ptr<CrossKeyValues> cross;     // xattn with an image: HR K/V, computed at prefill.
  struct {
    int64_t rescored_keys = 0;
    int64_t hr_rows = 0;
  } counted;  // flex: the counters' values already turned into FLOPs.
  SequenceReport report;
};

double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

class LlavaEngine : public Engine {
 public:
  static StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);

  const ModelInfo& Info() const override { return info_; }
  StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(
      const GenerationRequest& request) const override;
  int FreeSlots() const override { return cache_->free_slots(); }
  StatusOr<SequenceId> Admit(std::shared_ptr<const PreparedRequest> request) override;
  void Prefill(const std::vector<SequenceId>& sequences, std::vector<TokenEvent>* events) override;
  void Decode(const std::vector<SequenceId>& sequences, std::vector<TokenEvent>* events) override;
  void Release(SequenceId sequence) override;
  SequenceReport Report(SequenceId sequence) const override;
  EngineMemory Memory() const override;
  SelectionTrace Selections(SequenceId sequence) const override;

 private:
  // Chooses each sequence's next token from fp32 logits [B, V] (rows in `batch` order) and emits
  // it.
  void SampleAndEmit(const at::Tensor& logits, const std::vector<SequenceId>& batch,
                     std::vector<TokenEvent>* events);
  TokenEvent Emit(SequenceId id, Sequence& seq, int32_t token);
  void Fail(const std::vector<SequenceId>& batch, const Status& status,
            std::vector<TokenEvent>* events);
  // flex: the hook for one forward pass over `batch` (null in other modes).
  std::unique_ptr<FlexAttention> FlexHook(const std::vector<SequenceId>& batch);
  // xattn: the cross-attention hook for one forward pass over `batch` (null in other modes).
  std::unique_ptr<CrossAttention> CrossHook(const std::vector<SequenceId>& batch);
  // After a forward pass over `batch`: selected HR tokens and the FLOPs the pass ran (chunk starts
  // and lengths as run; flex's extra last-row work from the sequences' counters).
  void UpdateReports(const std::vector<SequenceId>& batch, const std::vector<int64_t>& starts,
                     const std::vector<int64_t>& lengths, FlopCount::Phase phase);

  // xattn: HR tokens per image ((Z s)^2).
  int64_t HighResTokens() const {
    const int64_t side = static_cast<int64_t>(config_.mode.zoom()) *
                         (config_.vision.image_size / config_.vision.patch_size);
    return side * side;
  }

  LlavaConfig config_;
  ModelInfo info_;
  ChatTemplate chat_template_ = ChatTemplate::kVicunaV1;  // Parsed once in Create.
  at::Device device_ = at::Device(at::kCPU);
  at::ScalarType dtype_ = at::kFloat;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<LlavaModel> model_;
  std::unique_ptr<KvCache> cache_;
  PreprocessOptions preprocess_;
  std::unordered_map<SequenceId, Sequence> sequences_;
  SequenceId next_id_ = 1;
};

StatusOr<std::unique_ptr<Engine>> LlavaEngine::Create(const EngineOptions& options) {
  auto engine = std::unique_ptr<LlavaEngine>(new LlavaEngine());
  FLEXVQA_ASSIGN_OR_RETURN(engine->config_, LoadLlavaConfig(options.model_dir, options.vision_dir));
  const LlavaConfig& config = engine->config_;
  FLEXVQA_ASSIGN_OR_RETURN(engine->device_, ParseDevice(options.device));
  FLEXVQA_ASSIGN_OR_RETURN(engine->dtype_, ParseDtype(options.dtype, engine->device_));
  if (options.max_sequences < 1) return InvalidArgumentError("max_sequences must be >= 1");
  const int context = options.max_context > 0
                          ? std::min(options.max_context, config.text.max_position_embeddings)
                          : config.text.max_position_embeddings;
  FLEXVQA_ASSIGN_OR_RETURN(engine->tokenizer_,
                           Tokenizer::Load(options.model_dir + "/tokenizer.model"));
  try {
    FLEXVQA_ASSIGN_OR_RETURN(engine->model_,
                             LlavaModel::Load(config, engine->dtype_, engine->device_, context));
    KvCacheShape shape;
    shape.num_layers = config.text.num_hidden_layers;
    shape.num_slots = options.max_sequences;
    shape.max_context = context;
    shape.num_kv_heads = config.text.num_key_value_heads;
    shape.head_dim = config.text.head_dim();
    FLEXVQA_ASSIGN_OR_RETURN(KvCache cache,
                             KvCache::Create(shape, engine->dtype_, engine->device_));
    engine->cache_ = std::make_unique<KvCache>(std::move(cache));
  } catch (const std::exception& e) {
    return StatusFromTorchError(e, "loading " + options.model_dir);
  }

  PreprocessOptions& pre = engine->preprocess_;
  pre.crop_size = config.crop_size > 0 ? config.crop_size : config.vision.image_size;
  pre.resize_shortest_edge =
      config.resize_shortest_edge > 0 ? config.resize_shortest_edge : pre.crop_size;
  pre.mean = config.image_mean;
  pre.std = config.image_std;
  pre.pad_to_square = config.image_aspect_ratio == "pad";
  if (config.flex.enabled) {
    // The CLIP processor's pipeline at the high-resolution side (mm_utils.py:166-182); the LR view
    // is derived from it (PreprocessFlexAttention).
    pre.crop_size = config.flex.highres_size;
    pre.resize_shortest_edge = config.flex.highres_size;
  } else if (config.mode.zoom() > 0) {
    // hd and xattn reuse flex's two views at Z x the tower's size (docs/modes.md).
    pre.crop_size = config.mode.zoom() * config.vision.image_size;
    pre.resize_shortest_edge = pre.crop_size;
  } else if (pre.crop_size != config.vision.image_size) {
    return InvalidArgumentError("crop size " + std::to_string(pre.crop_size) +
                                " differs from the vision tower's image size " +
                                std::to_string(config.vision.image_size));
  }

  ModelInfo& info = engine->info_;
  info.name = std::filesystem::path(options.model_dir).lexically_normal().filename().string();
  if (info.name.empty()) {
    info.name =
        std::filesystem::path(options.model_dir).lexically_normal().parent_path().filename();
  }
  info.mode = config.flex.enabled ? "flex" : config.mode.name;
  info.dtype = DtypeName(engine->dtype_);
  info.device = engine->device_.str();
  if (options.chat_template.empty()) {
    engine->chat_template_ = config.layout == CheckpointLayout::kHfLlava ? ChatTemplate::kLlavaHf
                                                                         : ChatTemplate::kVicunaV1;
  } else {
    FLEXVQA_ASSIGN_OR_RETURN(engine->chat_template_, ParseChatTemplate(options.chat_template));
  }
  info.chat_template = ChatTemplateName(engine->chat_template_);
  info.context_length = context;
  info.vocab_size = config.text.vocab_size;
  info.num_image_tokens = config.num_image_tokens();
  info.max_sequences = options.max_sequences;
  info.limits = options.limits;
  if (info.limits.max_prompt_tokens <= 0 || info.limits.max_prompt_tokens >= context) {
    info.limits.max_prompt_tokens = context - 1;
  }
  return std::unique_ptr<Engine>(std::move(engine));
}

StatusOr<std::shared_ptr<const PreparedRequest>> LlavaEngine::Prepare(
    const GenerationRequest& request) const {
  const EngineLimits& limits = info_.limits;
  FLEXVQA_RETURN_IF_ERROR(ValidateRequest(request, info_, config_.flex.enabled));
  auto prepared = std::make_shared<LlavaPrepared>();
  prepared->sampling = request.sampling;
  PromptOptions prompt;
  prompt.chat_template = chat_template_;
  prompt.has_image = request.image.has_value();
  prompt.image_token_id = config_.image_token_id;
  prompt.num_image_tokens = info_.num_image_tokens;
  FLEXVQA_ASSIGN_OR_RETURN(prepared->tokens, BuildLlavaPrompt(*tokenizer_, request.turns, prompt));
  prepared->prompt_tokens = static_cast<int>(prepared->tokens.size());
  prepared->image_tokens = prompt.has_image ? prompt.num_image_tokens : 0;
  if (prepared->prompt_tokens > limits.max_prompt_tokens) {
    return InvalidArgumentError("the prompt is " + std::to_string(prepared->prompt_tokens) +
                                " tokens (" + std::to_string(prepared->image_tokens) +
                                " of them for the image); this server accepts at most " +
                                std::to_string(limits.max_prompt_tokens) +
                                ": shorten the question");
  }
  const int total = prepared->prompt_tokens + request.sampling.max_new_tokens;
  if (total > info_.context_length) {
    return InvalidArgumentError("the model's context is " + std::to_string(info_.context_length) +
                                " tokens, but the request needs " + std::to_string(total) + " (" +
                                std::to_string(prepared->prompt_tokens) + " in the prompt, " +
                                std::to_string(request.sampling.max_new_tokens) +
                                " new): lower max_new_tokens to at most " +
                                std::to_string(info_.context_length - prepared->prompt_tokens));
  }
  const bool flex = config_.flex.enabled;
  const bool two_views = flex || config_.mode.zoom() > 0;
  prepared->threshold = request.selection_threshold.value_or(config_.flex.threshold);
  if (flex && (prepared->threshold < 0 || prepared->threshold > 255)) {
    return InvalidArgumentError("selection_threshold must be between 0 and 255, got " +
                                std::to_string(prepared->threshold));
  }
  if (request.image) {
    ImageLimits image_limits;
    image_limits.max_encoded_bytes = limits.max_image_bytes;
    image_limits.max_pixels = limits.max_image_pixels;
    FLEXVQA_ASSIGN_OR_RETURN(
        RgbImage image, DecodeImage(request.image->bytes, request.image->mime_type, image_limits));
    if (two_views) {
      FLEXVQA_ASSIGN_OR_RETURN(
          TwoResolutionPixels views,
          PreprocessFlexAttention(image, preprocess_, config_.vision.image_size));
      prepared->pixels = std::move(views.low);
      prepared->highres_pixels = std::move(views.high);
      prepared->image_width = image.width;
      prepared->image_height = image.height;
    } else {
      FLEXVQA_ASSIGN_OR_RETURN(prepared->pixels, PreprocessLlava(image, preprocess_));
    }
  }
  return std::shared_ptr<const PreparedRequest>(std::move(prepared));
}

StatusOr<SequenceId> LlavaEngine::Admit(std::shared_ptr<const PreparedRequest> request) {
  auto prepared = std::dynamic_pointer_cast<const LlavaPrepared>(request);
  if (!prepared) return InvalidArgumentError("request was not prepared by this engine");
  const int slot = cache_->Allocate();
  if (slot < 0) {
    return ResourceExhaustedError("all " + std::to_string(info_.max_sequences) +
                                  " sequence slots are in use");
  }
  Sequence seq;
  seq.request = prepared;
  seq.slot = slot;
  seq.sampler = std::make_unique<SequenceSampler>(prepared->sampling, prepared->tokens);
  seq.detokenizer = std::make_unique<StreamingDetokenizer>(*tokenizer_);
  seq.stop = std::make_unique<StopStringMatcher>(prepared->sampling.stop);
  seq.report.prompt_tokens = prepared->prompt_tokens;
  seq.report.image_tokens = prepared->image_tokens;
  const SequenceId id = next_id_++;
  sequences_.emplace(id, std::move(seq));
  return id;
}

void LlavaEngine::Release(SequenceId sequence) {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) return;
  cache_->Free(it->second.slot);
  sequences_.erase(it);
}

EngineMemory LlavaEngine::Memory() const {
  auto size = [](const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; };
  EngineMemory memory;
  memory.kv_cache_pool_bytes = cache_->bytes();
  const KvCacheShape& shape = cache_->shape();
  const int64_t bytes_per_position =
      memory.kv_cache_pool_bytes / (shape.num_slots * shape.max_context);
  for (const auto& [id, seq] : sequences_) {
    memory.kv_cache_used_bytes += bytes_per_position * cache_->length(seq.slot);
    if (seq.highres) memory.hr_cache_bytes += seq.highres->bytes();
    if (seq.cross) {
      for (const at::Tensor& t : seq.cross->keys) memory.hr_cache_bytes += size(t);
      for (const at::Tensor& t : seq.cross->values) memory.hr_cache_bytes += size(t);
    }
  }
  return memory;
}

SequenceReport LlavaEngine::Report(SequenceId sequence) const {
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? SequenceReport() : it->second.report;
}

SelectionTrace LlavaEngine::Selections(SequenceId sequence) const {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end() || !it->second.highres) return {};
  return it->second.highres->trace();
}

std::unique_ptr<FlexAttention> LlavaEngine::FlexHook(const std::vector<SequenceId>& batch) {
  if (model_->highres() == nullptr) return nullptr;
  std::vector<HighResSequence*> chunks;
  for (SequenceId id : batch) chunks.push_back(sequences_.at(id).highres.get());
  return std::make_unique<FlexAttention>(*model_->highres(), std::move(chunks));
}

std::unique_ptr<CrossAttention> LlavaEngine::CrossHook(const std::vector<SequenceId>& batch) {
  if (model_->cross() == nullptr) return nullptr;
  std::vector<const CrossKeyValues*> memory;
  for (SequenceId id : batch) memory.push_back(sequences_.at(id).cross.get());
  return std::make_unique<CrossAttention>(*model_->cross(), std::move(memory));
}

void LlavaEngine::UpdateReports(const std::vector<SequenceId>& batch,
                                const std::vector<int64_t>& starts,
                                const std::vector<int64_t>& lengths, FlopCount::Phase phase) {
  for (size_t i = 0; i < batch.size(); ++i) {
    Sequence& seq = sequences_.at(batch[i]);
    SequenceReport& report = seq.report;
    // composite: the prompt's image rows ran no attention (LlavaModel::PromptSpan).
    const ChunkSpan span = phase == FlopCount::kPrefill
                               ? model_->PromptSpan(seq.request->tokens, 0, 0)
                               : ChunkSpan{0, starts[i], 0, lengths[i]};
    AddDecoderChunkFlops(config_.text, starts[i], lengths[i], span.no_attention_begin - starts[i],
                         span.no_attention_length, phase, &report.flops);
    if (model_->cross() != nullptr) {
      const int64_t hr = seq.cross ? HighResTokens() : 0;
      AddCrossAttentionFlops(config_, lengths[i], hr, phase == FlopCount::kPrefill ? hr : 0, phase,
                             &report.flops);
    }
    if (!seq.highres) continue;
    const HighResSequence& hr = *seq.highres;
    AddFlexFlops(config_.text, hr.rescored_keys() - seq.counted.rescored_keys,
                 hr.selected_tokens_total() - report.selected_hr_tokens,
                 hr.computed_rows() - seq.counted.hr_rows, phase, &report.flops);
    seq.counted.rescored_keys = hr.rescored_keys();
    seq.counted.hr_rows = hr.computed_rows();
    report.selected_hr_tokens = hr.selected_tokens_total();
  }
}

void LlavaEngine::Fail(const std::vector<SequenceId>& batch, const Status& status,
                       std::vector<TokenEvent>* events) {
  for (SequenceId id : batch) {
    Sequence& seq = sequences_.at(id);
    seq.finished = true;
    TokenEvent event;
    event.sequence = id;
    event.finished = true;
    event.reason = FinishReason::kError;
    event.status = status;
    events->push_back(std::move(event));
  }
}

void LlavaEngine::Prefill(const std::vector<SequenceId>& sequences,
                          std::vector<TokenEvent>* events) {
  std::vector<SequenceId> batch;
  for (SequenceId id : sequences) {
    auto it = sequences_.find(id);
    if (it != sequences_.end() && !it->second.prefilled && !it->second.finished)
      batch.push_back(id);
  }
  if (batch.empty()) return;
  try {
    // Vision tower and projector over every image of the batch at once (flex: the HR tiles too).
    const int side = config_.vision.image_size;
    const int high_side = preprocess_.crop_size;
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    std::vector<at::Tensor> images, highres_images;
    for (SequenceId id : batch) {
      const LlavaPrepared& r = *sequences_.at(id).request;
      if (r.pixels.empty()) continue;
      images.push_back(at::from_blob(const_cast<float*>(r.pixels.data()), {3, side, side}, f32));
      if (!r.highres_pixels.empty()) {
        highres_images.push_back(at::from_blob(const_cast<float*>(r.highres_pixels.data()),
                                               {3, high_side, high_side}, f32));
      }
    }
    const auto start = std::chrono::steady_clock::now();
    at::Tensor features;  // [images, tokens, D]
    at::Tensor highres;   // flex: [images, hr^2, D]
    if (!highres_images.empty() && config_.mode.name == "hd") {
      features =
          model_->EncodeHd(at::stack(highres_images).to(device_), at::stack(images).to(device_));
    } else if (!highres_images.empty()) {
      std::tie(features, highres) = model_->EncodeTwoResolutions(
          at::stack(highres_images).to(device_), at::stack(images).to(device_));
    } else if (!images.empty()) {
      features = model_->EncodeImages(at::stack(images));
    }
    const auto vision_done = std::chrono::steady_clock::now();
    std::vector<PromptChunk> prompts;
    int image_index = 0;
    for (SequenceId id : batch) {
      Sequence& seq = sequences_.at(id);
      const LlavaPrepared& r = *seq.request;
      PromptChunk chunk;
      chunk.tokens = &r.tokens;
      chunk.slot = seq.slot;
      if (!r.pixels.empty()) {
        chunk.image_features = features[image_index];
        if (model_->cross() != nullptr) {
          seq.cross = std::make_unique<CrossKeyValues>(
              model_->cross()->KeysAndValues(highres[image_index]));
        } else if (highres.defined()) {
          const int64_t begin =
              std::find(r.tokens.begin(), r.tokens.end(), config_.image_token_id) -
              r.tokens.begin();
          seq.highres =
              std::make_unique<HighResSequence>(*model_->highres(), highres[image_index].clone(),
                                                begin, r.image_width, r.image_height, r.threshold);
        }
        ++image_index;
      }
      prompts.push_back(chunk);
    }
    const std::unique_ptr<FlexAttention> hook = FlexHook(batch);
    const std::unique_ptr<CrossAttention> cross = CrossHook(batch);
    const at::Tensor logits = model_->PrefillLogits(prompts, *cache_, hook.get(), cross.get());
    std::vector<int64_t> starts(batch.size(), 0), lengths;
    for (SequenceId id : batch) {
      Sequence& seq = sequences_.at(id);
      lengths.push_back(static_cast<int64_t>(seq.request->tokens.size()));
      if (seq.request->pixels.empty()) continue;
      // This sequence's own images: 1 (LR), plus the Z^2 HR tiles in flex and hd.
      const int64_t zoom = seq.highres ? config_.flex.zoom_ratio : config_.mode.zoom();
      const int64_t images = 1 + zoom * zoom;
      AddVisionFlops(config_, images, &seq.report.flops);
    }
    UpdateReports(batch, starts, lengths, FlopCount::kPrefill);
    for (SequenceId id : batch) sequences_.at(id).prefilled = true;
    SampleAndEmit(logits, batch, events);  // Ends with token ids on the host: the device is done.
    const auto done = std::chrono::steady_clock::now();
    for (SequenceId id : batch) {
      SequenceReport& report = sequences_.at(id).report;
      if (!sequences_.at(id).request->pixels.empty())
        report.vision_ms = MsBetween(start, vision_done);
      report.prefill_ms = MsBetween(vision_done, done);
    }
  } catch (const std::exception& e) {
    Fail(batch, StatusFromTorchError(e, "prefill"), events);
  }
}

void LlavaEngine::Decode(const std::vector<SequenceId>& sequences,
                         std::vector<TokenEvent>* events) {
  std::vector<SequenceId> batch;
  for (SequenceId id : sequences) {
    auto it = sequences_.find(id);
    if (it != sequences_.end() && it->second.prefilled && !it->second.finished) batch.push_back(id);
  }
  if (batch.empty()) return;
  try {
    std::vector<int32_t> tokens;
    std::vector<int> slots;
    std::vector<int64_t> starts, lengths(batch.size(), 1);
    for (SequenceId id : batch) {
      const Sequence& seq = sequences_.at(id);
      tokens.push_back(seq.last_token);
      slots.push_back(seq.slot);
      starts.push_back(cache_->length(seq.slot));
    }
    const auto start = std::chrono::steady_clock::now();
    const std::unique_ptr<FlexAttention> hook = FlexHook(batch);
    const std::unique_ptr<CrossAttention> cross = CrossHook(batch);
    const at::Tensor logits =
        model_->DecodeLogits(tokens, slots, *cache_, hook.get(), cross.get());  // [B, V]
    UpdateReports(batch, starts, lengths, FlopCount::kDecode);
    SampleAndEmit(logits, batch, events);
    const double ms = MsBetween(start, std::chrono::steady_clock::now());
    for (SequenceId id : batch) sequences_.at(id).report.decode_ms += ms;
  } catch (const std::exception& e) {
    Fail(batch, StatusFromTorchError(e, "decode"), events);
  }
}

void LlavaEngine::SampleAndEmit(const at::Tensor& logits, const std::vector<SequenceId>& batch,
                                std::vector<TokenEvent>* events) {
  bool all_greedy = true;
  for (SequenceId id : batch) all_greedy = all_greedy && sequences_.at(id).sampler->IsPlainGreedy();
  const int vocab = static_cast<int>(logits.size(1));
  if (all_greedy) {
    // Only B token ids cross to the host.
    const at::Tensor chosen = logits.argmax(1).to(at::kCPU);
    const int64_t* data = chosen.data_ptr<int64_t>();
    for (size_t i = 0; i < batch.size(); ++i) {
      Sequence& seq = sequences_.at(batch[i]);
      seq.sampler->Accept(static_cast<int32_t>(data[i]));
      events->push_back(Emit(batch[i], seq, static_cast<int32_t>(data[i])));
    }
    return;
  }
  at::Tensor host = logits.to(at::kCPU).contiguous();
  float* data = host.data_ptr<float>();
  for (size_t i = 0; i < batch.size(); ++i) {
    Sequence& seq = sequences_.at(batch[i]);
    const int32_t token = seq.sampler->Sample(data + i * vocab, vocab);
    events->push_back(Emit(batch[i], seq, token));
  }
}

TokenEvent LlavaEngine::Emit(SequenceId id, Sequence& seq, int32_t token) {
  TokenEvent event;
  event.sequence = id;
  event.token_id = token;
  seq.last_token = token;
  ++seq.generated;
  seq.report.generated_tokens = seq.generated;
  const SamplingParams& params = seq.request->sampling;
  if (token == tokenizer_->eos_id() && !params.ignore_eos) {
    event.text = seq.stop->Push(seq.detokenizer->Flush()) + seq.stop->Flush();
    event.finished = true;
    event.reason = FinishReason::kStop;
  } else {
    event.text = seq.stop->Push(seq.detokenizer->Push(token));
    if (seq.stop->stopped()) {
      event.finished = true;
      event.reason = FinishReason::kStop;
    } else if (seq.generated >= params.max_new_tokens ||
               cache_->length(seq.slot) + 1 >= info_.context_length) {
      event.text += seq.stop->Push(seq.detokenizer->Flush());
      if (!seq.stop->stopped()) event.text += seq.stop->Flush();
      event.finished = true;
      event.reason = seq.stop->stopped() ? FinishReason::kStop : FinishReason::kLength;
    }
  }
  seq.finished = event.finished;
  return event;
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> CreateLlavaEngine(const EngineOptions& options) {
  return LlavaEngine::Create(options);
}

}  // namespace flexvqa
