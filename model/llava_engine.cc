// LLaVA-1.5 behind the Engine interface of model/engine.h, in the attention mode its checkpoint
// asks for (model/modes/mode.h; docs/modes.md). CLIP tower + mlp2x_gelu projector + LLaMA decoder,
// a slot-per-sequence KV cache, a batched device sampler (each sequence's own seeded stream),
// streaming detokenisation and stop strings. Prefill packs every new sequence's prompt into one
// forward pass; decode packs one row per running sequence, padded to its bucket
// (model/nn/llama.h, decoder_batch.h): no host sync inside the step, and one after it (the
// sampled token ids). What the mode changes (image views and encoding, each sequence's
// state beside its slot, the decoder's hooks, the FLOPs) it does behind the Mode interface: no
// per-mode branch here. A sequence's mode state is freed at Release.
#include "model/llava_engine.h"

#include <ATen/ATen.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <unordered_map>

#include "model/encoder_cache.h"
#include "model/engine.h"
#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/llava_model.h"
#include "model/modes/mode.h"
#include "model/nn/batch_sampler.h"
#include "model/nn/cuda/step_graph.h"
#include "model/nn/decoder_batch.h"
#include "model/nn/flop_counter.h"
#include "model/nn/kv_cache.h"
#include "model/nn/llama.h"
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
  ModeInput mode;         // The image's views and the mode's options (Mode::PrepareImage).
  std::string image_key;  // ImageCacheKey of the image's bytes; empty: not cached.
  bool has_image() const { return !mode.pixels.empty(); }
};

struct Sequence {
  std::shared_ptr<const LlavaPrepared> request;
  int slot = -1;
  bool prefilled = false;
  bool finished = false;
  int generated = 0;
  int32_t last_token = -1;
  // Greedy without a repetition penalty: the argmax of the raw logits (no sampler state needed).
  bool plain_greedy = true;
  std::unique_ptr<StreamingDetokenizer> detokenizer;
  std::unique_ptr<StopStringMatcher> stop;
  std::unique_ptr<SequenceState> state;  // The mode's (Mode::BeginSequence), from prefill on.
  SequenceReport report;
};

double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The engine's named logger (lifecycle and fallbacks; nothing per token).
std::shared_ptr<spdlog::logger> Logger() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    std::shared_ptr<spdlog::logger> existing = spdlog::get("engine");
    return existing ? existing : spdlog::stderr_color_mt("engine");
  }();
  return logger;
}

