#include "server/vqa_server.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <cstdint>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server/logging.h"
#include "server/reflection_v1.h"

namespace flexvqa {

namespace {

void SetServing(grpc::Server& server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // The whole server ("").
  health->SetServingStatus(kHealthServiceName, serving);
}

// Where the server reaches its own listener: the wildcard hosts through loopback.
std::string ProbeTarget(const std::string& listen_address, int port) {
  std::string host = listen_address.substr(0, listen_address.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
  return host + ":" + std::to_string(port);
}

// The probe checks that the listener accepts and answers, not who it is: with TLS it skips
// verifying the server and, for mutual TLS, presents the server's own certificate (the client CA
// must accept it, or the probe fails: docs/security.md).
std::shared_ptr<grpc::ChannelCredentials> ProbeCredentials(const TlsOptions& tls) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_verify_server_certs(false);
  options.set_check_call_host(false);
  options.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  if (!tls.client_ca_file.empty()) {
    options.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            tls.key_file, tls.cert_file, static_cast<unsigned int>(tls.reload_interval_s)));
    options.watch_identity_key_cert_pairs();
  }
  return grpc::experimental::TlsCredentials(options);
}

// A fresh connection each time (a local subchannel pool shares nothing with earlier probes).
bool ProbeListener(const std::string& target,
                   const std::shared_ptr<grpc::ChannelCredentials>& creds,
                   LivenessMonitor::Clock::time_point deadline, std::string* error) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateCustomChannel(target, creds, args));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       (deadline - LivenessMonitor::Clock::now()));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, {}, &response);
  if (!status.ok()) *error = "health check on " + target + ": " + status.error_message();
  return status.ok();
}

}  // namespace

