#include "tests/server/fake_engine.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "model/request_validation.h"

namespace flexvqa::testing {

namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser.
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Hash(const std::string& s, uint64_t h) {
  for (unsigned char c : s) h = Mix(h ^ c);
  return h;
}

uint32_t BigEndian32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

// Reads width and height from a PNG or JPEG header, as the real decoder does before decoding.
Status SniffImage(const ImageInput& image, const EngineLimits& limits) {
  const std::string& b = image.bytes;
  if (b.empty()) return InvalidArgumentError("image is empty (zero bytes)");
  if (static_cast<int64_t>(b.size()) > limits.max_image_bytes) {
    return InvalidArgumentError("image has " + std::to_string(b.size()) + " bytes; the limit is " +
                                std::to_string(limits.max_image_bytes));
  }
  static const char kPng[] = "\x89PNG\r\n\x1a\n";
  int64_t width = 0, height = 0;
  std::string type;
  if (b.size() >= 8 && std::memcmp(b.data(), kPng, 8) == 0) {
    type = "image/png";
    if (b.size() < 33 || b.compare(12, 4, "IHDR") != 0) {
      return InvalidArgumentError("corrupt PNG: no IHDR header");
    }
    width = BigEndian32(b, 16);
    height = BigEndian32(b, 20);
    if (b.size() < 45 || b.compare(b.size() - 8, 4, "IEND") != 0) {
      return InvalidArgumentError("truncated PNG: no IEND chunk");
    }
  } else if (b.size() >= 3 && uint8_t(b[0]) == 0xff && uint8_t(b[1]) == 0xd8 &&
             uint8_t(b[2]) == 0xff) {
    type = "image/jpeg";
    size_t at = 2;
    while (at + 9 < b.size() && uint8_t(b[at]) == 0xff) {
      const uint8_t marker = uint8_t(b[at + 1]);
      const size_t length = (size_t(uint8_t(b[at + 2])) << 8) | uint8_t(b[at + 3]);
      if (marker >= 0xc0 && marker <= 0xc2) {
        height = (int64_t(uint8_t(b[at + 5])) << 8) | uint8_t(b[at + 6]);
        width = (int64_t(uint8_t(b[at + 7])) << 8) | uint8_t(b[at + 8]);
        break;
      }
      at += 2 + length;
    }
    if (width == 0 || height == 0) return InvalidArgumentError("corrupt JPEG: no frame header");
    if (uint8_t(b[b.size() - 2]) != 0xff || uint8_t(b[b.size() - 1]) != 0xd9) {
      return InvalidArgumentError("truncated JPEG: no end-of-image marker");
    }
  } else {
    return InvalidArgumentError("image is neither JPEG nor PNG");
  }
  if (!image.mime_type.empty() && image.mime_type != type) {
    return InvalidArgumentError("image mime_type is " + image.mime_type + " but the bytes are " +
                                type);
  }
  if (width <= 0 || height <= 0) return InvalidArgumentError("image has a zero dimension");
  if (width * height > limits.max_image_pixels) {
    return InvalidArgumentError("image is " + std::to_string(width) + "x" + std::to_string(height) +
                                " pixels; the limit is " + std::to_string(limits.max_image_pixels) +
                                " pixels");
  }
  return Status::Ok();
}

class FakePrepared : public PreparedRequest {
 public:
  uint64_t state = 0;
  bool oom = false;
  int64_t selected_hr_tokens = 0;
};

double MsSince(std::chrono::steady_clock::time_point start) {
  const auto elapsed = std::chrono::steady_clock::now() - start;
  return std::chrono::duration<double, std::milli>(elapsed).count();
}

constexpr const char* kWords[] = {"a",   "cat",  "sits", "on",    "the",  "red",  "mat",  "and",
                                  "dog", "runs", "in",   "green", "park", "with", "blue", "ball"};

}  // namespace

struct FakeEngine::Sequence {
  std::shared_ptr<const FakePrepared> request;
  uint64_t state = 0;
  int generated = 0;
  std::string text;
  size_t emitted = 0;
  bool prefilled = false;
  bool finished = false;
  SequenceReport report;
};

FakeEngine::FakeEngine(FakeEngineOptions options) : options_(std::move(options)) {
  info_.name = "fake";
  info_.mode = options_.mode;
  // As the real engine reports it: only FlexAttention takes a selection threshold.
  info_.supports_selection_threshold = options_.mode == "flex";
  info_.chat_template = options_.chat_template;
  info_.dtype = "float32";
  info_.device = "cpu";
  info_.context_length = options_.context_length;
  info_.vocab_size = options_.vocab_size;
  info_.num_image_tokens = options_.num_image_tokens;
  info_.max_sequences = options_.max_sequences;
  info_.limits = options_.limits;
}

