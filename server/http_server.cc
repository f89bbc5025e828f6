#include "server/http_server.h"

#include <sys/socket.h>

namespace flexvqa {

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const HttpServerOptions& options, const std::function<void(httplib::Server&)>& routes) {
  const std::string& address = options.listen_address;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError("HTTP address '" + address + "' is not host:port");
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  int port = 0;
  try {
    port = std::stoi(address.substr(colon + 1));
  } catch (const std::exception&) {
    return InvalidArgumentError("HTTP address '" + address + "' has no numeric port");
  }

  std::unique_ptr<HttpServer> server(new HttpServer());
  httplib::Server& s = server->server_;
  const int threads = options.threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.set_read_timeout(options.read_timeout);
  s.set_write_timeout(options.write_timeout);
  s.set_keep_alive_timeout(options.keep_alive_timeout.count());
  s.set_payload_max_length(options.max_body_bytes);
  // Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm holds the
  // second until the client's delayed ACK (40 ms on Linux), on every response.
  s.set_tcp_nodelay(true);
  // httplib sets SO_REUSEADDR (a restart despite TIME_WAIT) and, by default, SO_REUSEPORT: the
  // latter would let a second process share the port, as gRPC's did (issue 11, finding 5).
  s.set_socket_options([](socket_t fd) {
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
  routes(s);
  server->port_ = port == 0 ? s.bind_to_any_port(host) : (s.bind_to_port(host, port) ? port : -1);
  if (server->port_ <= 0) {
    server->port_ = 0;
    return UnavailableError("cannot listen on " + address + " (address in use or invalid?)");
  }
  server->listener_ = std::thread([raw = &s] { raw->listen_after_bind(); });
  // stop() only takes effect once the listener runs: wait for it (microseconds; bounded).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!s.is_running() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  return server;
}

HttpServer::~HttpServer() {
  server_.stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace flexvqa