StatusOr<std::unique_ptr<VqaServer>> VqaServer::Start(Engine* engine, const ServerOptions& options,
                                                      const SchedulerConfig& scheduler,
                                                      ServerMetrics* metrics) {
  std::unique_ptr<VqaServer> server(new VqaServer());
  StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      ServerCredentialsFor(options.tls);
  if (!credentials.ok()) {
    server->shut_down_ = true;
    return credentials.status();
  }
  if (!options.auth_token_file.empty()) {
    StatusOr<TokenSet> tokens = TokenSet::Load(options.auth_token_file);
    if (!tokens.ok()) {
      server->shut_down_ = true;
      return tokens.status();
    }
    server->tokens_ = std::make_unique<TokenSet>(std::move(tokens).value());
  }
  server->limiter_ = std::make_unique<ClientLimiter>(options.max_calls_per_client);
  server->info_ = engine->Info();
  server->metrics_ = metrics;
  server->scheduler_ = std::make_unique<Scheduler>(engine, scheduler, metrics);
  if (metrics != nullptr) {
    metrics->SetModel(server->info_, scheduler.max_queued, scheduler.max_running);
    metrics->SetStatsSource([s = server->scheduler_.get()] { return s->Stats(); });
  }
  ServerLimits limits;
  limits.max_message_bytes = options.max_message_bytes;
  limits.max_queued = scheduler.max_queued;
  limits.max_running = scheduler.max_running;
  limits.max_calls_per_client = options.max_calls_per_client;
  server->service_ =
      std::make_unique<VqaService>(server->info_, server->scheduler_.get(), limits, metrics,
                                   CallGate{server->tokens_.get(), server->limiter_.get()});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  AddReflectionV1(&builder);  // gRPC's plugin above serves v1alpha.
  // Our own listener in front of gRPC's (server/connection_gate.h): it caps connections and
  // survives running out of descriptors.
  const int cap = ConnectionCapFor(options.connections.max_connections, FileLimit());
  if (cap < options.connections.max_connections) {
    Logger("server")->warn("max_connections lowered to {}: the file-descriptor limit is {}", cap,
                           FileLimit());
  }
  StatusOr<std::unique_ptr<ConnectionGate>> gate =
      ConnectionGate::Listen(options.listen_address, cap);
  if (!gate.ok()) {
    server->shut_down_ = true;
    return gate.status();
  }
  server->gate_ = std::move(gate).value();
  server->port_ = server->gate_->port();
  server->acceptor_ = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, *credentials);
  ApplyConnectionOptions(options.connections, &builder);
  // Requests a little over the limit reach VqaService, which refuses and counts them.
  builder.SetMaxReceiveMessageSize(TransportReceiveLimit(options.max_message_bytes));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX)));
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_) {
    server->shut_down_ = true;
    return UnavailableError("cannot start the gRPC server on " + options.listen_address);
  }
  server->gate_->Start(server->acceptor_.get());
  SetServing(*server->server_, true);
  VqaServer* raw = server.get();
  server->probe_ = [raw, target = ProbeTarget(options.listen_address, server->port_),
                    creds = ProbeCredentials(options.tls)](
                       LivenessMonitor::Clock::time_point deadline, std::string* error) {
    if (ProbeListener(target, creds, deadline, error)) return true;
    // At the cap the gate closes the probe's connection as it closes every new one: by design,
    // and proof that the gate's thread runs; not a dead listener.
    const ConnectionGate& gate = *raw->gate_;
    return gate.Stats().open >= gate.max_connections();
  };
  server->monitor_ = std::make_unique<LivenessMonitor>(
      options.liveness, server->probe_, [raw] { return raw->scheduler_->StepStartedAt(); },
      [raw](bool live, const std::string&) { raw->SetLive(live); });
  if (!options.health_listen_address.empty()) {
    HttpServerOptions http;
    http.listen_address = options.health_listen_address;
    http.threads = 2;
    StatusOr<std::unique_ptr<HttpServer>> health =
        HttpServer::Start(http, [raw](httplib::Server& s) {
          auto answer = [raw](bool ready, httplib::Response& response) {
            std::lock_guard<std::mutex> lock(raw->health_mu_);
            const bool ok = raw->live_ && (!ready || !raw->draining_);
            response.status = ok ? 200 : 503;
            response.set_content(ok ? "ok\n" : "not serving\n", "text/plain");
          };
          s.Get("/healthz",
                [answer](const httplib::Request&, httplib::Response& r) { answer(false, r); });
          s.Get("/readyz",
                [answer](const httplib::Request&, httplib::Response& r) { answer(true, r); });
        });
    if (!health.ok()) return health.status().WithContext("health endpoint");
    server->health_http_ = std::move(health).value();
  }
  if (!options.openai.listen_address.empty()) {
    OpenAiBackend backend;
    backend.info = &server->info_;
    backend.scheduler = server->scheduler_.get();
    backend.metrics = metrics;
    backend.gate = CallGate{server->tokens_.get(), server->limiter_.get()};
    backend.serving = [raw] {
      std::lock_guard<std::mutex> lock(raw->health_mu_);
      return raw->live_ && !raw->draining_;
    };
    StatusOr<std::unique_ptr<OpenAiEndpoint>> openai =
        OpenAiEndpoint::Start(options.openai, std::move(backend));
    if (!openai.ok()) return openai.status();
    server->openai_ = std::move(openai).value();
    Logger("server")->info("OpenAI-compatible endpoint on port {} (plaintext{})",
                           server->openai_->port(), server->tokens_ ? ", bearer tokens" : "");
  }
  Logger("server")->info("serving {} ({}, {}) on port {} ({}{})", server->info_.name,
                         server->info_.mode, server->info_.device, server->port_,
                         !options.tls.enabled()               ? "plaintext"
                         : options.tls.client_ca_file.empty() ? "TLS"
                                                              : "mutual TLS",
                         server->tokens_ ? ", bearer tokens" : "");
  return server;
}

VqaServer::~VqaServer() {
  if (!shut_down_) Shutdown(Clock::now());
  if (metrics_ != nullptr) metrics_->SetStatsSource(nullptr);  // The scheduler goes next.
}

Status VqaServer::ProbeOnce() const {
  std::string error;
  if (probe_(LivenessMonitor::Clock::now() + std::chrono::seconds(5), &error)) return Status::Ok();
  return UnavailableError(error);
}

void VqaServer::SetLive(bool live) {
  std::lock_guard<std::mutex> lock(health_mu_);
  live_ = live;
  if (!draining_) SetServing(*server_, live_);
}

void VqaServer::Shutdown(Clock::time_point drain_deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  Logger("server")->info("draining: NOT_SERVING, new calls UNAVAILABLE");
  monitor_.reset();
  // health_http_ stays up: /readyz answers 503 while the drain runs.
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    draining_ = true;
    SetServing(*server_, false);
  }
  scheduler_->Drain(drain_deadline);
  // Every accepted call has its final item; give the last writes a moment to leave.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server_->Wait();
  gate_->Stop();    // gRPC closes what it is still handed.
  openai_.reset();  // Its requests all had their final items: the handlers return.
  health_http_.reset();
  Logger("server")->info("stopped");
}

}  // namespace flexvqa