FakeEngine::~FakeEngine() = default;

std::string FakeEngine::Piece(int32_t token) {
  if (token == 0) return "";
  return std::string(kWords[token % 16]) + (token % 5 == 0 ? ". " : " ");
}

StatusOr<std::shared_ptr<const PreparedRequest>> FakeEngine::Prepare(
    const GenerationRequest& request) const {
  if (options_.prepare_hook) options_.prepare_hook(request);
  // The real engine's checks, in its order (model/request_validation.h).
  FLEXVQA_RETURN_IF_ERROR(ValidateRequest(request, info_, info_.supports_selection_threshold));
  auto prepared = std::make_shared<FakePrepared>();
  int text_tokens = 0;
  uint64_t state = 17;
  for (const ChatTurn& turn : request.turns) {
    text_tokens += 4 + static_cast<int>((turn.text.size() + 3) / 4);
    state = Hash(turn.text, state ^ static_cast<uint64_t>(turn.role));
  }
  if (request.image) {
    FLEXVQA_RETURN_IF_ERROR(SniffImage(*request.image, options_.limits));
    prepared->image_tokens = options_.num_image_tokens;
    state = Hash(request.image->bytes, state);
  }
  prepared->prompt_tokens = text_tokens + prepared->image_tokens;
  const int max_prompt = options_.limits.max_prompt_tokens > 0 ? options_.limits.max_prompt_tokens
                                                               : options_.context_length - 1;
  if (prepared->prompt_tokens > max_prompt) {
    return InvalidArgumentError("prompt has " + std::to_string(prepared->prompt_tokens) +
                                " tokens; the model accepts at most " + std::to_string(max_prompt));
  }
  if (info_.supports_selection_threshold) {
    const int threshold = request.selection_threshold.value_or(kFakeDefaultThreshold);
    prepared->selected_hr_tokens = int64_t{prepared->image_tokens} * (255 - threshold) / 255;
  }
  prepared->sampling = request.sampling;
  // Greedy decoding ignores the seed, as the real sampler does.
  prepared->state = request.sampling.temperature > 0 ? Mix(state ^ request.sampling.seed) : state;
  prepared->oom = !options_.oom_marker.empty() &&
                  request.turns.back().text.find(options_.oom_marker) != std::string::npos;
  return std::shared_ptr<const PreparedRequest>(std::move(prepared));
}

int FakeEngine::FreeSlots() const {
  return options_.max_sequences - static_cast<int>(sequences_.size());
}

StatusOr<SequenceId> FakeEngine::Admit(std::shared_ptr<const PreparedRequest> request) {
  auto prepared = std::dynamic_pointer_cast<const FakePrepared>(request);
  if (!prepared) return InvalidArgumentError("not a request prepared by this engine");
  if (FreeSlots() <= 0) return ResourceExhaustedError("no free KV-cache slot");
  auto sequence = std::make_unique<Sequence>();
  sequence->request = prepared;
  sequence->state = prepared->state;
  sequence->report.prompt_tokens = prepared->prompt_tokens;
  sequence->report.image_tokens = prepared->image_tokens;
  const SequenceId id = next_id_++;
  sequences_[id] = std::move(sequence);
  resident_.store(static_cast<int>(sequences_.size()));
  return id;
}

