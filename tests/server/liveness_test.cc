// The liveness monitor on its own: failed self-probes turn it unhealthy only after
// probe_failures in a row and healthy again when a probe passes; a step running past
// max_step_time turns it unhealthy until the step ends. Probes and steps are simulated.
#include "server/liveness.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace flexvqa {
namespace {

using namespace std::chrono_literals;
using Clock = LivenessMonitor::Clock;

// Records every change; Wait blocks until `count` changes arrived (bounded).
class Changes {
 public:
  void Add(bool healthy, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    changes_.push_back({healthy, why});
    cv_.notify_all();
  }
  bool Wait(size_t count) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return changes_.size() >= count; });
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return changes_.size();
  }
  std::pair<bool, std::string> At(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return changes_.at(i);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<bool, std::string>> changes_;
};

TEST(LivenessMonitorTest, RepeatedFailedProbesTurnItUnhealthyAndAPassingOneBack) {
  LivenessOptions options;
  options.check_interval = 1ms;
  options.probe_failures = 3;
  options.max_step_time = 0ms;
  std::atomic<int> probes{0};
  std::atomic<bool> failing{true};
  Changes changes;
  {
    LivenessMonitor monitor(
        options,
        [&](Clock::time_point, std::string* error) {
          ++probes;
          *error = "connect timed out";
          return !failing.load();
        },
        [] { return std::nullopt; }, [&](bool h, const std::string& why) { changes.Add(h, why); });
    ASSERT_TRUE(changes.Wait(1));
    EXPECT_FALSE(changes.At(0).first);
    EXPECT_GE(probes.load(), 3);  // Not before the third failure.
    EXPECT_NE(changes.At(0).second.find("connect timed out"), std::string::npos);
    failing = false;
    ASSERT_TRUE(changes.Wait(2));
    EXPECT_TRUE(changes.At(1).first);
  }
}

TEST(LivenessMonitorTest, OneFailedProbeAmongPassingOnesChangesNothing) {
  LivenessOptions options;
  options.check_interval = 1ms;
  options.probe_failures = 2;
  options.max_step_time = 0ms;
  std::atomic<int> probes{0};
  Changes changes;
  {
    LivenessMonitor monitor(
        options, [&](Clock::time_point, std::string*) { return ++probes % 2 == 0; },
        [] { return std::nullopt; }, [&](bool h, const std::string& why) { changes.Add(h, why); });
    while (probes.load() < 50) std::this_thread::yield();  // Bounded: 1 ms per probe.
  }
  EXPECT_EQ(changes.size(), 0u);
}

TEST(LivenessMonitorTest, AStepPastTheBoundTurnsItUnhealthyUntilItEnds) {
  LivenessOptions options;
  options.check_interval = 1ms;
  options.self_probe = false;
  options.max_step_time = 50ms;
  std::mutex mu;
  std::optional<Clock::time_point> started = Clock::now();
  Changes changes;
  LivenessMonitor monitor(
      options, [](Clock::time_point, std::string*) { return false; },
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return started;
      },
      [&](bool h, const std::string& why) { changes.Add(h, why); });
  ASSERT_TRUE(changes.Wait(1));
  EXPECT_FALSE(changes.At(0).first);
  EXPECT_NE(changes.At(0).second.find("max_step_time"), std::string::npos);
  {
    std::lock_guard<std::mutex> lock(mu);
    started.reset();
  }
  ASSERT_TRUE(changes.Wait(2));
  EXPECT_TRUE(changes.At(1).first);
}

}  // namespace
}  // namespace flexvqa