class LlavaEngine : public Engine {
 public:
  static StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options, LogitsSink* sink);
  // Prepare after tokenisation (PrepareTokens, model/llava_engine.h).
  StatusOr<std::shared_ptr<const PreparedRequest>> PrepareFromTokens(
      std::vector<int32_t> tokens, const std::optional<ImageInput>& image,
      const std::vector<float>& pixels, const GenerationRequest& request) const;

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
  // Chooses each sequence's next token from fp32 logits [R, V] (rows in `batch` order; rows past
  // batch.size() pad a decode bucket) on the device and emits it: the step's one host sync.
  Status SampleAndEmit(const at::Tensor& logits, const std::vector<SequenceId>& batch,
                       std::vector<TokenEvent>* events);
  // SampleAndEmit in three parts. Host, before the step: true when every row is plain greedy (the
  // argmax of the logits, no sampler state), else the sampler's R rows staged (padding rows
  // greedy).
  StatusOr<bool> StageSampling(const std::vector<SequenceId>& batch, int64_t rows);
  // Device: the chosen ids [R] int64 (no host read: part of a captured step).
  at::Tensor ChooseIds(const at::Tensor& logits, bool greedy);
  // Host: reads the ids (the sync) and emits batch.size() of them.
  void EmitIds(const at::Tensor& ids, const std::vector<SequenceId>& batch,
               std::vector<TokenEvent>* events);
  // A decode step's device work: captured as a CUDA graph once per (bucket of `rows`, greedy or
  // sampled) and replayed where the build, the device and the mode allow (StepGraphs), else
  // eager; a fallback's reason is logged once. Returns the body's {logits, ids}.
  std::vector<at::Tensor> RunDecodeStep(int64_t rows, bool greedy,
                                        const std::function<std::vector<at::Tensor>()>& body);
  TokenEvent Emit(SequenceId id, Sequence& seq, int32_t token);
  void Fail(const std::vector<SequenceId>& batch, const Status& status,
            std::vector<TokenEvent>* events);
  // The mode's decoder hooks for one forward pass over `batch` (null: the plain decoder).
  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceId>& batch);
  // After a forward pass over `batch`: the FLOPs it ran (chunk starts and lengths as run) and the
  // HR tokens selected so far.
  void UpdateReports(const std::vector<SequenceId>& batch, const std::vector<int64_t>& starts,
                     const std::vector<int64_t>& lengths, FlopCount::Phase phase);
  // Hands the logits [B, V] the batch samples from to the sink (when there is one).
  void Sink(const at::Tensor& logits, const std::vector<SequenceId>& batch);
  // The tower's rows for the images of `batch` (in batch order, sequences without one skipped):
  // from the encoder cache, or the mode's Encode once over the distinct rest.
  BatchFeatures EncodeImages(const std::vector<SequenceId>& batch);

  const Mode& mode() const { return model_->mode(); }

  LlavaConfig config_;
  ModelInfo info_;
  ChatTemplate chat_template_ = ChatTemplate::kVicunaV1;  // Parsed once in Create.
  at::Device device_ = at::Device(at::kCPU);
  at::ScalarType dtype_ = at::kFloat;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<LlavaModel> model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<BatchSampler> sampler_;  // Per-slot sampling state, same slots as cache_.
  std::unique_ptr<SlotPools> pools_;    // The mode's per-slot device state, same slots (or null).
  std::unique_ptr<StepGraphs> graphs_;  // The decode step's graphs per bucket (CUDA builds).
  Status capturable_;                   // Mode::DecodeCapturable, once.
  bool logged_eager_ = false;           // The mode's reason for eager steps, logged once.
  LogitsSink* sink_ = nullptr;
  std::unique_ptr<EncoderCache> encoder_cache_;  // Its bound is read by Prepare (const).
  std::string pipeline_;                         // PipelineId of the mode, for the cache keys.
  std::unordered_map<SequenceId, Sequence> sequences_;
  SequenceId next_id_ = 1;
};

StatusOr<std::unique_ptr<Engine>> LlavaEngine::Create(const EngineOptions& options,
                                                      LogitsSink* sink) {
  auto engine = std::unique_ptr<LlavaEngine>(new LlavaEngine());
  engine->sink_ = sink;
  FLEXVQA_ASSIGN_OR_RETURN(engine->config_, LoadLlavaConfig(options.model_dir, options.vision_dir));
  const LlavaConfig& config = engine->config_;
  FLEXVQA_ASSIGN_OR_RETURN(engine->device_, ParseDevice(options.device));
  FLEXVQA_ASSIGN_OR_RETURN(engine->dtype_, ParseDtype(options.dtype, engine->device_));
  if (options.max_sequences < 1) return InvalidArgumentError("max_sequences must be >= 1");
  if (options.encoder_cache_bytes < 0) {
    return InvalidArgumentError("encoder_cache_bytes must be >= 0 (0: no encoder cache)");
  }
  engine->encoder_cache_ = std::make_unique<EncoderCache>(options.encoder_cache_bytes);
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
    // Its rows: a prefill's sequences or a decode bucket (padding rows take the scratch slot).
    engine->sampler_ = std::make_unique<BatchSampler>(
        options.max_sequences, config.text.vocab_size,
        static_cast<int>(DecodeBucket(options.max_sequences)), engine->device_);
    engine->pools_ = engine->mode().CreateSlotPools(options.max_sequences);
    if (engine->pools_) {
      Logger()->info("{} slot pools: {} bytes per slot, {} in all ({} slots + scratch)",
                     engine->mode().name(), engine->pools_->bytes_per_slot(),
                     engine->pools_->bytes(), options.max_sequences);
    }
    engine->graphs_ = std::make_unique<StepGraphs>(engine->device_, StepGraphs::Options());
    engine->capturable_ = engine->mode().DecodeCapturable();
  } catch (const std::exception& e) {
    return StatusFromTorchError(e, "loading " + options.model_dir);
  }

  ModelInfo& info = engine->info_;
  info.name = std::filesystem::path(options.model_dir).lexically_normal().filename().string();
  if (info.name.empty()) {
    info.name =
        std::filesystem::path(options.model_dir).lexically_normal().parent_path().filename();
  }
  info.mode = engine->mode().name();
  info.dtype = DtypeName(engine->dtype_);
  info.device = engine->device_.str();
  if (options.chat_template.empty()) {
    engine->chat_template_ = config.layout == CheckpointLayout::kHfLlava ? ChatTemplate::kLlavaHf
                                                                         : ChatTemplate::kVicunaV1;
  } else {
    FLEXVQA_ASSIGN_OR_RETURN(engine->chat_template_, ParseChatTemplate(options.chat_template));
  }
  info.chat_template = ChatTemplateName(engine->chat_template_);
  engine->pipeline_ = PipelineId(engine->mode().name(), config.vision.image_size,
                                 engine->mode().zoom(), engine->mode().preprocess());
  info.context_length = context;
  info.vocab_size = config.text.vocab_size;
  info.num_image_tokens = engine->mode().image_tokens();
  info.supports_selection_threshold = engine->mode().supports_selection_threshold();
  info.max_sequences = options.max_sequences;
  info.limits = options.limits;
  if (info.limits.max_prompt_tokens <= 0 || info.limits.max_prompt_tokens >= context) {
    info.limits.max_prompt_tokens = context - 1;
  }
  return std::unique_ptr<Engine>(std::move(engine));
}

