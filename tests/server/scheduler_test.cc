// The scheduler over the fake engine: continuous batching keeps results, cancel/deadline/OOM/drain
// retire exactly the sequences concerned, admission control answers at once. Synchronisation is by
// futures, condition variables and Scheduler::WaitFor, never by sleeping.
#include "server/scheduler.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <list>
#include <mutex>
#include <optional>

#include "tests/server/fake_engine.h"
#include "tests/server/test_images.h"

namespace flexvqa {
namespace {

using testing::FakeEngine;
using testing::FakeEngineOptions;
using testing::GenerateDirect;
using namespace std::chrono_literals;

constexpr auto kWait = 10s;  // Generous upper bound for anything that must happen.

// Receives one request's items.
class Collector {
 public:
  ItemCallback Callback() {
    return [this](StreamItem item) {
      std::lock_guard<std::mutex> lock(mu_);
      if (item.final) {
        final_ = std::move(item);
      } else {
        text_ += item.text;
        ids_.insert(ids_.end(), item.token_ids.begin(), item.token_ids.end());
      }
      cv_.notify_all();
    };
  }
  bool WaitFinal(Clock::duration timeout = kWait) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return final_.has_value(); });
  }
  bool WaitTokens(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return ids_.size() >= n || final_.has_value(); });
  }
  bool has_final() {
    std::lock_guard<std::mutex> lock(mu_);
    return final_.has_value();
  }
  const StreamItem& final_item() const { return *final_; }
  const std::string& text() const { return text_; }
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  std::vector<int32_t> ids_;
  std::optional<StreamItem> final_;
};

// Blocks the engine's steps (or Prepare calls) until opened.
class Gate {
 public:
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    ++entered_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  bool WaitEntered(int n = 1) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return entered_ >= n; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  bool open_ = false;
};

// Lets the engine run a counted number of Prefill/Decode calls.
class Stepper {
 public:
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    blocked_ = allowed_ == 0 && !open_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return allowed_ > 0 || open_; });
    blocked_ = false;
    if (!open_) --allowed_;
  }
  void Allow(int steps) {
    std::lock_guard<std::mutex> lock(mu_);
    allowed_ += steps;
    blocked_ = false;
    cv_.notify_all();
  }
  // Waits until the worker has used every allowed step and waits for more.
  bool WaitBlocked() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return blocked_; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int allowed_ = 0;
  bool blocked_ = false;
  bool open_ = false;
};

GenerationRequest Question(const std::string& text, int max_new_tokens = 32, uint64_t seed = 0,
                           float temperature = 0) {
  GenerationRequest request;
  request.turns.push_back({ChatTurn::Role::kUser, text});
  request.sampling.max_new_tokens = max_new_tokens;
  request.sampling.seed = seed;
  request.sampling.temperature = temperature;
  return request;
}

GenerationRequest Endless(const std::string& text) {
  GenerationRequest request = Question(text, 1000);
  request.sampling.ignore_eos = true;
  return request;
}

SchedulerConfig Config(int max_running = 8, int max_queued = 64) {
  SchedulerConfig config;
  config.max_running = max_running;
  config.max_queued = max_queued;
  config.preprocess_threads = 2;
  return config;
}

FakeEngineOptions Options(int slots = 8) {
  FakeEngineOptions options;
  options.max_sequences = slots;
  options.limits.max_new_tokens = 1024;
  return options;
}

StatusOr<std::shared_ptr<RequestHandle>> Submit(
    Scheduler& scheduler, GenerationRequest request, Collector* collector,
    Clock::time_point deadline = Clock::time_point::max()) {
  auto submit = std::make_unique<SubmitRequest>();
  submit->request = std::move(request);
  submit->deadline = deadline;
  submit->on_item = collector->Callback();
  return scheduler.Submit(submit);
}

