// End to end over real gRPC on 127.0.0.1 (ephemeral port), the fake engine behind the real server:
// streamed text equals the engine's direct output, batching keeps answers, every bad input gets its
// status and the server keeps serving, cancel and deadline free the slot, health turns NOT_SERVING
// on drain.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <future>
#include <thread>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/vqa_server.h"
#include "tests/server/fake_engine.h"
#include "tests/server/service_fixture.h"
#include "tests/server/stream_reader.h"
#include "tests/server/test_images.h"

namespace flexvqa {
namespace {

using testing::FakeEngine;
using testing::FakeEngineOptions;
using namespace std::chrono_literals;

using testing::EngineHold;
using testing::kWait;
using testing::StreamResult;
using ServiceTest = testing::ServiceTest;
using testing::Question;

GenerationRequest ToEngine(const v1::GenerateRequest& request) {
  GenerationRequest out;
  out.turns.push_back({ChatTurn::Role::kUser, request.question()});
  if (request.images_size() > 0) out.image = ImageInput{request.images(0).data(), ""};
  out.sampling.max_new_tokens = request.sampling().max_new_tokens();
  out.sampling.temperature = request.sampling().temperature();
  out.sampling.seed = request.sampling().seed();
  return out;
}

TEST_F(ServiceTest, StreamedTextEqualsTheEngineOutputForTheSameSeed) {
  StartServer();
  v1::GenerateRequest request = Question("what colour is the ball?", 40);
  request.add_images()->set_data(testing::MakeJpeg(32, 24));
  request.mutable_images(0)->set_mime_type("image/jpeg");
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(1234);
  request.set_request_id("my-request");
  FakeEngine reference;
  auto expected = testing::GenerateDirect(reference, ToEngine(request));
  ASSERT_TRUE(expected.ok());

  StreamResult result = Generate(request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.text, expected->text);
  EXPECT_EQ(result.ids, expected->token_ids);
  ASSERT_TRUE(result.final.has_value());
  EXPECT_EQ(result.final->request_id(), "my-request");
  EXPECT_EQ(result.final->usage().generated_tokens(), static_cast<int>(expected->token_ids.size()));
  EXPECT_EQ(result.final->usage().image_tokens(), 16);
  EXPECT_GT(result.final->timings().total_ms(), 0);
  EXPECT_NE(result.final->finish_reason(), v1::FINISH_REASON_UNSPECIFIED);

  grpc::ClientContext context;
  v1::AnswerResponse answer;
  ASSERT_TRUE(stub_->Answer(&context, request, &answer).ok());
  EXPECT_EQ(answer.text(), expected->text);
  EXPECT_EQ(answer.final().usage().generated_tokens(), result.final->usage().generated_tokens());
}

TEST_F(ServiceTest, SixtyFourConcurrentGreedyRequestsAnswerAsAlone) {
  StartServer({}, SchedulerConfig{8, 4096, 64});
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 64; ++i) requests.push_back(Question("question " + std::to_string(i), 32));
  std::vector<StreamResult> alone;
  for (const auto& r : requests) alone.push_back(Generate(r));
  std::vector<std::future<StreamResult>> together;
  for (const auto& r : requests) {
    together.push_back(std::async(std::launch::async, [&, r] { return Generate(r); }));
  }
  for (int i = 0; i < 64; ++i) {
    StreamResult result = together[i].get();
    ASSERT_TRUE(alone[i].status.ok());
    ASSERT_TRUE(result.status.ok()) << i << ": " << result.status.error_message();
    EXPECT_EQ(result.text, alone[i].text) << i;
    EXPECT_EQ(result.ids, alone[i].ids) << i;
  }
  EXPECT_GT(engine_->max_batch_seen(), 1);
}

// The threshold reaches the engine, which checks it; its report (selected tokens, FLOPs, timings)
// reaches the final message.
TEST_F(ServiceTest, FlexThresholdReachesTheEngineAndTheFinalMessageCarriesItsReport) {
  FakeEngineOptions options;
  options.mode = "flex";
  StartServer(options);
  v1::GenerateRequest request = Question("what is this?", 6);
  request.add_images()->set_data(testing::MakePng(32, 24));
  request.mutable_sampling()->set_ignore_eos(true);
  auto selected = [&](std::optional<int> threshold) {
    v1::GenerateRequest r = request;
    if (threshold) r.set_selection_threshold(*threshold);
    StreamResult result = Generate(r);
    EXPECT_TRUE(result.status.ok()) << result.status.error_message();
    return result.final ? result.final->usage().selected_hr_tokens() : -1;
  };
  EXPECT_EQ(selected(0), 16);  // Every image token.
  EXPECT_EQ(selected(255), 0);
  EXPECT_EQ(selected(std::nullopt), 16 * (255 - testing::kFakeDefaultThreshold) / 255);
  request.set_selection_threshold(256);
  StreamResult out_of_range = Generate(request);
  EXPECT_EQ(out_of_range.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(out_of_range.status.error_message().find("between 0 and 255"), std::string::npos);

  request.clear_selection_threshold();
  StreamResult result = Generate(request);
  ASSERT_TRUE(result.final.has_value());
  const v1::GenerateFinal& final = *result.final;
  const double prefill = testing::kFakePrefillFlopsPerToken * final.usage().prompt_tokens();
  const double decode =
      testing::kFakeDecodeFlopsPerStep * 5;  // 6 tokens: 1 from prefill, 5 decoded.
  EXPECT_DOUBLE_EQ(final.flops_by_phase().vision(), testing::kFakeVisionFlops);
  EXPECT_DOUBLE_EQ(final.flops_by_phase().prefill(), prefill);
  EXPECT_DOUBLE_EQ(final.flops_by_phase().decode(), decode);
  EXPECT_DOUBLE_EQ(final.flops(), testing::kFakeVisionFlops + prefill + decode);
  EXPECT_GT(final.timings().vision_ms(), 0);
  EXPECT_GT(final.timings().prefill_ms(), 0);
}

TEST_F(ServiceTest, ModelInfoDescribesModelAndLimits) {
  StartServer();
  grpc::ClientContext context;
  v1::ModelInfoResponse info;
  ASSERT_TRUE(stub_->ModelInfo(&context, v1::ModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.name(), "fake");
  EXPECT_EQ(info.mode(), "full");
  EXPECT_EQ(info.chat_template(), "llava_hf");
  EXPECT_EQ(info.max_images(), 1);
  EXPECT_FALSE(info.supports_selection_threshold());
  EXPECT_EQ(info.limits().max_message_bytes(), 64 << 20);
  EXPECT_EQ(info.limits().max_image_bytes(), 1 << 20);
  EXPECT_EQ(info.mime_types_size(), 2);
}

struct BadInput {
  std::string name;
  std::function<void(v1::GenerateRequest*)> spoil;
  grpc::StatusCode code;
};

TEST_F(ServiceTest, EveryBadInputGetsItsStatusAndTheServerKeepsServing) {
  StartServer({}, {}, /*max_message_bytes=*/4 << 20);
  const std::string jpeg = testing::MakeJpeg(64, 48);
  const std::string png = testing::MakePng(64, 48);
  auto image = [](std::string bytes, std::string mime = "") {
    return [bytes, mime](v1::GenerateRequest* r) {
      r->add_images()->set_data(bytes);
      r->mutable_images(0)->set_mime_type(mime);
    };
  };
  using grpc::StatusCode;
  const std::vector<BadInput> cases = {
      {"corrupt JPEG", image("\xff\xd8\xff" + std::string(500, 'x')), StatusCode::INVALID_ARGUMENT},
      {"truncated JPEG", image(jpeg.substr(0, jpeg.size() / 2)), StatusCode::INVALID_ARGUMENT},
      {"corrupt PNG", image(png.substr(0, 8) + std::string(500, 'x')),
       StatusCode::INVALID_ARGUMENT},
      {"truncated PNG", image(png.substr(0, png.size() / 2)), StatusCode::INVALID_ARGUMENT},
      {"not an image", image("hello, I am text"), StatusCode::INVALID_ARGUMENT},
      {"60000x60000 header", image(testing::PngClaiming(60000, 60000)),
       StatusCode::INVALID_ARGUMENT},
      {"zero-byte image", image(""), StatusCode::INVALID_ARGUMENT},
      {"image over the byte limit", image(std::string(2 << 20, 'x')), StatusCode::INVALID_ARGUMENT},
      {"message over the gRPC limit", image(std::string(5 << 20, 'x')),
       StatusCode::RESOURCE_EXHAUSTED},
      {"prompt over the context",
       [](v1::GenerateRequest* r) { r->set_question(std::string(4000, 'w')); },
       StatusCode::INVALID_ARGUMENT},
      {"empty prompt", [](v1::GenerateRequest* r) { r->clear_question(); },
       StatusCode::INVALID_ARGUMENT},
      {"max_new_tokens 0",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_max_new_tokens(0); },
       StatusCode::INVALID_ARGUMENT},
      {"max_new_tokens huge",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_max_new_tokens(1 << 30); },
       StatusCode::INVALID_ARGUMENT},
      {"negative temperature",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(-0.5f); },
       StatusCode::INVALID_ARGUMENT},
      {"top_p 0", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(0); },
       StatusCode::INVALID_ARGUMENT},
      {"top_p 1.5", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(1.5f); },
       StatusCode::INVALID_ARGUMENT},
      {"negative top_k", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_k(-1); },
       StatusCode::INVALID_ARGUMENT},
      {"unknown MIME type", image(png, "image/gif"), StatusCode::INVALID_ARGUMENT},
      {"two images",
       [&](v1::GenerateRequest* r) {
         r->add_images()->set_data(png);
         r->add_images()->set_data(jpeg);
       },
       StatusCode::INVALID_ARGUMENT},
      {"question and turns", [](v1::GenerateRequest* r) { r->add_turns()->set_text("t"); },
       StatusCode::INVALID_ARGUMENT},
      {"threshold on a full model", [](v1::GenerateRequest* r) { r->set_selection_threshold(10); },
       StatusCode::INVALID_ARGUMENT},
  };
  for (const BadInput& bad : cases) {
    v1::GenerateRequest request = Question("what is this?");
    bad.spoil(&request);
    StreamResult result = Generate(request);
    EXPECT_EQ(result.status.error_code(), bad.code)
        << bad.name << ": " << result.status.error_message();
    EXPECT_FALSE(result.status.error_message().empty()) << bad.name;
    EXPECT_EQ(result.messages, 0) << bad.name;
    grpc::ClientContext context;
    v1::AnswerResponse answer;
    EXPECT_EQ(stub_->Answer(&context, request, &answer).error_code(), bad.code) << bad.name;
  }
  EXPECT_EQ(engine_->prefill_calls(), 0);  // Nothing bad reached the model.
  StreamResult good = Generate(Question("still there?"));
  EXPECT_TRUE(good.status.ok());
  EXPECT_FALSE(good.ids.empty());
}