StatusOr<std::shared_ptr<const PreparedRequest>> LlavaEngine::Prepare(
    const GenerationRequest& request) const {
  FLEXVQA_RETURN_IF_ERROR(ValidateRequest(request, info_, info_.supports_selection_threshold));
  PromptOptions prompt;
  prompt.chat_template = chat_template_;
  prompt.has_image = request.image.has_value();
  prompt.image_token_id = config_.image_token_id;
  prompt.num_image_tokens = info_.num_image_tokens;
  FLEXVQA_ASSIGN_OR_RETURN(std::vector<int32_t> tokens,
                           BuildLlavaPrompt(*tokenizer_, request.turns, prompt));
  return PrepareFromTokens(std::move(tokens), request.image, {}, request);
}

StatusOr<std::shared_ptr<const PreparedRequest>> LlavaEngine::PrepareFromTokens(
    std::vector<int32_t> tokens, const std::optional<ImageInput>& image,
    const std::vector<float>& pixels, const GenerationRequest& request) const {
  const EngineLimits& limits = info_.limits;
  auto prepared = std::make_shared<LlavaPrepared>();
  prepared->sampling = request.sampling;
  prepared->tokens = std::move(tokens);
  prepared->prompt_tokens = static_cast<int>(prepared->tokens.size());
  const bool has_image = image.has_value() || !pixels.empty();
  prepared->image_tokens = has_image ? info_.num_image_tokens : 0;
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
  FLEXVQA_RETURN_IF_ERROR(mode().ValidateRequest(request, &prepared->mode));
  if (image) {
    // Hashed before decoding: the key names the bytes as sent.
    if (encoder_cache_->enabled()) prepared->image_key = ImageCacheKey(image->bytes, pipeline_);
    ImageLimits image_limits;
    image_limits.max_encoded_bytes = limits.max_image_bytes;
    image_limits.max_pixels = limits.max_image_pixels;
    FLEXVQA_ASSIGN_OR_RETURN(RgbImage decoded,
                             DecodeImage(image->bytes, image->mime_type, image_limits));
    FLEXVQA_RETURN_IF_ERROR(mode().PrepareImage(decoded, &prepared->mode));
  } else if (!pixels.empty()) {
    const int64_t side = config_.vision.image_size;
    if (mode().zoom() != 0 || static_cast<int64_t>(pixels.size()) != 3 * side * side) {
      return InvalidArgumentError("pixels must be one [3, " + std::to_string(side) + ", " +
                                  std::to_string(side) + "] view of a single-view mode");
    }
    prepared->mode.pixels = pixels;
  }
  const int64_t placeholders =
      std::count(prepared->tokens.begin(), prepared->tokens.end(), config_.image_token_id);
  if (placeholders != prepared->image_tokens) {
    return InvalidArgumentError("the prompt holds " + std::to_string(placeholders) +
                                " image placeholders; its image needs " +
                                std::to_string(prepared->image_tokens));
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
  try {
    if (Status s = sampler_->Admit(slot, prepared->sampling, prepared->tokens); !s.ok()) {
      cache_->Free(slot);
      return s;
    }
  } catch (const std::exception& e) {
    cache_->Free(slot);
    return StatusFromTorchError(e, "admitting a sequence");
  }
  Sequence seq;
  seq.request = prepared;
  seq.slot = slot;
  seq.plain_greedy =
      prepared->sampling.temperature == 0.0f && prepared->sampling.repetition_penalty == 1.0f;
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
  EngineMemory memory;
  memory.kv_cache_pool_bytes = cache_->bytes();
  const int64_t bytes_per_position = cache_->bytes_per_position();
  for (const auto& [id, seq] : sequences_) {
    memory.kv_cache_used_bytes += bytes_per_position * cache_->length(seq.slot);
    if (seq.state) memory.hr_cache_bytes += seq.state->bytes();
  }
  memory.encoder_cache_bytes = encoder_cache_->bytes();
  return memory;
}

SequenceReport LlavaEngine::Report(SequenceId sequence) const {
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? SequenceReport() : it->second.report;
}

SelectionTrace LlavaEngine::Selections(SequenceId sequence) const {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end() || !it->second.state) return {};
  SelectionTrace trace = it->second.state->selections();
  const ModeInput& input = it->second.request->mode;
  const ImageSquare square = ViewSquare(input.image_width, input.image_height, mode().preprocess());
  trace.region_x = square.x;
  trace.region_y = square.y;
  trace.region_side = square.side;
  return trace;
}

