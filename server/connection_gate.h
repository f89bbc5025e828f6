// The gRPC port's listening socket, owned by us and put in front of gRPC: gRPC 1.51 has no cap on
// connections and its own accept loop ends for good on the first accept4 failure (EMFILE, issue
// 11 finding 1). One thread accepts; beyond `max_connections` open ones a new connection is closed
// at once, the others go to gRPC through ServerBuilder's external connection acceptor (so TLS and
// every channel argument apply as on a gRPC-owned port). An accept that fails for lack of
// descriptors is retried after a pause: it never ends the listener. Listen, Start and Stop are
// called from one controlling thread; Stats and WaitFor from any.
#pragma once

#include <grpcpp/server_builder.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/status.h"

namespace flexvqa {

struct ConnectionGateStats {
  int64_t open = 0;      // Connections handed to gRPC that gRPC has not closed yet.
  int64_t accepted = 0;  // Handed to gRPC since Start.
  int64_t refused = 0;   // Closed at once because `open` was at the cap.
};

// The cap the file-descriptor limit allows: each open connection holds two descriptors (gRPC's
// and the gate's watch on it), and a reserve (64 plus an eighth of the limit) stays for model
// files, the HTTP endpoints and gRPC's own. At least 1.
int ConnectionCapFor(int max_connections, long file_limit);

class ConnectionGate {
 public:
  // Binds `listen_address` ("host:port", "[v6]:port"; port 0 picks a free one) with SO_REUSEADDR
  // and without SO_REUSEPORT, so that a second process binding the port fails. UNAVAILABLE when
  // it cannot bind, INVALID_ARGUMENT for an address without a port. `max_connections` > 0.
  static StatusOr<std::unique_ptr<ConnectionGate>> Listen(const std::string& listen_address,
                                                          int max_connections);
  ~ConnectionGate();  // Stop().
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  int port() const { return port_; }
  int max_connections() const { return max_connections_; }
  // Starts accepting; connections go to `acceptor`, which must outlive Stop(). Once.
  void Start(grpc::experimental::ExternalConnectionAcceptor* acceptor);
  // Stops accepting and closes the listening socket (new connections are refused by the kernel);
  // connections already handed over stay with gRPC. Idempotent.
  void Stop();

  ConnectionGateStats Stats() const;
  // True when `done(stats)` held within `timeout` (tests; the gate notifies on every change).
  bool WaitFor(const std::function<bool(const ConnectionGateStats&)>& done,
               std::chrono::milliseconds timeout) const;

 private:
  ConnectionGate(int listen_fd, int wake_fd, int port, int max_connections);
  void Run(grpc::experimental::ExternalConnectionAcceptor* acceptor);
  // Accepts what the backlog holds; false when accepting must pause (out of descriptors).
  bool AcceptAll(grpc::experimental::ExternalConnectionAcceptor* acceptor);

  const int listen_fd_;
  const int wake_fd_;  // An eventfd: Stop() wakes the thread's poll.
  const int port_;
  const int max_connections_;
  std::vector<int> watched_;  // The accept thread's own: a dup of each open connection's socket.
  mutable std::mutex mu_;
  mutable std::condition_variable changed_;
  ConnectionGateStats stats_;                               // Guarded by mu_.
  std::chrono::steady_clock::time_point last_refusal_log_;  // The accept thread's own.
  int64_t refused_unlogged_ = 0;                            // The accept thread's own.
  std::thread thread_;
  bool stopped_ = false;
};

}  // namespace flexvqa
