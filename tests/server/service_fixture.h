// Test support for the service tests over the fake engine: the real VqaServer on 127.0.0.1 (an
// ephemeral port) with a client channel, stub and health stub, and EngineHold, which holds the
// engine inside a step so that a test knows a request is running. Tests set server_options_ (and
// token_, sent with every call) before StartServer.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/metrics.h"
#include "server/vqa_server.h"
#include "tests/server/fake_engine.h"
#include "tests/server/stream_reader.h"

namespace flexvqa::testing {

inline constexpr std::chrono::seconds kWait{10};

// Holds the engine inside its first step (and every later one) until Release: lets a test fill the
// queue or drain while a request is known to be running.
class EngineHold {
 public:
  std::function<void()> Hook() {
    return [this] {
      if (first_.exchange(false)) entered_.set_value();
      released_.wait();
    };
  }
  void WaitEntered() { entered_.get_future().wait(); }
  void Release() { release_.set_value(); }

 private:
  std::promise<void> release_;
  std::shared_future<void> released_ = release_.get_future().share();
  std::promise<void> entered_;
  std::atomic<bool> first_{true};
};

class ServiceTest : public ::testing::Test {
 protected:
  ServiceTest() {
    server_options_.listen_address = "127.0.0.1:0";
    server_options_.max_calls_per_client = 1000;  // Tests of the per-client limit lower it.
  }

  void StartServer(FakeEngineOptions options = {}, SchedulerConfig scheduler = {},
                   int64_t max_message_bytes = 64 << 20) {
    options.limits.max_image_bytes = 1 << 20;
    options.limits.max_new_tokens = 1024;
    engine_ = std::make_unique<FakeEngine>(options);
    server_options_.max_message_bytes = max_message_bytes;
    scheduler.preprocess_threads = 2;
    auto server = VqaServer::Start(engine_.get(), server_options_, scheduler, &metrics_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(server_->port()),
                                         grpc::InsecureChannelCredentials(), args);
    stub_ = v1::VqaService::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }
  void TearDown() override {
    server_.reset();
    engine_.reset();
  }

  // A context with the deadline and, when token_ is set, the bearer token.
  std::unique_ptr<grpc::ClientContext> Context(
      std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000)) const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + timeout);
    if (!token_.empty()) context->AddMetadata("authorization", "Bearer " + token_);
    return context;
  }
  StreamResult Generate(const v1::GenerateRequest& request,
                        std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000)) {
    return Read(Context(timeout).get(), request);
  }
  StreamResult Read(grpc::ClientContext* context, const v1::GenerateRequest& request) {
    return ReadGenerateStream(*stub_, context, request);
  }
  // The health status of `service` ("" for the whole server); UNKNOWN when the call fails.
  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kWait);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    if (!health_->Check(&context, request, &response).ok()) {
      return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    }
    return response.status();
  }

  ServerOptions server_options_;
  std::string token_;
  ServerMetrics metrics_;  // Outlives the server.
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<VqaServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VqaService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

inline v1::GenerateRequest Question(const std::string& text, int max_new_tokens = 24) {
  v1::GenerateRequest request;
  request.set_question(text);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  return request;
}

}  // namespace flexvqa::testing
