#include "server/vqa_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <cstdint>

#include "server/logging.h"

namespace flexvqa {

namespace {

void SetServing(grpc::Server& server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // The whole server ("").
  health->SetServingStatus(kHealthServiceName, serving);
}

}  // namespace

StatusOr<std::unique_ptr<VqaServer>> VqaServer::Start(Engine* engine, const ServerOptions& options,
                                                      const SchedulerConfig& scheduler,
                                                      ServerMetrics* metrics) {
  std::unique_ptr<VqaServer> server(new VqaServer());
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
  server->service_ =
      std::make_unique<VqaService>(server->info_, server->scheduler_.get(), limits, metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(),
                           &server->port_);
  const int max_bytes = static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    server->shut_down_ = true;
    return UnavailableError("cannot listen on " + options.listen_address +
                            " (address in use or invalid?)");
  }
  SetServing(*server->server_, true);
  Logger("server")->info("serving {} ({}, {}) on port {}", server->info_.name, server->info_.mode,
                         server->info_.device, server->port_);
  return server;
}

VqaServer::~VqaServer() {
  if (!shut_down_) Shutdown(Clock::now());
  if (metrics_ != nullptr) metrics_->SetStatsSource(nullptr);  // The scheduler goes next.
}

void VqaServer::Shutdown(Clock::time_point drain_deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  Logger("server")->info("draining: NOT_SERVING, new calls UNAVAILABLE");
  SetServing(*server_, false);
  scheduler_->Drain(drain_deadline);
  // Every accepted call has its final item; give the last writes a moment to leave.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server_->Wait();
  Logger("server")->info("stopped");
}

}  // namespace flexvqa