// C++ protobuf refuses to parse a proto3 string that is not UTF-8; the service parses the request
// itself and says so with INVALID_ARGUMENT, and keeps serving.
TEST_F(ServiceTest, InvalidUtf8GetsInvalidArgument) {
  StartServer();
  const v1::GenerateRequest request = Question(std::string("caf\xc3", 4));
  StreamResult result = Generate(request);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(result.status.error_message().find("UTF-8"), std::string::npos);
  grpc::ClientContext context;
  v1::AnswerResponse answer;
  EXPECT_EQ(stub_->Answer(&context, request, &answer).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(engine_->prefill_calls(), 0);
  EXPECT_TRUE(Generate(Question("still there?")).status.ok());
}

TEST_F(ServiceTest, AFloodBeyondTheQueueGetsResourceExhaustedAtOnce) {
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  SchedulerConfig config;
  config.max_running = 1;
  config.max_queued = 4;
  StartServer(options, config);
  std::vector<std::future<StreamResult>> accepted;
  accepted.push_back(std::async(std::launch::async, [&] { return Generate(Question("first")); }));
  hold.WaitEntered();
  for (int i = 0; i < 4; ++i) {
    accepted.push_back(
        std::async(std::launch::async, [&] { return Generate(Question("queued")); }));
  }
  ASSERT_TRUE(
      server_->scheduler().WaitFor([](const SchedulerStats& s) { return s.accepted == 5; }, kWait));
  const auto start = std::chrono::steady_clock::now();
  StreamResult rejected = Generate(Question("one too many"));
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 100ms);
  hold.Release();
  for (auto& f : accepted) EXPECT_TRUE(f.get().status.ok());
}

