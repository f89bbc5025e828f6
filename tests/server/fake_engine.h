// A deterministic Engine for scheduler and service tests (as leveldb's in-memory Env): no model, no
// torch. The next token is a hash of the sequence's own prompt, seed (when sampling) and tokens so
// far, so results never depend on what else is batched. Prepare validates the request with the
// real engine's own function (model/request_validation.h), then image headers and limits and the
// prompt length, and is thread-safe. Report counts made-up but exact FLOPs (kFake*Flops) and, in
// "flex" mode, selected high-res tokens that fall as the threshold rises. The rest is worker-thread
// only, except the counters, which any thread may read. Hooks and failure injection make timing and
// errors controllable without sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/engine.h"

namespace flexvqa::testing {

// The fake's FLOP model: per image (vision), per prompt token (prefill), per decode step (decode).
inline constexpr double kFakeVisionFlops = 5000;
inline constexpr double kFakePrefillFlopsPerToken = 100;
inline constexpr double kFakeDecodeFlopsPerStep = 10;
// "flex" mode: selected_hr_tokens = image_tokens * (255 - threshold) / 255 per prefill; this is the
// threshold when a request leaves it unset.
inline constexpr int kFakeDefaultThreshold = 51;

struct FakeEngineOptions {
  int max_sequences = 8;
  int context_length = 512;
  int vocab_size = 64;  // Token 0 is end-of-sequence.
  int num_image_tokens = 16;
  std::string mode = "full";
  std::string chat_template = "llava_hf";  // Reported in ModelInfo only.
  EngineLimits limits;
  // Worker thread: slept at the start of every Prefill and Decode call (load tests).
  std::chrono::microseconds step_delay{0};
  // Worker thread: called at the start of every Prefill and Decode call (tests block steps with
  // it).
  std::function<void()> step_hook;
  // Pool threads: called at the start of Prepare with the request (tests stall one image with it).
  std::function<void(const GenerationRequest&)> prepare_hook;
  // A sequence whose question contains this fails with RESOURCE_EXHAUSTED (device out of memory)
  // when it has generated oom_after_tokens tokens; the others in the batch carry on.
  std::string oom_marker = "[oom]";
  int oom_after_tokens = 2;
};

class FakeEngine : public Engine {
 public:
  explicit FakeEngine(FakeEngineOptions options = {});
  ~FakeEngine() override;

  const ModelInfo& Info() const override { return info_; }
  StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(
      const GenerationRequest& request) const override;
  int FreeSlots() const override;
  StatusOr<SequenceId> Admit(std::shared_ptr<const PreparedRequest> request) override;
  void Prefill(const std::vector<SequenceId>& sequences, std::vector<TokenEvent>* events) override;
  void Decode(const std::vector<SequenceId>& sequences, std::vector<TokenEvent>* events) override;
  void Release(SequenceId sequence) override;
  SequenceReport Report(SequenceId sequence) const override;

  // Observations; any thread.
  int64_t prefill_calls() const { return prefill_calls_.load(); }
  int64_t decode_calls() const { return decode_calls_.load(); }
  int max_batch_seen() const { return max_batch_seen_.load(); }
  int resident() const { return resident_.load(); }  // Admitted and not released.
  int64_t released() const { return released_.load(); }

  // The text a token id stands for ("" for end-of-sequence).
  static std::string Piece(int32_t token);

 private:
  struct Sequence;
  TokenEvent Step(SequenceId id, bool prefill);

  FakeEngineOptions options_;
  ModelInfo info_;
  std::map<SequenceId, std::unique_ptr<Sequence>> sequences_;
  SequenceId next_id_ = 1;
  std::atomic<int64_t> prefill_calls_{0};
  std::atomic<int64_t> decode_calls_{0};
  std::atomic<int> max_batch_seen_{0};
  std::atomic<int> resident_{0};
  std::atomic<int64_t> released_{0};
};

// The engine's own output for one request, run alone through Prepare/Admit/Prefill/Decode/Release
// on the calling thread: the reference a served answer must equal.
struct DirectResult {
  std::string text;
  std::vector<int32_t> token_ids;
  FinishReason reason = FinishReason::kNone;
  SelectionTrace selections;  // Engine::Selections just before Release.
};
StatusOr<DirectResult> GenerateDirect(Engine& engine, const GenerationRequest& request);

}  // namespace flexvqa::testing