std::unique_ptr<LayerHooks> LlavaEngine::Hooks(const std::vector<SequenceId>& batch) {
  std::vector<SequenceState*> states;
  for (SequenceId id : batch) states.push_back(sequences_.at(id).state.get());
  return mode().Hooks(states, pools_.get());
}

void LlavaEngine::UpdateReports(const std::vector<SequenceId>& batch,
                                const std::vector<int64_t>& starts,
                                const std::vector<int64_t>& lengths, FlopCount::Phase phase) {
  for (size_t i = 0; i < batch.size(); ++i) {
    Sequence& seq = sequences_.at(batch[i]);
    mode().AddForwardFlops(*seq.state, starts[i], lengths[i], phase, &seq.report.flops);
    seq.report.selected_hr_tokens = seq.state->selected_tokens();
  }
}

void LlavaEngine::Sink(const at::Tensor& logits, const std::vector<SequenceId>& batch) {
  if (sink_ == nullptr) return;
  const at::Tensor host = logits.to(at::kCPU).contiguous();  // [B, V] fp32
  const int vocab = static_cast<int>(host.size(1));
  for (size_t i = 0; i < batch.size(); ++i) {
    const int position = cache_->length(sequences_.at(batch[i]).slot) - 1;
    sink_->OnLogits(batch[i], position, host.data_ptr<float>() + i * vocab, vocab);
  }
}