TokenEvent FakeEngine::Step(SequenceId id, bool prefill) {
  TokenEvent event;
  event.sequence = id;
  auto it = sequences_.find(id);
  if (it == sequences_.end() || it->second->finished || it->second->prefilled == prefill) {
    event.finished = true;
    event.reason = FinishReason::kError;
    event.status = InternalError("fake engine misuse: sequence " + std::to_string(id) +
                                 (prefill ? " prefilled twice or unknown" : " not decodable"));
    return event;
  }
  Sequence& s = *it->second;
  s.prefilled = true;
  const SamplingParams& sampling = s.request->sampling;
  if (s.request->oom && s.generated >= options_.oom_after_tokens) {
    s.finished = true;
    event.finished = true;
    event.reason = FinishReason::kError;
    event.status = ResourceExhaustedError("out of device memory while decoding this request");
    return event;
  }
  s.state = Mix(s.state + static_cast<uint64_t>(s.generated));
  const int32_t token = static_cast<int32_t>(s.state % static_cast<uint64_t>(info_.vocab_size));
  ++s.generated;
  SequenceReport& report = s.report;
  report.generated_tokens = s.generated;
  if (prefill) {
    if (s.request->image_tokens > 0) {
      report.flops.flops[FlopCount::kVision][FlopCount::kOther] = kFakeVisionFlops;
    }
    report.flops.flops[FlopCount::kPrefill][FlopCount::kOther] =
        kFakePrefillFlopsPerToken * s.request->prompt_tokens;
    report.selected_hr_tokens = s.request->selected_hr_tokens;
  } else {
    report.flops.flops[FlopCount::kDecode][FlopCount::kOther] += kFakeDecodeFlopsPerStep;
  }
  event.token_id = token;
  s.text += Piece(token);
  size_t visible = s.text.size();
  if (token == 0 && !sampling.ignore_eos) {
    event.finished = true;
    event.reason = FinishReason::kStop;
  }
  for (const std::string& stop : sampling.stop) {
    if (s.text.size() >= stop.size() &&
        s.text.compare(s.text.size() - stop.size(), stop.size(), stop) == 0) {
      visible = std::max(s.emitted, s.text.size() - stop.size());
      event.finished = true;
      event.reason = FinishReason::kStop;
      break;
    }
  }
  if (!event.finished && (s.generated >= sampling.max_new_tokens ||
                          s.request->prompt_tokens + s.generated >= info_.context_length)) {
    event.finished = true;
    event.reason = FinishReason::kLength;
  }
  event.text = s.text.substr(s.emitted, visible - s.emitted);
  s.emitted = visible;
  s.finished = event.finished;
  return event;
}

void FakeEngine::Prefill(const std::vector<SequenceId>& sequences,
                         std::vector<TokenEvent>* events) {
  if (options_.step_hook) options_.step_hook();
  const auto start = std::chrono::steady_clock::now();
  if (options_.step_delay.count() > 0) std::this_thread::sleep_for(options_.step_delay);
  ++prefill_calls_;
  for (SequenceId id : sequences) events->push_back(Step(id, /*prefill=*/true));
  const double ms = MsSince(start);
  for (SequenceId id : sequences) {
    auto it = sequences_.find(id);
    if (it == sequences_.end()) continue;
    // Half "vision" for a request with an image, as the real engine splits its prefill time.
    const bool image = it->second->request->image_tokens > 0;
    it->second->report.vision_ms = image ? ms / 2 : 0;
    it->second->report.prefill_ms = image ? ms / 2 : ms;
  }
}

void FakeEngine::Decode(const std::vector<SequenceId>& sequences, std::vector<TokenEvent>* events) {
  if (options_.step_hook) options_.step_hook();
  const auto start = std::chrono::steady_clock::now();
  if (options_.step_delay.count() > 0) std::this_thread::sleep_for(options_.step_delay);
  ++decode_calls_;
  const int batch = static_cast<int>(sequences.size());
  int seen = max_batch_seen_.load();
  while (batch > seen && !max_batch_seen_.compare_exchange_weak(seen, batch)) {
  }
  for (SequenceId id : sequences) events->push_back(Step(id, /*prefill=*/false));
  const double ms = MsSince(start);
  for (SequenceId id : sequences) {
    auto it = sequences_.find(id);
    if (it != sequences_.end()) it->second->report.decode_ms += ms;
  }
}

SequenceReport FakeEngine::Report(SequenceId sequence) const {
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? SequenceReport() : it->second->report;
}

void FakeEngine::Release(SequenceId sequence) {
  if (sequences_.erase(sequence) > 0) ++released_;
  resident_.store(static_cast<int>(sequences_.size()));
}

StatusOr<DirectResult> GenerateDirect(Engine& engine, const GenerationRequest& request) {
  FLEXVQA_ASSIGN_OR_RETURN(std::shared_ptr<const PreparedRequest> prepared,
                           engine.Prepare(request));
  FLEXVQA_ASSIGN_OR_RETURN(SequenceId id, engine.Admit(prepared));
  DirectResult result;
  std::vector<TokenEvent> events;
  engine.Prefill({id}, &events);
  while (true) {
    for (const TokenEvent& event : events) {
      if (event.token_id >= 0) result.token_ids.push_back(event.token_id);
      result.text += event.text;
      if (event.finished) {
        result.selections = engine.Selections(id);
        engine.Release(id);
        if (!event.status.ok()) return event.status;
        result.reason = event.reason;
        return result;
      }
    }
    events.clear();
    engine.Decode({id}, &events);
  }
}

}  // namespace flexvqa::testing
