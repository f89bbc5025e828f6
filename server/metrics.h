// The server's Prometheus metrics, named flexvqa_* plus the standard process_* (the list:
// deploy/README.md): one ServerMetrics owned by main and passed by reference to the scheduler (one
// call per worker step: tokens and FLOPs as they are produced), the service (one call per request:
// counts and latencies) and the server (scrape-time gauges). Every method is thread-safe. The
// /metrics endpoint (server/metrics_endpoint.h) is optional: when it cannot bind, StartEndpoint
// logs and returns the error and serving goes on.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "model/engine.h"
#include "model/status.h"
#include "server/scheduler.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace flexvqa {

struct MetricsConfig {
  // host:port of the Prometheus text endpoint (/metrics), apart from the gRPC port; port 0 picks a
  // free one (tests); empty: no endpoint (metrics are still counted). Default: 0.0.0.0:9464.
  std::string listen_address = "0.0.0.0:9464";
};

class MetricsEndpoint;

// The API a call came in on: the `protocol` label of flexvqa_requests_total (two values, bounded).
enum class Protocol { kGrpc, kOpenAi };
const char* ProtocolName(Protocol protocol);  // "grpc" | "openai"

class ServerMetrics {
 public:
  ServerMetrics();  // Registers every family; flexvqa_build_info is set at once.
  ~ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Serves /metrics on config.listen_address. UNAVAILABLE when it cannot bind (logged; nothing else
  // changes). Call once, before the model loads: a replica reading a large checkpoint is up.
  Status StartEndpoint(const MetricsConfig& config);
  int port() const { return port_; }  // The bound port; 0 without an endpoint.

  // Once, after the engine loaded and before any request: flexvqa_model_info and the `mode` label.
  void SetModel(const ModelInfo& info, int max_queued, int max_running);
  // Read at every scrape for the running/waiting/draining gauges; nullptr stops reading (the source
  // is going away). Must not call back into this object.
  void SetStatsSource(std::function<SchedulerStats()> source);

  // Service: every call once, when it ends. `final_item` is null when the call never reached the
  // scheduler (unparseable, rejected at Submit). The phase latencies (queue ... decode) count calls
  // that ended OK only; the end-to-end duration counts every call that reached the scheduler, by
  // finish reason, so failures stay apart.
  void ObserveRequest(const std::string& method, StatusCode code, const StreamItem* final_item,
                      Protocol protocol = Protocol::kGrpc);
  // Scheduler worker, once per step: what the step produced (tokens and FLOPs counted here, not at
  // completion).
  void ObserveStep(const StepUsage& step);
  // Scheduler worker: the gap between two tokens of one sequence.
  void ObserveInterToken(double seconds);
  // Scheduler worker, when a sequence with an image retires: its high-resolution selections (an
  // empty trace, from modes that select nothing, is ignored).
  void ObserveSelection(const SelectionTrace& trace);
  // Engine memory (the scheduler sets it after every step from Engine::Memory).
  void SetMemory(const EngineMemory& memory);

  // The text exposition of everything (after refreshing the scrape-time gauges): tests, debugging.
  std::string Serialize() const;

 private:
  struct Families;
  void Refresh() const;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  int port_ = 0;
  std::string mode_ = "unknown";  // Set once by SetModel, before requests.
  mutable std::mutex source_mu_;
  std::function<SchedulerStats()> stats_source_;  // Guarded by source_mu_.
  std::unique_ptr<MetricsEndpoint> endpoint_;  // Declared last: stops first (it calls Serialize).
};

}  // namespace flexvqa
