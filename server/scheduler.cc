#include "server/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "server/heap.h"
#include "server/logging.h"
#include "server/metrics.h"

namespace flexvqa {

namespace {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

bool IsSet(Clock::time_point t) { return t != Clock::time_point{}; }

// Cancelled by the client or ended by the drain: CANCELLED; anything else is an error.
FinishReason ReasonFor(const Status& status) {
  const bool cancelled =
      status.code() == StatusCode::kCancelled || status.code() == StatusCode::kUnavailable;
  return cancelled ? FinishReason::kCancelled : FinishReason::kError;
}

}  // namespace

struct Scheduler::Sequence {
  SubmitRequest submit;
  std::shared_ptr<RequestHandle> handle;
  std::shared_ptr<const PreparedRequest> prepared;
  SequenceId id = -1;  // Engine sequence id once admitted.
  int64_t prefill_step = -1;
  int generated = 0;
  SequenceReport report;       // The engine's, taken just before Release.
  SelectionSummary selection;  // Likewise (flex, with an image).
  SequenceReport counted;      // The part of the engine's report already in the metrics.
  Clock::time_point prepare_start, prepare_end, admitted, first_token, last_token;
};

Scheduler::Scheduler(Engine* engine, const SchedulerConfig& config, ServerMetrics* metrics)
    : engine_(engine), config_(config), metrics_(metrics), pool_(config.preprocess_threads) {
  stats_.free_slots = engine_->Info().max_sequences;
  worker_ = std::thread([this] { WorkerLoop(); });
}

Scheduler::~Scheduler() {
  Drain(Clock::now());
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  worker_.join();
}

StatusOr<std::shared_ptr<RequestHandle>> Scheduler::Submit(
    std::unique_ptr<SubmitRequest>& request) {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return UnavailableError("the server is shutting down; retry on another replica");
  if (stats_.preparing + static_cast<int>(queue_.size()) >= config_.max_queued) {
    return ResourceExhaustedError("server overloaded: " + std::to_string(config_.max_queued) +
                                  " requests already waiting (max_queued); retry later");
  }
  auto sequence = std::make_unique<Sequence>();
  sequence->submit = std::move(*request);
  request.reset();
  sequence->handle = std::make_shared<RequestHandle>();
  std::shared_ptr<RequestHandle> handle = sequence->handle;
  ++stats_.preparing;
  ++stats_.accepted;
  // std::function needs a copyable callable: the raw pointer carries the ownership across.
  pool_.Post([this, raw = sequence.release()] { PrepareOne(SequencePtr(raw)); });
  return handle;
}

void Scheduler::PrepareOne(SequencePtr sequence) {
  sequence->prepare_start = Clock::now();
  Status end = EndReason(*sequence, sequence->prepare_start, /*queued=*/true);
  StatusOr<std::shared_ptr<const PreparedRequest>> prepared =
      end.ok() ? engine_->Prepare(sequence->submit.request) : end;
  sequence->prepare_end = Clock::now();
  sequence->submit.request = GenerationRequest();  // The image bytes are no longer needed.
  if (!prepared.ok()) {
    Finish(*sequence, prepared.status(), ReasonFor(prepared.status()));
    std::lock_guard<std::mutex> lock(mu_);
    --stats_.preparing;
    stats_cv_.notify_all();
    return;
  }
  sequence->prepared = std::move(prepared).value();
  {
    std::lock_guard<std::mutex> lock(mu_);
    --stats_.preparing;
    queue_.push_back(std::move(sequence));
    stats_.queued = static_cast<int>(queue_.size());
  }
  work_cv_.notify_one();
  stats_cv_.notify_all();
}

Status Scheduler::EndReason(const Sequence& sequence, Clock::time_point now, bool queued) const {
  if (abort_all_.load()) {
    return UnavailableError("the server shut down before the request finished (drain time over)");
  }
  // The deadline first: gRPC also cancels the call when it passes.
  if (sequence.handle->expired() || now >= sequence.submit.deadline) {
    return DeadlineExceededError("the call's deadline passed");
  }
  if (sequence.handle->cancelled()) return CancelledError("cancelled by the client");
  if (queued && now - sequence.submit.arrival > config_.max_queue_wait) {
    return ResourceExhaustedError("server overloaded: waited more than " +
                                  std::to_string(config_.max_queue_wait.count()) +
                                  " ms for a batch slot (max_queue_wait); retry later");
  }
  return Status::Ok();
}

void Scheduler::WorkerLoop() {
  bool worked_since_release = false;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      const auto has_work = [this] { return stop_ || !queue_.empty() || !running_.empty(); };
      if (worked_since_release && config_.release_heap_when_idle && !has_work()) {
        // Once per burst, off the lock: a trim walks every arena (milliseconds).
        lock.unlock();
        const Clock::time_point start = Clock::now();
        const bool released = ReleaseFreeHeap();
        Logger("scheduler")
            ->debug("idle: released free heap ({}) in {:.1f} ms", released,
                    Ms(Clock::now() - start));
        worked_since_release = false;
        lock.lock();
      }
      work_cv_.wait(lock, has_work);
      if (stop_ && queue_.empty() && running_.empty()) return;
    }
    worked_since_release = true;
    ++step_;
    step_started_.store(Clock::now().time_since_epoch().count());
    RetireRunning();
    std::vector<std::pair<SequencePtr, Status>> expired;
    std::vector<SequencePtr> admitted = TakeAdmissions(&expired);
    for (auto& [sequence, status] : expired) Finish(*sequence, status, ReasonFor(status));
    const bool idle = admitted.empty() && running_.empty();
    AdmitAndPrefill(std::move(admitted));
    DecodeRunning();
    PublishStep();
    step_started_.store(0);
    if (idle) {
      // Requests wait but no slot is free although nothing runs (an engine that leaks slots): do
      // not spin; their queue wait still expires.
      std::unique_lock<std::mutex> lock(mu_);
      if (!queue_.empty()) {
        work_cv_.wait_for(lock, std::chrono::milliseconds(10), [this] { return stop_; });
      }
    }
  }
}

