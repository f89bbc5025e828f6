// Continuous batching over one Engine at decode-step granularity (as vLLM and TGI): requests join
// the batch at the next step through a prefill, finished, cancelled and expired ones leave at once
// and their slot is released. One worker thread owns the engine; Prepare runs on a bounded CPU pool
// beforehand. Submit, Drain and Stats are thread-safe. Submit takes ownership only on OK; after
// that the request's callback receives its items (deltas, then exactly one final item) from
// scheduler threads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "model/engine.h"
#include "model/status.h"
#include "server/batch_policy.h"
#include "server/selection_summary.h"
#include "server/thread_pool.h"

namespace flexvqa {

class ServerMetrics;  // server/metrics.h

using Clock = std::chrono::steady_clock;

struct RequestUsage {
  int prompt_tokens = 0;  // Image tokens included.
  int image_tokens = 0;
  int64_t selected_hr_tokens = 0;  // Flex models only: summed over FlexAttention layers and steps.
  int generated_tokens = 0;
  EncoderCacheUse encoder_cache = EncoderCacheUse::kNone;  // From the engine's SequenceReport.
};

// Milliseconds; see proto/flexvqa/v1/vqa.proto (Timings) for each phase's meaning.
struct RequestTimings {
  double queue_ms = 0;
  double preprocess_ms = 0;
  double vision_ms = 0;   // From the engine's SequenceReport.
  double prefill_ms = 0;  // From the engine's SequenceReport (vision excluded).
  double first_token_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
};

// One item on a request's channel: a delta (text and token ids), or the final item.
struct StreamItem {
  std::string text;
  std::vector<int32_t> token_ids;
  bool final = false;
  // Final item only.
  Status status;
  FinishReason reason = FinishReason::kNone;
  RequestUsage usage;
  RequestTimings timings;
  FlopCount flops;             // The engine's SequenceReport's; zeros when it does not count.
  SelectionSummary selection;  // flex with an image: where it looked; empty otherwise.
  bool reached_model = false;  // Admitted into the batch (a final message is worth sending).
};

// Called for every item of one request, never concurrently for the same request. Runs on a
// scheduler thread: it must be quick and must not call back into the Scheduler.
using ItemCallback = std::function<void(StreamItem item)>;

struct SubmitRequest {
  GenerationRequest request;
  Clock::time_point arrival = Clock::now();               // Start of the timings.
  Clock::time_point deadline = Clock::time_point::max();  // Past it: DEADLINE_EXCEEDED.
  ItemCallback on_item;
};

// The caller's hold on a submitted request.
class RequestHandle {
 public:
  // Thread-safe. The request ends at the worker's next step: CANCELLED after Cancel,
  // DEADLINE_EXCEEDED after Expire (gRPC cancels a call when its deadline passes: that is not the
  // client's doing, and must count as a latency failure). The first call wins.
  void Cancel() { Set(kCancelled); }
  void Expire() { Set(kExpired); }
  bool cancelled() const { return state_.load(std::memory_order_relaxed) == kCancelled; }
  bool expired() const { return state_.load(std::memory_order_relaxed) == kExpired; }

 private:
  enum State { kLive, kCancelled, kExpired };
  void Set(State state) {
    int live = kLive;
    state_.compare_exchange_strong(live, state, std::memory_order_relaxed);
  }
  std::atomic<int> state_{kLive};
};

// What one worker step produced, summed over its sequences, for the metrics: counted per step (not
// at completion) so that rates move during a long request. Token and FLOP figures are the engine's
// per-sequence reports minus what earlier steps already counted.
struct StepUsage {
  int prefill_sequences = 0;  // Sequences prefilled (admitted this step).
  int decode_sequences = 0;   // Sequences decoded one token.
  int64_t prompt_tokens = 0;  // Prompt tokens of the sequences prefilled (image tokens included).
  int64_t image_tokens = 0;
  int64_t generated_tokens = 0;  // Tokens emitted this step (stop tokens included).
  int64_t selected_hr_tokens = 0;
  FlopCount flops;
};

struct SchedulerStats {
  int running = 0;       // Sequences holding a KV slot.
  int queued = 0;        // Prepared, waiting for a slot.
  int preparing = 0;     // Waiting for or running on the preprocessing pool.
  int free_slots = 0;    // The engine's free slots after the last step.
  int64_t steps = 0;     // Worker steps run (a step: retire, admit, prefill, decode).
  int64_t accepted = 0;  // Submit calls that returned OK.
  int64_t finished = 0;  // Requests whose final item was sent.
  bool draining = false;
};

class Scheduler {
 public:
  // `engine` (and `metrics` when not null) must outlive the scheduler. Starts the worker and the
  // preprocessing pool. `metrics` receives each step's usage (batch sizes, tokens, FLOPs),
  // inter-token gaps and flex selections.
  Scheduler(Engine* engine, const SchedulerConfig& config, ServerMetrics* metrics = nullptr);
  // Drains with no grace time (everything still running ends UNAVAILABLE), then joins.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues the request for preprocessing and the batch. On OK moves *request out and returns its
  // handle; otherwise leaves *request untouched and its callback is never called:
  // RESOURCE_EXHAUSTED when max_queued requests are waiting, UNAVAILABLE when draining. Errors
  // found later (INVALID_ARGUMENT from Prepare, DEADLINE_EXCEEDED, device errors) arrive as the
  // final item.
  StatusOr<std::shared_ptr<RequestHandle>> Submit(std::unique_ptr<SubmitRequest>& request);

