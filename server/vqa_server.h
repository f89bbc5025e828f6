// The gRPC server around one engine: VqaService, the standard grpc.health.v1 service and server
// reflection, over a Scheduler that owns the engine's worker thread. Start and Shutdown are called
// from one controlling thread (main or a test); Shutdown is idempotent and runs the drain: health
// NOT_SERVING, new calls UNAVAILABLE, accepted requests finish until the drain deadline, the rest
// end UNAVAILABLE.
#pragma once

#include <grpcpp/server.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "model/engine.h"
#include "model/status.h"
#include "server/batch_policy.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/vqa_service.h"

namespace flexvqa {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (tests). Default: 0.0.0.0:50051.
  std::string listen_address = "0.0.0.0:50051";
  // Largest request and response message. Default: 64 MiB, well above gRPC's 4 MiB so a photo fits.
  int64_t max_message_bytes = 64 << 20;
  // Grace time on SIGTERM for accepted requests to finish. Default: 25 s, inside Kubernetes'
  // default terminationGracePeriodSeconds (30 s); raise both together.
  std::chrono::milliseconds drain_time{25'000};
  // When set, the bound port is written there once serving (scripts and tests with port 0).
  // Default: empty.
  std::string port_file;
};

// Name under which the health service reports VqaService (the empty name reports the whole server).
inline constexpr char kHealthServiceName[] = "flexvqa.v1.VqaService";

class VqaServer {
 public:
  // `engine` (and `metrics` when not null) must outlive the server. UNAVAILABLE when the address
  // cannot be bound. `metrics` learns the model, counts every call and reads the scheduler's state.
  static StatusOr<std::unique_ptr<VqaServer>> Start(Engine* engine, const ServerOptions& options,
                                                    const SchedulerConfig& scheduler,
                                                    ServerMetrics* metrics = nullptr);
  ~VqaServer();  // Shutdown with no drain time if it did not run.
  VqaServer(const VqaServer&) = delete;
  VqaServer& operator=(const VqaServer&) = delete;

  int port() const { return port_; }
  Scheduler& scheduler() { return *scheduler_; }
  // Drains until `drain_deadline`, then stops gRPC. Returns when everything has ended.
  void Shutdown(Clock::time_point drain_deadline);

 private:
  VqaServer() = default;

  ModelInfo info_;
  int port_ = 0;
  bool shut_down_ = false;
  ServerMetrics* metrics_ = nullptr;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<VqaService> service_;
  std::unique_ptr<grpc::Server> server_;  // Declared last: destroyed first.
};

}  // namespace flexvqa
