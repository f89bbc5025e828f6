// A minimal HTTP/1.1 endpoint that answers GET /metrics with a body made at each request (the
// Prometheus text format), on its own thread with the default stack. Not prometheus-cpp's civetweb
// Exposer: civetweb starts its threads with a fixed 100 KiB stack, smaller than the static TLS of a
// process that links LibTorch and OpenBLAS (pthread_create fails; deploy/README.md, "Gaps"). One
// connection at a time. Start and the destructor from one thread; `body` runs on the endpoint's
// thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "model/status.h"

namespace flexvqa {

class MetricsEndpoint {
 public:
  // Listens on `address` ("host:port", "[v6]:port"; port 0 picks a free one). UNAVAILABLE when it
  // cannot bind. `body` must stay callable until the endpoint is destroyed.
  static StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                          std::function<std::string()> body);
  ~MetricsEndpoint();  // Stops serving; joins the thread (within ~0.2 s).
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  int port() const { return port_; }

 private:
  MetricsEndpoint(int fd, int port, std::function<std::string()> body);
  void Serve();
  void Answer(int connection);

  const int fd_;
  const int port_;
  const std::function<std::string()> body_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace flexvqa
