// A small HTTP/1.1 server on Debian's cpp-httplib, for the /metrics endpoint and any later HTTP
// API: routes are set on the httplib::Server before it starts, requests run on a bounded pool of
// `threads` workers (std::thread: the default stack, which a process linking LibTorch needs;
// prometheus-cpp's civetweb fixes 100 KiB and cannot start its threads there), and read/write
// timeouts bound how long one stalled client holds a worker. Start and the destructor from one
// thread; handlers run on the pool's threads and must be thread-safe.
#pragma once

#include <httplib.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "model/status.h"

namespace flexvqa {

struct HttpServerOptions {
  // "host:port" or "[v6]:port"; port 0 picks a free one (tests). Required.
  std::string listen_address;
  // Requests served at once; more connections wait for a worker. Default: 4.
  int threads = 4;
  // Each read or write on a connection that takes longer ends it. Default: 5 s.
  std::chrono::milliseconds read_timeout{5'000};
  std::chrono::milliseconds write_timeout{5'000};
  // Idle keep-alive connections are closed after this. Default: 5 s.
  std::chrono::seconds keep_alive_timeout{5};
  // Largest request body. Default: 1 MiB.
  size_t max_body_bytes = 1 << 20;
};

class HttpServer {
 public:
  // Calls `routes` to register the handlers, binds and starts serving. INVALID_ARGUMENT for an
  // address that is not host:port, UNAVAILABLE when it cannot bind.
  static StatusOr<std::unique_ptr<HttpServer>> Start(
      const HttpServerOptions& options, const std::function<void(httplib::Server&)>& routes);
  ~HttpServer();  // Stops accepting, finishes the requests in flight, joins every thread.
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

 private:
  HttpServer() = default;

  httplib::Server server_;
  int port_ = 0;
  std::thread listener_;
};

}  // namespace flexvqa