BatchFeatures LlavaEngine::EncodeImages(const std::vector<SequenceId>& batch) {
  std::vector<const ModeInput*> inputs;
  std::vector<std::string> keys;
  for (SequenceId id : batch) {
    const LlavaPrepared& r = *sequences_.at(id).request;
    if (!r.has_image()) continue;
    inputs.push_back(&r.mode);
    keys.push_back(r.image_key);
  }
  if (inputs.empty()) return {};
  // Vision tower and projector over the images to encode at once (two-view modes: the HR tiles
  // too).
  return EncodeThroughCache(*encoder_cache_, keys, [&](const std::vector<size_t>& which) {
    const int side = config_.vision.image_size;
    const int high_side = mode().preprocess().crop_size;
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    std::vector<at::Tensor> images, highres_images;
    for (size_t i : which) {
      const ModeInput& in = *inputs[i];
      images.push_back(at::from_blob(const_cast<float*>(in.pixels.data()), {3, side, side}, f32));
      if (!in.highres_pixels.empty()) {
        highres_images.push_back(at::from_blob(const_cast<float*>(in.highres_pixels.data()),
                                               {3, high_side, high_side}, f32));
      }
    }
    EncodedImages encoded = mode().Encode(
        model_->encoder(), at::stack(images).to(device_),
        highres_images.empty() ? at::Tensor() : at::stack(highres_images).to(device_));
    return std::make_pair(encoded.sequence, encoded.highres);
  });
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
    const auto start = std::chrono::steady_clock::now();
    const BatchFeatures encoded = EncodeImages(batch);
    const auto vision_done = std::chrono::steady_clock::now();
    std::vector<PromptChunk> prompts;
    int image_index = 0;
    for (SequenceId id : batch) {
      Sequence& seq = sequences_.at(id);
      const LlavaPrepared& r = *seq.request;
      PromptChunk chunk;
      chunk.tokens = &r.tokens;
      chunk.slot = seq.slot;
      SequenceStart begin;
      begin.tokens = &r.tokens;
      begin.input = &r.mode;
      begin.slot = seq.slot;
      begin.pools = pools_.get();
      if (r.has_image()) {
        chunk.image_features = encoded.images[image_index].sequence;
        begin.highres = encoded.images[image_index].highres;
        seq.report.encoder_cache = encoded.use[image_index];
        begin.image_begin =
            std::find(r.tokens.begin(), r.tokens.end(), config_.image_token_id) - r.tokens.begin();
        ++image_index;
      }
      seq.state = mode().BeginSequence(begin);
      prompts.push_back(chunk);
    }
    const std::unique_ptr<LayerHooks> hooks = Hooks(batch);
    at::Tensor all_logits;
    const bool prompt_rows = sink_ != nullptr && sink_->prompt_rows();
    const at::Tensor logits =
        model_->PrefillLogits(prompts, *cache_, hooks.get(), prompt_rows ? &all_logits : nullptr);
    std::vector<int64_t> starts(batch.size(), 0), lengths;
    int64_t row = 0;
    for (SequenceId id : batch) {
      Sequence& seq = sequences_.at(id);
      const int length = static_cast<int>(seq.request->tokens.size());
      lengths.push_back(length);
      if (prompt_rows) {  // Every prompt row but the last; the last comes with the sampled rows.
        const at::Tensor rows = all_logits.narrow(0, row, length).to(at::kCPU).contiguous();
        for (int p = 0; p + 1 < length; ++p) {
          sink_->OnLogits(id, p, rows.data_ptr<float>() + p * rows.size(1),
                          static_cast<int>(rows.size(1)));
        }
      }
      row += length;
      if (seq.request->has_image() && seq.report.encoder_cache != EncoderCacheUse::kHit) {
        mode().AddVisionFlops(&seq.report.flops);
      }
    }
    for (SequenceId id : batch) sequences_.at(id).prefilled = true;
    Sink(logits, batch);
    // Ends with token ids on the host: the device is done.
    if (Status s = SampleAndEmit(logits, batch, events); !s.ok()) Fail(batch, s, events);
    // After the ids were read: on an async device, this step's values have arrived.
    UpdateReports(batch, starts, lengths, FlopCount::kPrefill);
    const auto done = std::chrono::steady_clock::now();
    for (SequenceId id : batch) {
      SequenceReport& report = sequences_.at(id).report;
      if (sequences_.at(id).request->has_image() && report.encoder_cache != EncoderCacheUse::kHit) {
        report.vision_ms = MsBetween(start, vision_done);
      }
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
    const std::unique_ptr<LayerHooks> hooks = Hooks(batch);
    // Host: the step's inputs into the bucket's fixed buffers, the sampler's rows staged.
    const DecoderBatch plan = model_->PlanDecodeStep(tokens, slots, *cache_);
    const StatusOr<bool> greedy = StageSampling(batch, plan.rows);
    if (!greedy.ok()) {
      Fail(batch, greedy.status(), events);
      return;
    }
    // Device: from those buffers to the chosen ids, the logits [bucket, V] beside them, then the
    // hooks' own outputs.
    const std::vector<at::Tensor> step = RunDecodeStep(plan.rows, *greedy, [&] {
      const at::Tensor logits = model_->DecodeStepLogits(plan, *cache_, hooks.get());
      std::vector<at::Tensor> out = {logits, ChooseIds(logits, *greedy)};
      if (hooks) {
        for (at::Tensor& t : hooks->StepOutputs()) out.push_back(std::move(t));
      }
      return out;
    });
    // Host: the hooks' bookkeeping (their outputs' copies queued before the ids' read).
    if (hooks) hooks->AfterStep({step.begin() + 2, step.end()});
    LlamaDecoder::CommitLengths(plan, *cache_);
    Sink(step[0], batch);
    EmitIds(step[1], batch, events);
    // After the ids were read: on an async device, this step's values have arrived.
    UpdateReports(batch, starts, lengths, FlopCount::kDecode);
    const double ms = MsBetween(start, std::chrono::steady_clock::now());
    for (SequenceId id : batch) sequences_.at(id).report.decode_ms += ms;
  } catch (const std::exception& e) {
    Fail(batch, StatusFromTorchError(e, "decode"), events);
  }
}