TEST_F(ServiceTest, ClientCancelFreesTheSlot) {
  FakeEngineOptions options;
  options.step_delay = 500us;
  StartServer(options);
  v1::GenerateRequest request = Question("talk forever", 1000);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, request);
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  ASSERT_EQ(server_->scheduler().Stats().running, 1);
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(server_->scheduler().WaitFor(
      [](const SchedulerStats& s) { return s.running == 0 && s.finished == 1; }, kWait));
  EXPECT_EQ(engine_->resident(), 0);
}

TEST_F(ServiceTest, DeadlineEndsTheRequest) {
  FakeEngineOptions options;
  options.step_delay = 500us;
  StartServer(options);
  v1::GenerateRequest request = Question("talk forever", 1000);
  request.mutable_sampling()->set_ignore_eos(true);
  // Connected first: on a loaded machine the 50 ms could pass while the channel connects, and the
  // call would never reach the server (finished stays 0).
  ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() + kWait));
  StreamResult result = Generate(request, 50ms);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(server_->scheduler().WaitFor(
      [](const SchedulerStats& s) { return s.running == 0 && s.finished == 1; }, kWait));
  EXPECT_EQ(engine_->resident(), 0);
}

TEST_F(ServiceTest, HealthTurnsNotServingOnDrainAndNewCallsGetUnavailable) {
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  StartServer(options);
  auto health = grpc::health::v1::Health::NewStub(channel_);
  auto check = [&](const std::string& service) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = health->Check(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.status();
  };
  EXPECT_EQ(check(""), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(check(kHealthServiceName), grpc::health::v1::HealthCheckResponse::SERVING);

  auto running = std::async(std::launch::async, [&] { return Generate(Question("in flight", 8)); });
  hold.WaitEntered();
  std::thread shutdown([&] { server_->Shutdown(Clock::now() + 30s); });
  ASSERT_TRUE(
      server_->scheduler().WaitFor([](const SchedulerStats& s) { return s.draining; }, kWait));
  EXPECT_EQ(check(""), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check(kHealthServiceName), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Generate(Question("too late")).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  hold.Release();
  StreamResult result = running.get();
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();  // Finished within the drain.
  EXPECT_EQ(result.final->usage().generated_tokens(), static_cast<int>(result.ids.size()));
  shutdown.join();
}

}  // namespace
}  // namespace flexvqa