  // Stops accepting (Submit: UNAVAILABLE), lets accepted requests run until `deadline`, then ends
  // the rest with UNAVAILABLE. Returns when every accepted request has had its final item.
  // Idempotent.
  void Drain(Clock::time_point deadline);

  SchedulerStats Stats() const;
  // When the worker's current step (retire, admit, prefill, decode) started; nullopt while it
  // waits for work. Any thread: the liveness watchdog reads it.
  std::optional<Clock::time_point> StepStartedAt() const;
  // Waits until `predicate(Stats())` holds (checked after every step and queue change) or `timeout`
  // passes; returns whether it holds. For tests and Drain.
  bool WaitFor(const std::function<bool(const SchedulerStats&)>& predicate,
               Clock::duration timeout) const;

 private:
  struct Sequence;
  using SequencePtr = std::unique_ptr<Sequence>;

  void PrepareOne(SequencePtr sequence);
  void WorkerLoop();
  // The named parts of one step, in order. Worker thread only.
  void RetireRunning();
  std::vector<SequencePtr> TakeAdmissions(std::vector<std::pair<SequencePtr, Status>>* expired);
  void AdmitAndPrefill(std::vector<SequencePtr> admitted);
  void DecodeRunning();
  void ApplyEvents(const std::vector<TokenEvent>& events);
  // Takes running_[index]'s report, releases its slot, sends its final item and removes it.
  void Retire(size_t index, Status status, FinishReason reason);
  // Adds to step_usage_ what `report` holds beyond what the sequence's earlier steps counted.
  void CountProgress(Sequence& sequence, const SequenceReport& report);
  void PublishStep();
  // Sends the final item. Any scheduler thread; the sequence must no longer hold a slot.
  void Finish(Sequence& sequence, Status status, FinishReason reason);
  // Why a waiting or running sequence must end now, or OK.
  Status EndReason(const Sequence& sequence, Clock::time_point now, bool queued) const;
  bool WaitUntil(const std::function<bool(const SchedulerStats&)>& predicate,
                 Clock::time_point deadline) const;

  Engine* const engine_;
  const SchedulerConfig config_;
  ServerMetrics* const metrics_;  // May be null.

  mutable std::mutex mu_;
  mutable std::condition_variable work_cv_;   // Worker: new work or stop.
  mutable std::condition_variable stats_cv_;  // WaitFor: stats changed.
  std::deque<SequencePtr> queue_;             // Prepared, waiting for a slot. Guarded by mu_.
  SchedulerStats stats_;                      // Guarded by mu_.
  bool draining_ = false;                     // Guarded by mu_.
  std::atomic<bool> abort_all_{false};        // Drain's deadline passed: end everything.
  bool stop_ = false;                         // Guarded by mu_.

  // Clock::time_point::rep of the current step's start; 0 between steps. Written by the worker.
  std::atomic<Clock::rep> step_started_{0};
  std::vector<SequencePtr> running_;  // Worker thread only.
  int64_t step_ = 0;                  // Worker thread only.
  StepUsage step_usage_;              // Worker thread only: this step's, for the metrics.
  ThreadPool pool_;
  std::thread worker_;
};

}  // namespace flexvqa