void Scheduler::RetireRunning() {
  const Clock::time_point now = Clock::now();
  for (size_t i = 0; i < running_.size();) {
    Status end = EndReason(*running_[i], now, /*queued=*/false);
    if (end.ok()) {
      ++i;
      continue;
    }
    Retire(i, end, ReasonFor(end));
  }
}

std::vector<Scheduler::SequencePtr> Scheduler::TakeAdmissions(
    std::vector<std::pair<SequencePtr, Status>>* expired) {
  const int free_slots = engine_->FreeSlots();
  const Clock::time_point now = Clock::now();
  std::vector<SequencePtr> admitted;
  std::lock_guard<std::mutex> lock(mu_);
  BatchState state;
  state.running = static_cast<int>(running_.size());
  state.free_slots = free_slots;
  for (auto it = queue_.begin(); it != queue_.end();) {
    Status end = EndReason(**it, now, /*queued=*/true);
    if (end.ok()) {
      state.queued_prompt_tokens.push_back((*it)->prepared->prompt_tokens);
      ++it;
    } else {
      expired->emplace_back(std::move(*it), std::move(end));
      it = queue_.erase(it);
    }
  }
  const int count = PlanAdmissions(state, config_);
  for (int i = 0; i < count; ++i) {
    admitted.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  stats_.queued = static_cast<int>(queue_.size());
  // Counted as running from here so that Drain never sees them in neither place.
  stats_.running = state.running + count;
  return admitted;
}

void Scheduler::AdmitAndPrefill(std::vector<SequencePtr> admitted) {
  std::vector<SequenceId> ids;
  for (SequencePtr& sequence : admitted) {
    StatusOr<SequenceId> id = engine_->Admit(sequence->prepared);
    if (!id.ok()) {
      Finish(*sequence, id.status(), FinishReason::kError);
      continue;
    }
    sequence->id = *id;
    sequence->admitted = Clock::now();
    sequence->prefill_step = step_;
    step_usage_.prompt_tokens += sequence->prepared->prompt_tokens;
    step_usage_.image_tokens += sequence->prepared->image_tokens;
    ids.push_back(*id);
    running_.push_back(std::move(sequence));
  }
  if (ids.empty()) return;
  std::vector<TokenEvent> events;
  const Clock::time_point start = Clock::now();
  engine_->Prefill(ids, &events);
  step_usage_.prefill_sequences = static_cast<int>(ids.size());
  Logger("scheduler")
      ->debug("step {}: prefilled {} sequences in {:.2f} ms", step_, ids.size(),
              Ms(Clock::now() - start));
  ApplyEvents(events);
}

void Scheduler::DecodeRunning() {
  std::vector<SequenceId> ids;
  for (const SequencePtr& sequence : running_) {
    if (sequence->prefill_step < step_) ids.push_back(sequence->id);
  }
  if (ids.empty()) return;
  std::vector<TokenEvent> events;
  engine_->Decode(ids, &events);
  step_usage_.decode_sequences = static_cast<int>(ids.size());
  ApplyEvents(events);
}

void Scheduler::ApplyEvents(const std::vector<TokenEvent>& events) {
  const Clock::time_point now = Clock::now();
  for (const TokenEvent& event : events) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [&](const SequencePtr& s) { return s->id == event.sequence; });
    if (it == running_.end()) {
      Logger("scheduler")->error("engine event for unknown sequence {}", event.sequence);
      continue;
    }
    Sequence& sequence = **it;
    if (event.token_id >= 0) {
      ++sequence.generated;
      ++step_usage_.generated_tokens;
      if (!IsSet(sequence.first_token)) sequence.first_token = now;
      if (metrics_ != nullptr && IsSet(sequence.last_token)) {
        metrics_->ObserveInterToken(
            std::chrono::duration<double>(now - sequence.last_token).count());
      }
      sequence.last_token = now;
    }
    if (event.token_id >= 0 || !event.text.empty()) {
      StreamItem delta;
      delta.text = event.text;
      if (event.token_id >= 0) delta.token_ids.push_back(event.token_id);
      sequence.submit.on_item(std::move(delta));
    }
    if (!event.finished) continue;
    Status status = event.status;
    if (event.reason == FinishReason::kError && status.ok()) {
      status = InternalError("the engine ended the sequence with an error but no status");
    }
    Retire(static_cast<size_t>(it - running_.begin()), status, event.reason);
  }
}

