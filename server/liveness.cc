#include "server/liveness.h"

#include "server/logging.h"

namespace flexvqa {

LivenessMonitor::LivenessMonitor(const LivenessOptions& options, Probe probe, StepStart step_start,
                                 OnChange on_change)
    : options_(options),
      probe_(std::move(probe)),
      step_start_(std::move(step_start)),
      on_change_(std::move(on_change)) {
  if (options_.check_interval.count() > 0) thread_ = std::thread([this] { Run(); });
}

LivenessMonitor::~LivenessMonitor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LivenessMonitor::Run() {
  int failed_probes = 0;
  bool healthy = true;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, options_.check_interval, [this] { return stop_; })) return;
    }
    const std::string why = Check(&failed_probes);
    if (why.empty() == healthy) continue;
    healthy = why.empty();
    if (healthy) {
      Logger("server")->warn("liveness restored: the listener answers and no step is stuck");
    } else {
      Logger("server")->error("{}: health NOT_SERVING so that the orchestrator restarts us", why);
    }
    on_change_(healthy, why);
  }
}

std::string LivenessMonitor::Check(int* failed_probes) {
  std::string why;
  if (options_.max_step_time.count() > 0) {
    const std::optional<Clock::time_point> started = step_start_();
    const Clock::duration running = started ? Clock::now() - *started : Clock::duration::zero();
    if (running > options_.max_step_time) {
      why = "the worker has been inside one engine step for " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(running).count()) +
            " s (max_step_time " +
            std::to_string(
                std::chrono::duration_cast<std::chrono::seconds>(options_.max_step_time).count()) +
            " s)";
    }
  }
  if (options_.self_probe) {
    std::string error;
    if (probe_(Clock::now() + options_.probe_timeout, &error)) {
      *failed_probes = 0;
    } else if (++*failed_probes < options_.probe_failures) {
      Logger("server")->warn("self-probe {} of {} failed: {}", *failed_probes,
                             options_.probe_failures, error);
    } else if (why.empty()) {
      why = "the gRPC listener accepts no connection (" + std::to_string(*failed_probes) +
            " self-probes in a row failed; last: " + error +
            "); file descriptors exhausted? (see 'Failed accept4' above)";
    }
  }
  return why;
}

}  // namespace flexvqa
