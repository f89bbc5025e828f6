// The server's own liveness checks, on one thread of their own: a self-probe (a fresh connection
// to the gRPC listener and a health check, with a short deadline) catches a listener that stopped
// accepting (gRPC 1.51 stops accepting for good after accept4 fails with EMFILE); a step watchdog
// catches a worker stuck inside one engine step. Either turns `on_change(false, why)`, which the
// server maps to health NOT_SERVING so that Kubernetes restarts the process rather than keep a
// silent zombie; `on_change(true, ...)` follows when both hold again. Constructed and destroyed
// on one thread; the callbacks run on the monitor's thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace flexvqa {

struct LivenessOptions {
  // How often both checks run; 0: no monitor at all. Default: 5 s.
  std::chrono::milliseconds check_interval{5'000};
  // Whether the self-probe runs (the step watchdog runs whenever the monitor does). Default: true.
  bool self_probe = true;
  // The probe's deadline: connection, handshake and the health call. Default: 2 s.
  std::chrono::milliseconds probe_timeout{2'000};
  // Consecutive failed probes before the listener counts as broken. Default: 3.
  int probe_failures = 3;
  // A worker step running longer than this counts as stuck; 0: no watchdog. Default: 120 s (a
  // 7B prefill of a full context on a GPU takes about a second, on a CPU a minute).
  std::chrono::milliseconds max_step_time{120'000};
};

class LivenessMonitor {
 public:
  using Clock = std::chrono::steady_clock;
  // True when the listener answered before `deadline`; `*error` says why not.
  using Probe = std::function<bool(Clock::time_point deadline, std::string* error)>;
  // When the worker's current step started; nullopt while it waits for work.
  using StepStart = std::function<std::optional<Clock::time_point>()>;
  using OnChange = std::function<void(bool healthy, const std::string& why)>;

  LivenessMonitor(const LivenessOptions& options, Probe probe, StepStart step_start,
                  OnChange on_change);
  ~LivenessMonitor();  // Stops the thread (a probe in flight ends within probe_timeout).
  LivenessMonitor(const LivenessMonitor&) = delete;
  LivenessMonitor& operator=(const LivenessMonitor&) = delete;

 private:
  void Run();
  // Why the server is not live now, or empty.
  std::string Check(int* failed_probes);

  const LivenessOptions options_;
  const Probe probe_;
  const StepStart step_start_;
  const OnChange on_change_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // Guarded by mu_.
  std::thread thread_;
};

}  // namespace flexvqa