Status LlavaEngine::SampleAndEmit(const at::Tensor& logits, const std::vector<SequenceId>& batch,
                                  std::vector<TokenEvent>* events) {
  FLEXVQA_ASSIGN_OR_RETURN(const bool greedy, StageSampling(batch, logits.size(0)));
  EmitIds(ChooseIds(logits, greedy), batch, events);
  return Status::Ok();
}

StatusOr<bool> LlavaEngine::StageSampling(const std::vector<SequenceId>& batch, int64_t rows) {
  bool all_greedy = true;
  std::vector<int> slots;
  for (SequenceId id : batch) {
    const Sequence& seq = sequences_.at(id);
    all_greedy = all_greedy && seq.plain_greedy;
    slots.push_back(seq.slot);
  }
  if (all_greedy) return true;
  slots.resize(rows, sampler_->scratch_slot());  // Padding rows: greedy, no draw.
  FLEXVQA_RETURN_IF_ERROR(sampler_->Stage(slots));
  return false;
}

at::Tensor LlavaEngine::ChooseIds(const at::Tensor& logits, bool greedy) {
  // Plain greedy needs no sampler state: its seen tokens never matter.
  return greedy ? logits.argmax(1) : sampler_->Sample(logits);  // [R] int64 on the device
}

void LlavaEngine::EmitIds(const at::Tensor& ids, const std::vector<SequenceId>& batch,
                          std::vector<TokenEvent>* events) {
  const at::Tensor host = ids.to(at::kCPU);  // The one host sync of the step: R token ids.
  const int64_t* data = host.data_ptr<int64_t>();
  for (size_t i = 0; i < batch.size(); ++i) {
    events->push_back(Emit(batch[i], sequences_.at(batch[i]), static_cast<int32_t>(data[i])));
  }
}

std::vector<at::Tensor> LlavaEngine::RunDecodeStep(
    int64_t rows, bool greedy, const std::function<std::vector<at::Tensor>()>& body) {
  if (!graphs_->Supported()) return body();  // CPU, or a build without graphs: nothing to log.
  if (!capturable_.ok()) {
    if (!logged_eager_) Logger()->info("decode steps run eagerly: {}", capturable_.ToString());
    logged_eager_ = true;
    return body();
  }
  const std::string before = graphs_->last_error();
  const std::vector<at::Tensor> out =
      graphs_->Run(static_cast<int>(rows) * 2 + (greedy ? 0 : 1), body);
  if (graphs_->last_error() != before) {
    Logger()->warn("decode step of bucket {} ({}) runs eagerly from now on: {}", rows,
                   greedy ? "greedy" : "sampled", graphs_->last_error());
  }
  return out;
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
  return LlavaEngine::Create(options, nullptr);
}

StatusOr<std::unique_ptr<Engine>> CreateLlavaEngine(const EngineOptions& options,
                                                    LogitsSink* sink) {
  return LlavaEngine::Create(options, sink);
}

StatusOr<std::shared_ptr<const PreparedRequest>> PrepareTokens(
    const Engine& engine, const std::vector<int32_t>& tokens,
    const std::optional<ImageInput>& image, const std::vector<float>& pixels,
    const GenerationRequest& options) {
  const auto* llava = dynamic_cast<const LlavaEngine*>(&engine);
  if (llava == nullptr) return InvalidArgumentError("PrepareTokens needs a LLaVA engine");
  FLEXVQA_RETURN_IF_ERROR(ValidateSampling(options.sampling, engine.Info().limits));
  return llava->PrepareFromTokens(tokens, image, pixels, options);
}

}  // namespace flexvqa
