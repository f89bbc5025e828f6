// scheduler_overhead_bench: the continuous-batching scheduler's own cost per step, with the engine
// stubbed out (the fake engine of tests/server/fake_engine.h, zero step delay). For each batch size
// N it keeps N never-ending sequences running and reports microseconds per worker step, beside the
// same number of Decode calls on the fake engine alone; the difference is the scheduler's overhead
// (retire, admit, plan, event dispatch, per-token callback, stats). Prints one row per N.
//
//   scheduler_overhead_bench [--batch=1,8,64] [--window_ms=1000] [--windows=3]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/logging.h"
#include "server/scheduler.h"
#include "tests/server/fake_engine.h"

namespace flexvqa {
namespace {

using BenchClock = std::chrono::steady_clock;

testing::FakeEngineOptions EngineOptions(int batch) {
  testing::FakeEngineOptions options;
  options.max_sequences = batch;
  options.context_length = 1 << 30;
  options.limits.max_new_tokens = 1 << 30;
  options.limits.max_prompt_tokens = 1 << 20;
  return options;
}

GenerationRequest Forever(int i) {
  GenerationRequest request;
  request.turns.push_back({ChatTurn::Role::kUser, "question number " + std::to_string(i)});
  request.sampling.max_new_tokens = 1 << 30;
  request.sampling.ignore_eos = true;
  return request;
}

// Microseconds per step of the scheduler with `batch` sequences running: the median of `windows`
// windows of `window` each.
double SchedulerUsPerStep(int batch, std::chrono::milliseconds window, int windows,
                          std::atomic<int64_t>* tokens) {
  testing::FakeEngine engine(EngineOptions(batch));
  SchedulerConfig config;
  config.max_running = batch;
  config.max_queued = batch;
  config.preprocess_threads = 1;
  Scheduler scheduler(&engine, config);
  for (int i = 0; i < batch; ++i) {
    auto submit = std::make_unique<SubmitRequest>();
    submit->request = Forever(i);
    // As light as a callback can be: the reactor's own cost belongs to the service, not the
    // scheduler.
    submit->on_item = [tokens](StreamItem item) {
      if (!item.final) tokens->fetch_add(1, std::memory_order_relaxed);
    };
    if (!scheduler.Submit(submit).ok()) std::abort();
  }
  scheduler.WaitFor([batch](const SchedulerStats& s) { return s.running == batch; },
                    std::chrono::seconds(10));
  std::vector<double> us;
  for (int w = 0; w < windows; ++w) {
    const int64_t steps0 = scheduler.Stats().steps;
    const auto t0 = BenchClock::now();
    std::this_thread::sleep_for(window);  // A bench measures over time; nothing waits on this.
    const int64_t steps1 = scheduler.Stats().steps;
    const auto t1 = BenchClock::now();
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() /
                 static_cast<double>(std::max<int64_t>(1, steps1 - steps0)));
  }
  scheduler.Drain(Clock::now());
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// Microseconds per Decode call of the fake engine alone over `batch` sequences.
double EngineUsPerStep(int batch, std::chrono::milliseconds window) {
  testing::FakeEngine engine(EngineOptions(batch));
  std::vector<SequenceId> ids;
  for (int i = 0; i < batch; ++i) {
    auto prepared = engine.Prepare(Forever(i));
    auto id = prepared.ok() ? engine.Admit(*prepared) : StatusOr<SequenceId>(prepared.status());
    if (!id.ok()) std::abort();
    ids.push_back(*id);
  }
  std::vector<TokenEvent> events;
  engine.Prefill(ids, &events);
  int64_t steps = 0;
  const auto t0 = BenchClock::now();
  const auto end = t0 + window;
  BenchClock::time_point now;
  do {
    events.clear();
    engine.Decode(ids, &events);
    ++steps;
    now = BenchClock::now();
  } while (now < end);
  return std::chrono::duration<double, std::micro>(now - t0).count() / static_cast<double>(steps);
}

std::vector<int> ParseList(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::atoi(item.c_str()));
  return out;
}

}  // namespace
}  // namespace flexvqa

int main(int argc, char** argv) {
  std::vector<int> batches = {1, 8, 64};
  int window_ms = 1000;
  int windows = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--batch=", 0) == 0) {
      batches = flexvqa::ParseList(arg.substr(8));
    } else if (arg.rfind("--window_ms=", 0) == 0) {
      window_ms = std::atoi(arg.c_str() + 12);
    } else if (arg.rfind("--windows=", 0) == 0) {
      windows = std::atoi(arg.c_str() + 10);
    } else {
      std::fprintf(stderr, "usage: %s [--batch=1,8,64] [--window_ms=1000] [--windows=3]\n",
                   argv[0]);
      return 2;
    }
  }
  if (batches.empty() || window_ms <= 0 || windows <= 0) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }
  flexvqa::SetUpLogging(flexvqa::LoggingConfig{"error", false});
  std::printf("%6s %14s %14s %14s %16s %14s\n", "batch", "sched_us/step", "engine_us/step",
              "overhead_us", "overhead_us/seq", "tokens/s");
  for (int batch : batches) {
    std::atomic<int64_t> tokens{0};
    const auto t0 = std::chrono::steady_clock::now();
    const double sched =
        flexvqa::SchedulerUsPerStep(batch, std::chrono::milliseconds(window_ms), windows, &tokens);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double engine = flexvqa::EngineUsPerStep(batch, std::chrono::milliseconds(window_ms));
    std::printf("%6d %14.2f %14.2f %14.2f %16.3f %14.0f\n", batch, sched, engine, sched - engine,
                (sched - engine) / batch, static_cast<double>(tokens.load()) / seconds);
  }
  return 0;
}