TEST(SchedulerTest, OneRequestStreamsTheEngineOutput) {
  FakeEngine reference(Options());
  auto expected = GenerateDirect(reference, Question("what is on the table?"));
  ASSERT_TRUE(expected.ok());

  FakeEngine engine(Options());
  Collector c;
  Scheduler scheduler(&engine, Config());
  ASSERT_TRUE(Submit(scheduler, Question("what is on the table?"), &c).ok());
  ASSERT_TRUE(c.WaitFinal());
  EXPECT_TRUE(c.final_item().status.ok()) << c.final_item().status.ToString();
  EXPECT_EQ(c.text(), expected->text);
  EXPECT_EQ(c.ids(), expected->token_ids);
  EXPECT_EQ(c.final_item().reason, expected->reason);
  EXPECT_EQ(c.final_item().usage.generated_tokens, static_cast<int>(expected->token_ids.size()));
  EXPECT_GT(c.final_item().usage.prompt_tokens, 0);
  EXPECT_TRUE(c.final_item().reached_model);
  EXPECT_GE(c.final_item().timings.total_ms, c.final_item().timings.first_token_ms);
}

TEST(SchedulerTest, SixtyFourConcurrentRequestsGiveTheirSoloAnswers) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 64; ++i) {
    GenerationRequest r =
        Question("question number " + std::to_string(i), 8 + i % 24, i, i % 2 ? 0.7f : 0.0f);
    if (i % 3 == 0) r.image = ImageInput{testing::MakePng(8 + i, 8), "image/png"};
    requests.push_back(r);
  }
  FakeEngine reference(Options());
  std::vector<testing::DirectResult> expected;
  for (const auto& r : requests) {
    auto result = GenerateDirect(reference, r);
    ASSERT_TRUE(result.ok());
    expected.push_back(*result);
  }

  FakeEngine engine(Options());
  std::list<Collector> collectors;
  Scheduler scheduler(&engine, Config(8, 64));
  for (const auto& r : requests) {
    collectors.emplace_back();
    ASSERT_TRUE(Submit(scheduler, r, &collectors.back()).ok());
  }
  int i = 0;
  for (Collector& c : collectors) {
    ASSERT_TRUE(c.WaitFinal());
    EXPECT_TRUE(c.final_item().status.ok()) << i;
    EXPECT_EQ(c.ids(), expected[i].token_ids) << i;
    EXPECT_EQ(c.text(), expected[i].text) << i;
    ++i;
  }
  EXPECT_GT(engine.max_batch_seen(), 1);  // They were batched, not run one by one.
  EXPECT_LE(engine.max_batch_seen(), 8);
  EXPECT_TRUE(scheduler.WaitFor([](const SchedulerStats& s) { return s.running == 0; }, kWait));
  EXPECT_EQ(engine.resident(), 0);
}

TEST(SchedulerTest, CancelFreesTheSlotAtTheNextStep) {
  Stepper stepper;
  FakeEngineOptions options = Options(2);
  options.step_hook = [&] { stepper.Pass(); };
  FakeEngine engine(options);
  Collector cancelled, other;
  Scheduler scheduler(&engine, Config(2));
  auto handle = Submit(scheduler, Endless("keep talking"), &cancelled);
  ASSERT_TRUE(handle.ok());
  ASSERT_TRUE(Submit(scheduler, Endless("me too"), &other).ok());
  ASSERT_TRUE(scheduler.WaitFor([](const SchedulerStats& s) { return s.preparing == 0; }, kWait));
  stepper.Allow(6);
  ASSERT_TRUE(stepper.WaitBlocked());  // Six engine calls done; the worker waits in the seventh.
  ASSERT_TRUE(scheduler.WaitFor([](const SchedulerStats& s) { return s.running == 2; }, kWait));
  const int64_t step_at_cancel = scheduler.Stats().steps;
  (*handle)->Cancel();
  stepper.Allow(2);  // Finish the step in flight, then one more.
  ASSERT_TRUE(cancelled.WaitFinal());
  ASSERT_TRUE(stepper.WaitBlocked());
  const SchedulerStats stats = scheduler.Stats();
  EXPECT_EQ(stats.running, 1);
  EXPECT_EQ(stats.free_slots, 1);
  EXPECT_EQ(stats.steps - step_at_cancel, 2);  // Retired at the start of the next step.
  EXPECT_EQ(cancelled.final_item().status.code(), StatusCode::kCancelled);
  EXPECT_EQ(cancelled.final_item().reason, FinishReason::kCancelled);
  EXPECT_FALSE(other.has_final());  // The other sequence keeps running.
  EXPECT_EQ(engine.resident(), 1);
  stepper.Open();
}

