#include "server/transport.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <sys/resource.h>

#include <algorithm>
#include <climits>
#include <fstream>

namespace flexvqa {

namespace {

Status CheckReadable(const std::string& what, const std::string& path) {
  if (std::ifstream(path).good()) return Status::Ok();
  return NotFoundError("cannot read the " + what + " " + path);
}

int Ms(std::chrono::milliseconds ms) { return static_cast<int>(ms.count()); }

}  // namespace

StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const TlsOptions& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return InvalidArgumentError("set both tls_cert and tls_key, or neither");
  }
  if (!tls.enabled()) {
    if (!tls.client_ca_file.empty()) {
      return InvalidArgumentError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)");
    }
    return grpc::InsecureServerCredentials();
  }
  FLEXVQA_RETURN_IF_ERROR(CheckReadable("TLS certificate", tls.cert_file));
  FLEXVQA_RETURN_IF_ERROR(CheckReadable("TLS key", tls.key_file));
  const bool mutual = !tls.client_ca_file.empty();
  if (mutual) FLEXVQA_RETURN_IF_ERROR(CheckReadable("client CA", tls.client_ca_file));
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key_file, tls.cert_file, tls.client_ca_file,
      static_cast<unsigned int>(tls.reload_interval_s));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mutual) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

void ApplyConnectionOptions(const ConnectionOptions& options, grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, Ms(options.max_idle));
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, Ms(options.max_age));
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, Ms(options.max_age_grace));
  builder->AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, Ms(options.handshake_timeout));
}

int TransportReceiveLimit(int64_t max_message_bytes) {
  const int64_t headroom = std::max<int64_t>(max_message_bytes / 4, 1 << 20);
  return static_cast<int>(std::min<int64_t>(max_message_bytes + headroom, INT32_MAX));
}

long RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return static_cast<long>(limit.rlim_cur);
}

long FileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
  return static_cast<long>(limit.rlim_cur);
}

}  // namespace flexvqa
