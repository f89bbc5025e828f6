// The engine's interface to the service: plain structs in, token ids and text out; no torch, no
// gRPC. Prepare() is thread-safe and CPU-only (validation, tokenisation, image decoding and
// preprocessing), so the server can run it on a pool. Everything else is called from ONE worker
// thread that owns the model: Admit a prepared request into a KV-cache slot, Prefill newly admitted
// sequences (emits their first token), Decode one step for running sequences, Release a sequence
// (frees its slot at once). Nothing here throws: LibTorch errors, out-of-memory included, become a
// Status on the events of the sequences involved.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/status.h"

namespace flexvqa {

struct ChatTurn {
  enum class Role { kUser, kAssistant };
  Role role = Role::kUser;
  std::string text;
};

struct ImageInput {
  std::string bytes;      // Encoded JPEG or PNG.
  std::string mime_type;  // image/jpeg or image/png; empty: detected from the bytes.
};

// Sampling as Hugging Face's generate applies it: repetition penalty, temperature, top-k, top-p.
struct SamplingParams {
  int max_new_tokens = 128;         // >= 1.
  float temperature = 0.0f;         // 0: greedy. Otherwise > 0.
  float top_p = 1.0f;               // (0, 1].
  int top_k = 0;                    // 0: off; otherwise >= 1.
  float repetition_penalty = 1.0f;  // > 0; 1: off. Applied to prompt and generated text tokens.
  uint64_t seed = 0;                // Same seed, same request: same output.
  std::vector<std::string>
      stop;                 // Generation ends when the text ends with one of these (not emitted).
  bool ignore_eos = false;  // Benchmarks: run to max_new_tokens.
};

struct GenerationRequest {
  std::vector<ChatTurn> turns;  // Last turn is the user's question. The image joins the first turn.
  std::optional<ImageInput> image;  // At most one image (LLaVA-1.5).
  SamplingParams sampling;
  // FlexAttention models only: the high-resolution selection threshold on the 0-255 scale (a cell
  // is selected when 255 * normalised attention > threshold; 255 selects nothing). Unset: the
  // checkpoint's value. Other modes reject a set value with INVALID_ARGUMENT.
  std::optional<int> selection_threshold;
};

// Limits applied by Prepare (the service exposes them in ModelInfo). Defaults suit a 7B LLaVA
// server.
struct EngineLimits {
  int64_t max_image_bytes = 20 << 20;  // Encoded bytes. Default: 20 MiB.
  int64_t max_image_pixels =
      40'000'000;             // width * height, checked from the header before decoding.
  int max_prompt_tokens = 0;  // Text + image tokens. Default (0): context - 1.
  // UTF-8 bytes of the question or of all turns together, checked before tokenising (a 60 MB
  // question would otherwise cost a minute of CPU and gigabytes first). Default: 256 KiB.
  int64_t max_prompt_bytes = 256 << 10;
  int max_new_tokens = 1024;  // Upper bound for SamplingParams::max_new_tokens.
  int max_stop_strings = 8;
  int max_stop_string_bytes = 64;
};

struct EngineOptions {
  std::string
      model_dir;  // Hugging Face-style directory: config.json, *.safetensors, tokenizer.model.
  std::string vision_dir;  // Original-LLaVA layout only: the CLIP directory. Empty: from config.
  std::string device = "cpu";  // cpu | cuda | cuda:N
  std::string dtype = "auto";  // auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16
  int max_sequences = 8;       // KV-cache slots: sequences resident at once.
  int max_context = 0;         // Tokens per slot. Default (0): the model's max_position_embeddings.
  // Prompt template (docs/chat_templates.md): llava_v1 | vicuna_v1 | llava_hf. Default (""): the
  // checkpoint layout's, llava_hf for llava-hf checkpoints, vicuna_v1 for original LLaVA ones.
  std::string chat_template;
  EngineLimits limits;
  // Bound of the encoder cache (model/encoder_cache.h): vision tower + projector rows of images
  // seen before, on the model's device, least recently used first out. Default: 0 (off); the
  // server's --encoder_cache_bytes sets it.
  int64_t encoder_cache_bytes = 0;
};

struct ModelInfo {
  std::string name;    // Directory name of the checkpoint.
  std::string mode;    // Attention mode: full (LLaVA-1.5) | flex (FlexAttention, 1008 px) | hd |
                       // composite | xattn (docs/modes.md).
  std::string dtype;   // float32 | bfloat16 | float16
  std::string device;  // cpu | cuda:N
  std::string chat_template;  // The prompt template in use: llava_v1 | vicuna_v1 | llava_hf.
  int context_length = 0;
  int vocab_size = 0;
  int num_image_tokens = 0;  // Image tokens one image adds to the prompt.
  // Whether requests may set GenerationRequest::selection_threshold (the mode's; flex).
  bool supports_selection_threshold = false;
  int max_sequences = 0;
  EngineLimits limits;
};

// A validated, tokenised request with its image preprocessed. The engine's own subclass holds the
// token ids and pixels; the fields here are what a scheduler needs to plan.
class PreparedRequest {
 public:
  virtual ~PreparedRequest() = default;
  int prompt_tokens = 0;  // Including image tokens.
  int image_tokens = 0;
  SamplingParams sampling;
};

using SequenceId = int64_t;

// FLOPs a sequence cost, by phase and component (a multiply-add counts 2), from the shapes the
// engine actually ran. A batched call's shared work (one vision pass for several images) is split
// per sequence.
struct FlopCount {
  enum Phase { kVision, kProjector, kPrefill, kDecode, kNumPhases };
  enum Component {
    kProjections,
    kAttention,
    kMlp,
    kLmHead,
    kHighResProjections,
    kOther,
    kNumComponents
  };
  double flops[kNumPhases][kNumComponents] = {};
  double Total() const {
    double total = 0;
    for (const auto& phase : flops) {
      for (double f : phase) total += f;
    }
    return total;
  }
};

// Where a sequence's image features came from at its prefill.
enum class EncoderCacheUse {
  kNone,  // No image, the cache is off, or not prefilled yet.
  kHit,   // From the encoder cache (or shared with an identical image of the same prefill).
  kMiss,  // The vision tower ran for it; the result was cached.
};

// What a sequence did, for usage reporting and metrics. Valid until Release.
struct SequenceReport {
  int prompt_tokens = 0;
  int image_tokens = 0;
  int generated_tokens = 0;
  int64_t selected_hr_tokens =
      0;                  // flex: selected high-res tokens, summed over FA layers and steps.
  double vision_ms = 0;   // Vision tower + projector (the batch's wall time, shared).
  double prefill_ms = 0;  // Prompt forward (the batch's wall time, shared).
  double decode_ms = 0;   // Sum of the decode steps this sequence took part in.
  FlopCount flops;
  // A hit has vision_ms 0 and no kVision / kProjector FLOPs: the tower did not run for it.
  EncoderCacheUse encoder_cache = EncoderCacheUse::kNone;
};

// flex: which high-resolution tokens each FlexAttention layer used at each step (step 0 is the
// prefill's last prompt token, step s the s-th decode step). Selections are 9x9 block masks (block
// = (hr_side/9)^2 HR tokens; flexattention.md §3). Empty for other modes and for requests without
// an image.
struct SelectionTrace {
  int first_fa_layer = 0;  // Decoder layer of FA layer 0 (N_SA).
  int num_fa_layers = 0;
  int grid = 9;     // Blocks per side.
  int hr_side = 0;  // High-resolution tokens per side (72 for LLaVA-1.5 at 1008 px).
  int num_steps = 0;
  // [num_steps][num_fa_layers][grid * grid], row-major blocks, 1 = selected.
  std::vector<uint8_t> masks;
  // [num_steps][num_fa_layers]: selected HR tokens (64 per block at 72x72).
  std::vector<int32_t> selected_tokens;
  // The square of the request's image, in its pixels, that the grid covers (x, y < 0: the padding
  // bands of a non-square image), set by the engine from the image's size and preprocessing.
  int region_x = 0, region_y = 0, region_side = 0;
};

// Memory the engine holds for requests, for the service's gauges (bytes on the model's device).
struct EngineMemory {
  int64_t kv_cache_pool_bytes = 0;  // The KV-cache pool, allocated once at load.
  int64_t kv_cache_used_bytes = 0;  // Positions written by resident sequences.
  int64_t hr_cache_bytes = 0;  // flex/xattn: high-res features and keys/values held per request.
  int64_t encoder_cache_bytes = 0;  // The encoder cache's entries (EngineOptions).
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };

// One step's result for one sequence. `text` is the newly completed UTF-8 text (possibly empty
// while a multi-byte character or a possible stop string is pending). A failed sequence has
// finished = true, reason = kError and a non-OK status; it must still be released.
struct TokenEvent {
  SequenceId sequence = -1;
  int32_t token_id = -1;  // -1 when no token was produced (errors).
  std::string text;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  Status status;
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const ModelInfo& Info() const = 0;