TEST(SchedulerTest, FullQueueIsRejectedWithinMilliseconds) {
  Gate gate;
  FakeEngineOptions options = Options(1);
  options.step_hook = [&] { gate.Pass(); };
  FakeEngine engine(options);
  std::list<Collector> collectors;
  Scheduler scheduler(&engine, Config(1, 4));
  collectors.emplace_back();
  ASSERT_TRUE(Submit(scheduler, Question("first"), &collectors.back()).ok());
  ASSERT_TRUE(gate.WaitEntered());  // The worker is inside the first prefill.
  for (int i = 0; i < 4; ++i) {
    collectors.emplace_back();
    ASSERT_TRUE(
        Submit(scheduler, Question("queued " + std::to_string(i)), &collectors.back()).ok());
  }
  Collector rejected;
  const auto start = Clock::now();
  auto status = Submit(scheduler, Question("one too many"), &rejected);
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(status.status().code(), StatusCode::kResourceExhausted);
  EXPECT_LT(elapsed, 50ms);
  EXPECT_FALSE(rejected.has_final());  // No callback for a rejected request.
  gate.Open();
  for (Collector& c : collectors) {
    ASSERT_TRUE(c.WaitFinal());
    EXPECT_TRUE(c.final_item().status.ok());
  }
}

TEST(SchedulerTest, DeadlineEndsARunningRequest) {
  FakeEngineOptions options = Options(2);
  options.step_delay = 200us;  // So that 1000 tokens outlast the deadline.
  FakeEngine engine(options);
  Collector late, on_time;
  Scheduler scheduler(&engine, Config(2));
  ASSERT_TRUE(Submit(scheduler, Endless("slow answer"), &late, Clock::now() + 30ms).ok());
  ASSERT_TRUE(Submit(scheduler, Question("quick", 4), &on_time, Clock::now() + 60s).ok());
  ASSERT_TRUE(late.WaitFinal());
  EXPECT_EQ(late.final_item().status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(late.final_item().reason, FinishReason::kError);
  EXPECT_LT(late.final_item().usage.generated_tokens, 1000);
  ASSERT_TRUE(on_time.WaitFinal());
  EXPECT_TRUE(on_time.final_item().status.ok());
  EXPECT_TRUE(scheduler.WaitFor([](const SchedulerStats& s) { return s.running == 0; }, kWait));
  EXPECT_EQ(engine.resident(), 0);
}

TEST(SchedulerTest, ExpiredDeadlineNeverReachesTheModel) {
  FakeEngine engine(Options());
  Collector c;
  Scheduler scheduler(&engine, Config());
  ASSERT_TRUE(Submit(scheduler, Question("too late"), &c, Clock::now() - 1ms).ok());
  ASSERT_TRUE(c.WaitFinal());
  EXPECT_EQ(c.final_item().status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(c.final_item().reached_model);
  EXPECT_EQ(engine.prefill_calls(), 0);
}

TEST(SchedulerTest, OutOfMemoryFailsOnlyThatSequence) {
  std::vector<GenerationRequest> requests = {Question("a", 12), Question("b [oom]", 12),
                                             Question("c", 12), Question("d", 12)};
  for (auto& r : requests) r.sampling.ignore_eos = true;
  FakeEngine reference(Options());
  FakeEngine engine(Options(4));
  std::list<Collector> collectors;
  Scheduler scheduler(&engine, Config(4));
  for (const auto& r : requests) {
    collectors.emplace_back();
    ASSERT_TRUE(Submit(scheduler, r, &collectors.back()).ok());
  }
  int i = 0;
  for (Collector& c : collectors) {
    ASSERT_TRUE(c.WaitFinal());
    if (i == 1) {
      EXPECT_EQ(c.final_item().status.code(), StatusCode::kResourceExhausted);
      EXPECT_EQ(c.final_item().reason, FinishReason::kError);
      EXPECT_EQ(c.ids().size(), 2u);  // oom_after_tokens.
    } else {
      EXPECT_TRUE(c.final_item().status.ok());
      EXPECT_EQ(c.ids(), GenerateDirect(reference, requests[i])->token_ids);
    }
    ++i;
  }
  // The server keeps serving.
  Collector after;
  ASSERT_TRUE(Submit(scheduler, Question("after"), &after).ok());
  ASSERT_TRUE(after.WaitFinal());
  EXPECT_TRUE(after.final_item().status.ok());
  EXPECT_TRUE(scheduler.WaitFor([](const SchedulerStats& s) { return s.running == 0; }, kWait));
  EXPECT_EQ(engine.resident(), 0);
}

TEST(SchedulerTest, InvalidRequestFailsBeforeAnyModelWork) {
  FakeEngine engine(Options());
  Collector c;
  Scheduler scheduler(&engine, Config());
  GenerationRequest request = Question("q");
  request.sampling.temperature = -1;
  ASSERT_TRUE(Submit(scheduler, request, &c).ok());
  ASSERT_TRUE(c.WaitFinal());
  EXPECT_EQ(c.final_item().status.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(c.final_item().reached_model);
  EXPECT_EQ(engine.prefill_calls(), 0);
}

TEST(SchedulerTest, SlowImageDoesNotStallOtherRequests) {
  Gate slow_image;
  FakeEngineOptions options = Options();
  options.prepare_hook = [&](const GenerationRequest& r) {
    if (r.turns.back().text == "slow") slow_image.Pass();
  };
  FakeEngine engine(options);
  Collector slow, fast;
  Scheduler scheduler(&engine, Config());
  ASSERT_TRUE(Submit(scheduler, Question("slow"), &slow).ok());
  ASSERT_TRUE(slow_image.WaitEntered());
  ASSERT_TRUE(Submit(scheduler, Question("fast", 16), &fast).ok());
  ASSERT_TRUE(fast.WaitFinal());
  EXPECT_TRUE(fast.final_item().status.ok());
  EXPECT_FALSE(slow.has_final());
  slow_image.Open();
  ASSERT_TRUE(slow.WaitFinal());
  EXPECT_TRUE(slow.final_item().status.ok());
}

TEST(SchedulerTest, QueueWaitLimitShedsLoad) {
  FakeEngineOptions options = Options(1);
  // The hog must outlast the patient request's way into the queue: at most ~510 steps (the
  // context) of 2 ms, ~1 s, however late a loaded machine runs its preprocessing (at 200 us a
  // step it finished first under load, and the patient request was served).
  options.step_delay = 2ms;
  FakeEngine engine(options);
  Collector running, waiting;
  SchedulerConfig config = Config(1);
  config.max_queue_wait = 20ms;
  Scheduler scheduler(&engine, config);
  auto handle = Submit(scheduler, Endless("hog"), &running);
  ASSERT_TRUE(handle.ok());
  ASSERT_TRUE(running.WaitTokens(1));
  ASSERT_TRUE(Submit(scheduler, Question("patient"), &waiting).ok());
  ASSERT_TRUE(waiting.WaitFinal());
  EXPECT_EQ(waiting.final_item().status.code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE(waiting.final_item().reached_model);
  (*handle)->Cancel();
  ASSERT_TRUE(running.WaitFinal());
}

TEST(SchedulerTest, DrainLetsRunningRequestsFinishAndRefusesNewOnes) {
  FakeEngine engine(Options());
  std::list<Collector> collectors;
  Scheduler scheduler(&engine, Config());
  for (int i = 0; i < 6; ++i) {
    collectors.emplace_back();
    GenerationRequest r = Question("drain " + std::to_string(i), 40);
    r.sampling.ignore_eos = true;
    ASSERT_TRUE(Submit(scheduler, r, &collectors.back()).ok());
  }
  scheduler.Drain(Clock::now() + 60s);
  for (Collector& c : collectors) {
    ASSERT_TRUE(c.has_final());  // Drain returns after every final item.
    EXPECT_TRUE(c.final_item().status.ok());
    EXPECT_EQ(c.final_item().usage.generated_tokens, 40);
  }
  Collector late;
  EXPECT_EQ(Submit(scheduler, Question("late"), &late).status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(scheduler.Stats().draining);
}

TEST(SchedulerTest, DrainDeadlineEndsWhatIsLeft) {
  FakeEngineOptions options = Options();
  options.step_delay = 200us;
  FakeEngine engine(options);
  Collector c;
  Scheduler scheduler(&engine, Config());
  ASSERT_TRUE(Submit(scheduler, Endless("never done"), &c).ok());
  ASSERT_TRUE(c.WaitTokens(1));
  scheduler.Drain(Clock::now() + 20ms);
  ASSERT_TRUE(c.has_final());
  EXPECT_EQ(c.final_item().status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(c.final_item().reason, FinishReason::kCancelled);
  EXPECT_EQ(engine.resident(), 0);
}

}  // namespace
}  // namespace flexvqa
