#include "server/connection_gate.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "server/logging.h"

namespace flexvqa {

namespace {

using std::chrono::steady_clock;

// How long accepting pauses after accept4 ran out of descriptors (or memory): connections wait
// in the kernel's backlog meanwhile, and the pause keeps a full table from spinning the thread.
constexpr std::chrono::milliseconds kOutOfDescriptorsPause{100};
// Refusals are logged at most this often, with their count.
constexpr std::chrono::seconds kRefusalLogInterval{10};

// "host:port" or "[v6]:port" into host (brackets off; empty or a wildcard: any) and port.
bool SplitHostPort(const std::string& address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) return false;
  *host = address.substr(0, colon);
  *port = address.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return true;
}

int BoundSocket(const addrinfo& ai, std::string* error) {
  const int fd = socket(ai.ai_family, ai.ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *error = std::strerror(errno);
    return -1;
  }
  const int on = 1;
  const int off = 0;
  // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT; unlike
  // SO_REUSEPORT it never lets two listeners share the port.
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (ai.ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
  if (bind(fd, ai.ai_addr, ai.ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
    *error = std::strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

int LocalPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
}

}  // namespace

int ConnectionCapFor(int max_connections, long file_limit) {
  const long reserve = 64 + file_limit / 8;
  const long allowed = std::max<long>(1, (file_limit - reserve) / 2);
  return static_cast<int>(std::min<long>(max_connections, allowed));
}

StatusOr<std::unique_ptr<ConnectionGate>> ConnectionGate::Listen(const std::string& listen_address,
                                                                 int max_connections) {
  std::string host;
  std::string port;
  if (!SplitHostPort(listen_address, &host, &port)) {
    return InvalidArgumentError("listen address '" + listen_address + "' has no port");
  }
  if (host == "0.0.0.0" || host == "::" || host == "*") host.clear();
  addrinfo hints{};
  hints.ai_family = host.empty() ? AF_INET6 : AF_UNSPEC;  // Any address: dual-stack [::].
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc =
          getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return UnavailableError("cannot listen on " + listen_address + ": " + gai_strerror(rc));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = BoundSocket(*ai, &error);
  }
  freeaddrinfo(found);
  if (fd < 0 && host.empty()) {  // No IPv6 here: plain IPv4 for the wildcard.
    addrinfo v4{};
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_port = htons(static_cast<uint16_t>(std::atoi(port.c_str())));
    v4.ai_family = AF_INET;
    v4.ai_socktype = SOCK_STREAM;
    v4.ai_addr = reinterpret_cast<sockaddr*>(&any);
    v4.ai_addrlen = sizeof(any);
    fd = BoundSocket(v4, &error);
  }
  if (fd < 0) {
    return UnavailableError("cannot listen on " + listen_address + ": " + error +
                            " (address in use by another process?)");
  }
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(fd);
    return UnavailableError(std::string("eventfd: ") + std::strerror(errno));
  }
  return std::unique_ptr<ConnectionGate>(
      new ConnectionGate(fd, wake, LocalPort(fd), std::max(1, max_connections)));
}

ConnectionGate::ConnectionGate(int listen_fd, int wake_fd, int port, int max_connections)
    : listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port), max_connections_(max_connections) {}

ConnectionGate::~ConnectionGate() {
  Stop();
  close(wake_fd_);
}

void ConnectionGate::Start(grpc::experimental::ExternalConnectionAcceptor* acceptor) {
  thread_ = std::thread([this, acceptor] { Run(acceptor); });
}

void ConnectionGate::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  for (int fd : watched_) close(fd);  // Only our watches: gRPC keeps its connections.
  watched_.clear();
}

ConnectionGateStats ConnectionGate::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool ConnectionGate::WaitFor(const std::function<bool(const ConnectionGateStats&)>& done,
                             std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, timeout, [&] { return done(stats_); });
}

void ConnectionGate::Run(grpc::experimental::ExternalConnectionAcceptor* acceptor) {
  std::vector<pollfd> polled;
  steady_clock::time_point paused_until{};
  for (;;) {
    const bool paused = steady_clock::now() < paused_until;
    polled.assign({{wake_fd_, POLLIN, 0}, {paused ? -1 : listen_fd_, POLLIN, 0}});
    // events 0: poll still reports POLLHUP, which a socket shows once gRPC has shut it down
    // (gRPC calls shutdown(SHUT_RDWR) before close) or the peer reset it.
    for (int fd : watched_) polled.push_back({fd, 0, 0});
    const int timeout_ms =
        paused ? static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      paused_until - steady_clock::now())
                                      .count()) +
                     1
               : -1;
    if (poll(polled.data(), polled.size(), timeout_ms) < 0 && errno != EINTR) {
      Logger("server")->error("connection gate: poll: {}", std::strerror(errno));
      paused_until = steady_clock::now() + kOutOfDescriptorsPause;
      continue;
    }
    if (polled[0].revents != 0) return;  // Stop().
    int64_t closed = 0;
    for (size_t i = polled.size(); i-- > 2;) {
      if ((polled[i].revents & (POLLHUP | POLLERR | POLLNVAL)) == 0) continue;
      close(watched_[i - 2]);
      watched_[i - 2] = watched_.back();
      watched_.pop_back();
      ++closed;
    }
    if (closed > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.open -= closed;
      changed_.notify_all();
    }
    if ((polled[1].revents & POLLIN) != 0 && !AcceptAll(acceptor)) {
      paused_until = steady_clock::now() + kOutOfDescriptorsPause;
    }
  }
}

bool ConnectionGate::AcceptAll(grpc::experimental::ExternalConnectionAcceptor* acceptor) {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog; try again soon.
      Logger("server")->warn("connection gate: accept: {}; accepting again in {} ms",
                             std::strerror(errno), kOutOfDescriptorsPause.count());
      return false;
    }
    if (static_cast<int>(watched_.size()) >= max_connections_) {
      close(fd);  // The client sees the connection closed at once: UNAVAILABLE, and retries.
      ++refused_unlogged_;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.refused;
        changed_.notify_all();
      }
      const auto now = steady_clock::now();
      if (now - last_refusal_log_ >= kRefusalLogInterval) {
        Logger("server")->warn("refused {} connection(s): {} open, --max_connections={}",
                               refused_unlogged_, watched_.size(), max_connections_);
        refused_unlogged_ = 0;
        last_refusal_log_ = now;
      }
      continue;
    }
    const int watch = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (watch < 0) {  // Out of descriptors for the watch: not handed over untracked.
      close(fd);
      Logger("server")->warn("connection gate: dup: {}", std::strerror(errno));
      return false;
    }
    const int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));  // As gRPC's own listener does.
    watched_.push_back(watch);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.open;
      ++stats_.accepted;
      changed_.notify_all();
    }
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters connection;
    connection.listener_fd = listen_fd_;
    connection.fd = fd;  // gRPC owns it from here.
    acceptor->HandleNewConnection(&connection);
  }
}

}  // namespace flexvqa
