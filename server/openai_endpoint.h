// The OpenAI-compatible HTTP endpoint (docs/openai.md) on its own port, on server/http_server.h
// (cpp-httplib): POST /v1/chat/completions (JSON or server-sent events), GET /v1/models, GET
// /health. Requests go through the gRPC service's path: the same bearer tokens and per-client
// limits (CallGate), server/openai_api.h's conversion into a v1::GenerateRequest, SubmitCall and
// EndCall (server/call.h) onto the same scheduler. A request holds one of the pool's threads until
// it ends; while it waits, that thread watches the connection, and a client that closes it cancels
// the request (the scheduler frees its slot at the next step). Start and the destructor from one
// thread; destroy it after the scheduler drained (every request has had its final item).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "model/engine.h"
#include "model/status.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/vqa_service.h"

namespace flexvqa {

struct OpenAiOptions {
  // host:port of the endpoint; port 0 picks a free one (tests); empty: no endpoint. Plaintext only:
  // put a TLS-terminating proxy in front of it on a network. Default: empty (off).
  std::string listen_address;
  // Requests (and idle keep-alive connections) served at once; more connections wait for a
  // thread. Keep it above max_queued + max_running, or clients wait here instead of getting 429.
  // Default: 96.
  int threads = 96;
  // Largest request body, checked from Content-Length before anything is read or parsed (413).
  // Base64 makes an image 4/3 of its bytes. Default: 32 MiB (a 20 MiB image and its prompt).
  int64_t max_body_bytes = 32 << 20;
};

// What the endpoint serves with; everything must outlive it.
struct OpenAiBackend {
  const ModelInfo* info = nullptr;
  Scheduler* scheduler = nullptr;
  ServerMetrics* metrics = nullptr;  // May be null.
  CallGate gate;
  // The truth grpc.health.v1 reports for the service: /health answers 200 while it is true.
  std::function<bool()> serving;
};

class OpenAiEndpoint {
 public:
  // UNAVAILABLE when the address cannot be bound; INVALID_ARGUMENT for a malformed one.
  static StatusOr<std::unique_ptr<OpenAiEndpoint>> Start(const OpenAiOptions& options,
                                                         OpenAiBackend backend);
  ~OpenAiEndpoint();  // Stops accepting, waits for the requests in flight.
  int port() const { return http_->port(); }

  struct Handlers;  // openai_endpoint.cc

 private:
  OpenAiEndpoint() = default;
  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<HttpServer> http_;  // Declared last: stops first (it runs handlers_).
};

}  // namespace flexvqa
