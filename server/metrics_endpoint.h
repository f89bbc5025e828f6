// The Prometheus endpoint: GET (or HEAD) /metrics answers with a body made at each request (the
// text format), on server/http_server.h (cpp-httplib, a bounded pool, read/write timeouts), so a
// slow or stalled client holds one worker for a few seconds at most, never the endpoint. Start and
// the destructor from one thread; `body` runs on the pool's threads.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "model/status.h"
#include "server/http_server.h"

namespace flexvqa {

class MetricsEndpoint {
 public:
  // Listens on `address` ("host:port", "[v6]:port"; port 0 picks a free one). UNAVAILABLE when it
  // cannot bind. `body` must be thread-safe and stay callable until the endpoint is destroyed.
  static StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                          std::function<std::string()> body);
  int port() const { return http_->port(); }

 private:
  explicit MetricsEndpoint(std::unique_ptr<HttpServer> http) : http_(std::move(http)) {}
  std::unique_ptr<HttpServer> http_;
};

}  // namespace flexvqa