  // Thread-safe, CPU only, no model state touched. INVALID_ARGUMENT names the offending field.
  virtual StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(
      const GenerationRequest& request) const = 0;

  // --- Worker thread only. ---
  virtual int FreeSlots() const = 0;
  // Takes a KV-cache slot for the request. RESOURCE_EXHAUSTED when none is free (nothing is kept).
  virtual StatusOr<SequenceId> Admit(std::shared_ptr<const PreparedRequest> request) = 0;
  // Runs the vision tower and the prompt for admitted sequences; appends one event per sequence.
  virtual void Prefill(const std::vector<SequenceId>& sequences,
                       std::vector<TokenEvent>* events) = 0;
  // One decode step for prefilled, unfinished sequences; appends one event per sequence.
  virtual void Decode(const std::vector<SequenceId>& sequences,
                      std::vector<TokenEvent>* events) = 0;
  // Frees the sequence's slot. Unknown ids are ignored.
  virtual void Release(SequenceId sequence) = 0;
  // Usage, timings and FLOPs of an admitted sequence so far (zeros for unknown ids).
  virtual SequenceReport Report(SequenceId sequence) const {
    (void)sequence;
    return {};
  }
  // Memory held now (worker thread only, like the calls above).
  virtual EngineMemory Memory() const { return {}; }
  // flex: the selections of an admitted sequence so far (empty for unknown ids and other modes).
  virtual SelectionTrace Selections(SequenceId sequence) const {
    (void)sequence;
    return {};
  }
};

// The LLaVA engine over LibTorch (model/llava_engine.cc).
StatusOr<std::unique_ptr<Engine>> CreateLlavaEngine(const EngineOptions& options);

}  // namespace flexvqa
