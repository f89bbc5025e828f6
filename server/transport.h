// How the gRPC listener is exposed: TLS or mutual TLS from PEM files (reloaded by gRPC's file
// watcher when they change), and the connection limits that keep a flood of connections or
// streams from taking the process down (gRPC 1.51 has no cap on the number of connections: the
// limits are a cap on open connections enforced by our own listener (server/connection_gate.h),
// a raised RLIMIT_NOFILE, a short handshake timeout, idle and maximum connection age, and streams
// per connection; server/liveness.h catches a listener that stops answering anyway).
// Plain data and functions; main's thread.
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "model/status.h"

namespace flexvqa {

struct TlsOptions {
  // PEM certificate chain and private key of the server. Both empty: plaintext. Default: empty.
  std::string cert_file;
  std::string key_file;
  // PEM bundle of the CAs that sign client certificates. Set: mutual TLS, every client must
  // present a certificate it verifies. Default: empty (no client certificates).
  std::string client_ca_file;
  // How often gRPC re-reads the files; a renewed certificate (a Kubernetes Secret update) is used
  // for new connections from then on. Default: 60 s.
  int reload_interval_s = 60;

  bool enabled() const { return !cert_file.empty(); }
};

struct ConnectionOptions {
  // Open connections at once (server/connection_gate.h); more are closed as they arrive, so
  // that a flood cannot exhaust file descriptors. Lowered at start to what RLIMIT_NOFILE allows
  // (ConnectionCapFor). Default: 1000 (gRPC 1.51 has no such cap).
  int max_connections = 1000;
  // Concurrent streams (calls) on one HTTP/2 connection; more wait on the client. Default: 100
  // (HTTP/2's recommended minimum; gRPC's own default is unlimited).
  int max_concurrent_streams = 100;
  // A connection without a call for this long is closed (GOAWAY). Default: 5 min.
  std::chrono::milliseconds max_idle{300'000};
  // A connection is closed after this long (streams in flight get max_age_grace to finish), so
  // long-lived clients rebalance across replicas. Default: 1 h.
  std::chrono::milliseconds max_age{3'600'000};
  std::chrono::milliseconds max_age_grace{300'000};
  // A connection that has not finished its HTTP/2 (and TLS) handshake by then is closed: idle
  // sockets cannot hold file descriptors for long. Default: 10 s.
  std::chrono::milliseconds handshake_timeout{10'000};
};

// INVALID_ARGUMENT for half a key pair or a client CA without a certificate, NOT_FOUND for a file
// that cannot be read. Insecure credentials when TLS is off.
StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const TlsOptions& tls);

// The connection limits as channel arguments, and SO_REUSEPORT off: a second process binding the
// same port must fail, not share the connections.
void ApplyConnectionOptions(const ConnectionOptions& options, grpc::ServerBuilder* builder);

// The largest message gRPC itself receives: `max_message_bytes` plus a quarter (at least 1 MiB,
// at most INT32_MAX). A message over max_message_bytes but within this reaches the handler, which
// refuses it with RESOURCE_EXHAUSTED before parsing and counts it in flexvqa_requests_total;
// gRPC drops a larger one before any handler (RESOURCE_EXHAUSTED too, but no count, no log line).
int TransportReceiveLimit(int64_t max_message_bytes);

// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit in effect (logged by main).
long RaiseFileLimit();
// The soft RLIMIT_NOFILE now.
long FileLimit();

}  // namespace flexvqa
