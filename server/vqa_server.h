// The gRPC server around one engine: VqaService, the standard grpc.health.v1 service and server
// reflection, over a Scheduler that owns the engine's worker thread; TLS, bearer tokens,
// per-client and connection limits (server/transport.h, server/auth.h) and the liveness monitor
// (server/liveness.h), and the OpenAI-compatible endpoint over the same scheduler
// (server/openai_endpoint.h). Start and Shutdown are called from one controlling thread (main or a
// test); Shutdown is idempotent and runs the drain: health NOT_SERVING, new calls UNAVAILABLE,
// accepted requests finish until the drain deadline, the rest end UNAVAILABLE.
#pragma once

#include <grpcpp/server.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "model/engine.h"
#include "model/status.h"
#include "server/auth.h"
#include "server/batch_policy.h"
#include "server/client_limiter.h"
#include "server/connection_gate.h"
#include "server/http_server.h"
#include "server/liveness.h"
#include "server/metrics.h"
#include "server/openai_endpoint.h"
#include "server/scheduler.h"
#include "server/transport.h"
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
  TlsOptions tls;                 // server/transport.h. Default: plaintext.
  ConnectionOptions connections;  // server/transport.h.
  LivenessOptions liveness;       // server/liveness.h.
  // Bearer tokens, one per line with an optional name (server/auth.h); every VqaService call must
  // send one ("authorization: Bearer <token>"); health checks need none. Read at start: a changed
  // file takes effect on restart. Default: empty (no authentication).
  std::string auth_token_file;
  // host:port of a plaintext HTTP health endpoint: GET /healthz (200 while the listener accepts
  // and no step is stuck, else 503) and /readyz (200 while SERVING). For Kubernetes' httpGet
  // probes when the gRPC port speaks TLS (kubelet's gRPC probes cannot). Empty: none. Default:
  // empty.
  std::string health_listen_address;
  // Generate/Answer calls one client (token name, else client certificate CN, else peer address)
  // may have in flight, queued or running: below max_queued + max_running, so that one caller
  // cannot hold every slot. Default: 48.
  int max_calls_per_client = 48;
  // The OpenAI-compatible HTTP endpoint (server/openai_endpoint.h). Default: off.
  OpenAiOptions openai;
  // glibc malloc arenas, set by main before any thread starts (server/heap.h); 0: glibc's default
  // (8 per core), whose per-thread arenas each keep what a burst freed. Default: 2.
  int malloc_arena_max = 2;
};

// Name under which the health service reports VqaService (the empty name reports the whole server).
inline constexpr char kHealthServiceName[] = "flexvqa.v1.VqaService";

class VqaServer {
 public:
  // `engine` (and `metrics` when not null) must outlive the server. UNAVAILABLE when the address
  // cannot be bound (in use: SO_REUSEPORT is off); the token file's and TLS files' errors as
  // server/auth.h and server/transport.h say. `metrics` learns the model, counts every call and
  // reads the scheduler's state.
  static StatusOr<std::unique_ptr<VqaServer>> Start(Engine* engine, const ServerOptions& options,
                                                    const SchedulerConfig& scheduler,
                                                    ServerMetrics* metrics = nullptr);
  ~VqaServer();  // Shutdown with no drain time if it did not run.
  VqaServer(const VqaServer&) = delete;
  VqaServer& operator=(const VqaServer&) = delete;

  int port() const { return port_; }
  int health_port() const { return health_http_ ? health_http_->port() : 0; }
  int openai_port() const { return openai_ ? openai_->port() : 0; }
  Scheduler& scheduler() { return *scheduler_; }
  // The gRPC port's connections: open, accepted, refused at the cap. Any thread.
  const ConnectionGate& connections() const { return *gate_; }
  // One self-probe now, as the liveness monitor runs it: OK when a fresh connection got a health
  // answer. Any thread (tests).
  Status ProbeOnce() const;
  // Drains until `drain_deadline`, then stops gRPC. Returns when everything has ended.
  void Shutdown(Clock::time_point drain_deadline);

 private:
  VqaServer() = default;
  // Health is SERVING while the monitor finds the server live and no drain has begun.
  void SetLive(bool live);

  ModelInfo info_;
  int port_ = 0;
  bool shut_down_ = false;
  ServerMetrics* metrics_ = nullptr;
  LivenessMonitor::Probe probe_;
  std::unique_ptr<TokenSet> tokens_;
  std::unique_ptr<ClientLimiter> limiter_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<VqaService> service_;
  std::mutex health_mu_;
  bool live_ = true;       // Guarded by health_mu_.
  bool draining_ = false;  // Guarded by health_mu_.
  std::unique_ptr<grpc::Server> server_;
  // Hands the gate's connections to server_; stopped after server_ has shut down, so that new
  // connections during the drain still get UNAVAILABLE (and health NOT_SERVING) from gRPC.
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::unique_ptr<ConnectionGate> gate_;
  std::unique_ptr<HttpServer> health_http_;   // Reads live_ and draining_.
  std::unique_ptr<OpenAiEndpoint> openai_;    // Reads live_ and draining_; uses scheduler_.
  std::unique_ptr<LivenessMonitor> monitor_;  // Declared last: stops first (it probes server_).
};

}  // namespace flexvqa