void Scheduler::Retire(size_t index, Status status, FinishReason reason) {
  SequencePtr sequence = std::move(running_[index]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
  sequence->report = engine_->Report(sequence->id);  // Valid until Release.
  CountProgress(*sequence, sequence->report);
  if (sequence->prepared->image_tokens > 0) {
    const SelectionTrace trace = engine_->Selections(sequence->id);  // Empty unless it selected.
    sequence->selection = SummarizeSelections(trace);
    if (metrics_ != nullptr) metrics_->ObserveSelection(trace);
  }
  engine_->Release(sequence->id);
  Finish(*sequence, std::move(status), reason);
}

void Scheduler::CountProgress(Sequence& sequence, const SequenceReport& report) {
  step_usage_.selected_hr_tokens += report.selected_hr_tokens - sequence.counted.selected_hr_tokens;
  for (int p = 0; p < FlopCount::kNumPhases; ++p) {
    for (int c = 0; c < FlopCount::kNumComponents; ++c) {
      step_usage_.flops.flops[p][c] +=
          report.flops.flops[p][c] - sequence.counted.flops.flops[p][c];
    }
  }
  sequence.counted = report;
}

void Scheduler::PublishStep() {
  const int free_slots = engine_->FreeSlots();
  if (metrics_ != nullptr) {
    for (const SequencePtr& sequence : running_) {
      CountProgress(*sequence, engine_->Report(sequence->id));
    }
    metrics_->ObserveStep(step_usage_);
    metrics_->SetMemory(engine_->Memory());
  }
  step_usage_ = StepUsage();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
    stats_.running = static_cast<int>(running_.size());
    stats_.free_slots = free_slots;
  }
  stats_cv_.notify_all();
}

void Scheduler::Finish(Sequence& sequence, Status status, FinishReason reason) {
  const Clock::time_point now = Clock::now();
  const Clock::time_point arrival = sequence.submit.arrival;
  StreamItem item;
  item.final = true;
  item.status = std::move(status);
  item.reason = reason;
  item.reached_model = sequence.id >= 0;
  if (sequence.prepared) {
    item.usage.prompt_tokens = sequence.prepared->prompt_tokens;
    item.usage.image_tokens = sequence.prepared->image_tokens;
  }
  // The tokens streamed, counted here: an engine that does not report them still gets them right.
  item.usage.generated_tokens = sequence.generated;
  item.usage.selected_hr_tokens = sequence.report.selected_hr_tokens;
  item.usage.encoder_cache = sequence.report.encoder_cache;
  item.flops = sequence.report.flops;
  item.selection = std::move(sequence.selection);
  RequestTimings& t = item.timings;
  if (IsSet(sequence.prepare_start)) {
    t.queue_ms = Ms(sequence.prepare_start - arrival);
    t.preprocess_ms = Ms(sequence.prepare_end - sequence.prepare_start);
  }
  if (IsSet(sequence.admitted)) t.queue_ms += Ms(sequence.admitted - sequence.prepare_end);
  t.vision_ms = sequence.report.vision_ms;
  t.prefill_ms = sequence.report.prefill_ms;
  if (IsSet(sequence.first_token)) {
    t.first_token_ms = Ms(sequence.first_token - arrival);
    t.decode_ms = Ms(sequence.last_token - sequence.first_token);
  }
  t.total_ms = Ms(now - arrival);
  sequence.submit.on_item(std::move(item));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.finished;
  }
  stats_cv_.notify_all();
}

void Scheduler::Drain(Clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    stats_.draining = true;
  }
  stats_cv_.notify_all();  // WaitFor(draining): no step may come to wake it for a while.
  auto all_finished = [](const SchedulerStats& s) { return s.finished == s.accepted; };
  if (WaitUntil(all_finished, deadline)) return;
  Logger("scheduler")->warn("drain time over: ending the requests still running");
  abort_all_.store(true);
  work_cv_.notify_all();
  WaitUntil(all_finished, Clock::time_point::max());
}

std::optional<Clock::time_point> Scheduler::StepStartedAt() const {
  const Clock::rep started = step_started_.load();
  if (started == 0) return std::nullopt;
  return Clock::time_point(Clock::duration(started));
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool Scheduler::WaitFor(const std::function<bool(const SchedulerStats&)>& predicate,
                        Clock::duration timeout) const {
  return WaitUntil(predicate, Clock::now() + timeout);
}

bool Scheduler::WaitUntil(const std::function<bool(const SchedulerStats&)>& predicate,
                          Clock::time_point deadline) const {
  std::unique_lock<std::mutex> lock(mu_);
  auto holds = [&] { return predicate(stats_); };
  if (deadline == Clock::time_point::max()) {
    stats_cv_.wait(lock, holds);
    return true;
  }
  return stats_cv_.wait_until(lock, deadline, holds);
}

}  // namespace flexvqa
