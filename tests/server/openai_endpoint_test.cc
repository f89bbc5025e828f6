// The OpenAI-compatible endpoint on loopback over the fake engine, beside the gRPC service on the
// same scheduler: answers equal gRPC's, streams end in [DONE], every limit refuses in OpenAI's
// error shape with the HTTP status the SDKs type, a closed connection frees its slot, drain.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/server/service_fixture.h"
#include "tests/server/test_images.h"

namespace flexvqa::testing {
namespace {

using Json = nlohmann::json;
using namespace std::chrono_literals;

struct Sse {
  std::vector<Json> events;
  bool done = false;
  std::string content;
};

Sse ParseSse(const std::string& body) {
  Sse sse;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string data = body.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") {
      sse.done = true;
      continue;
    }
    Json event = Json::parse(data);
    if (event.contains("choices") && !event["choices"].empty()) {
      sse.content += event["choices"][0]["delta"].value("content", "");
    }
    sse.events.push_back(std::move(event));
  }
  return sse;
}

// A response's HTTP status; -1 when there is none (connection error, read timeout).
int StatusOf(const httplib::Result& result) { return result ? result->status : -1; }

class OpenAiEndpointTest : public ServiceTest {
 protected:
  void Start(FakeEngineOptions options = {}, SchedulerConfig scheduler = {}) {
    server_options_.openai.listen_address = "127.0.0.1:0";
    server_options_.openai.threads = 16;
    StartServer(options, scheduler);
    http_ = std::make_unique<httplib::Client>("127.0.0.1", server_->openai_port());
    http_->set_read_timeout(kWait);
    if (!token_.empty()) http_->set_bearer_token_auth(token_);
  }
  httplib::Result Post(const Json& body, httplib::Headers headers = {}) {
    return http_->Post("/v1/chat/completions", headers, body.dump(), "application/json");
  }
  Json Request(const std::string& question, Json extra = {}) {
    Json body = {{"model", engine_->Info().name},
                 {"messages", {{{"role", "user"}, {"content", question}}}},
                 {"temperature", 0},
                 {"max_tokens", 24}};
    if (!extra.is_null()) body.update(extra);
    return body;
  }
  // flexvqa_requests_total of the OpenAI endpoint for `code`.
  double Requests(const std::string& code) {
    const std::regex series("flexvqa_requests_total\\{code=\"" + code +
                            "\",method=\"chat_completions\",mode=\"full\",protocol=\"openai\"\\} "
                            "([0-9.e+]+)");
    const std::string text = metrics_.Serialize();
    std::smatch match;
    return std::regex_search(text, match, series) ? std::stod(match[1]) : -1;
  }
  // Raw loopback connection to the endpoint (tests that close it mid-request).
  int Connect() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(server_->openai_port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    return fd;
  }
  void Send(int fd, const Json& body) {
    const std::string text = body.dump();
    const std::string request =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: " +
        std::to_string(text.size()) + "\r\n\r\n" + text;
    ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  }
  std::string WriteTokens(const std::string& text) {
    const std::string path = ::testing::TempDir() + "/openai_tokens_" + std::to_string(getpid());
    std::ofstream(path) << text;
    return path;
  }

  std::unique_ptr<httplib::Client> http_;
};

TEST_F(OpenAiEndpointTest, AnswersEqualGrpcStreamedAndNot) {
  Start();
  const std::string image = MakePng(40, 30);
  Json body = Request("");
  body["messages"] = {
      {{"role", "user"},
       {"content",
        {{{"type", "image_url"}, {"image_url", {{"url", DataUrl(image, "image/png")}}}},
         {{"type", "text"}, {"text", "what is in the picture?"}}}}}};
  v1::GenerateRequest grpc_request = Question("what is in the picture?", 24);
  grpc_request.mutable_sampling()->set_temperature(0);
  grpc_request.add_images()->set_data(image);
  const StreamResult grpc = Generate(grpc_request);
  ASSERT_TRUE(grpc.status.ok()) << grpc.status.error_message();
  ASSERT_FALSE(grpc.text.empty());

  const auto plain = Post(body);
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  const Json answer = Json::parse(plain->body);
  EXPECT_EQ(answer["choices"][0]["message"]["content"], grpc.text);
  EXPECT_EQ(answer["usage"]["prompt_tokens"], grpc.final->usage().prompt_tokens());
  EXPECT_EQ(answer["usage"]["completion_tokens"], grpc.final->usage().generated_tokens());
  EXPECT_EQ(answer["flexvqa"]["image_tokens"], 16);
  EXPECT_EQ(answer["flexvqa"]["flops_by_phase"]["vision"], kFakeVisionFlops);

  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const auto streamed = Post(body);
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200);
  EXPECT_EQ(streamed->get_header_value("Content-Type"), "text/event-stream");
  const Sse sse = ParseSse(streamed->body);
  EXPECT_TRUE(sse.done);
  EXPECT_EQ(sse.content, grpc.text);
  ASSERT_GE(sse.events.size(), 3u);
  EXPECT_EQ(sse.events.front()["choices"][0]["delta"]["role"], "assistant");
  const Json& last_choice = sse.events[sse.events.size() - 2];
  EXPECT_EQ(last_choice["choices"][0]["finish_reason"],
            grpc.final->finish_reason() == v1::FINISH_REASON_LENGTH ? "length" : "stop");
  EXPECT_TRUE(sse.events.back()["choices"].empty());
  EXPECT_EQ(sse.events.back()["usage"]["completion_tokens"],
            grpc.final->usage().generated_tokens());
  EXPECT_EQ(Requests("OK"), 2);
}

TEST_F(OpenAiEndpointTest, ModelsAndHealth) {
  Start();
  const auto models = http_->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  EXPECT_EQ(Json::parse(models->body)["data"][0]["id"], engine_->Info().name);
  const auto health = http_->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const auto unknown = http_->Get("/v1/nothing");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_TRUE(Json::parse(unknown->body).contains("error"));
}

TEST_F(OpenAiEndpointTest, RefusalsComeInOpenAisShape) {
  Start();
  const auto unknown_model = Post(Request("q", {{"model", "gpt-4o"}}));
  ASSERT_TRUE(unknown_model);
  EXPECT_EQ(unknown_model->status, 400);
  const Json error = Json::parse(unknown_model->body)["error"];
  EXPECT_EQ(error["param"], "model");
  EXPECT_EQ(error["code"], "model_not_found");
  // Refused by the engine (Prepare), after Submit: still a 400 naming the field, streamed or not.
  for (bool stream : {false, true}) {
    const auto too_many = Post(Request("q", {{"max_tokens", 5000}, {"stream", stream}}));
    ASSERT_TRUE(too_many);
    EXPECT_EQ(too_many->status, 400) << too_many->body;
    EXPECT_EQ(Json::parse(too_many->body)["error"]["param"], "max_tokens");
  }
  const auto bad_timeout = Post(Request("q"), {{"X-Request-Timeout", "soon"}});
  ASSERT_TRUE(bad_timeout);
  EXPECT_EQ(bad_timeout->status, 400);
  // An image one byte over the engine's limit (the fixture's 1 MiB): the engine's refusal names the
  // image part.
  Json image = Request("");
  image["messages"] = {
      {{"role", "user"},
       {"content",
        {{{"type", "text"}, {"text", "q"}},
         {{"type", "image_url"},
          {"image_url", {{"url", DataUrl(std::string((1 << 20) + 1, 'x'), "image/png")}}}}}}}};
  const auto too_big = Post(image);
  ASSERT_TRUE(too_big);
  EXPECT_EQ(too_big->status, 400) << too_big->body;
  EXPECT_EQ(Json::parse(too_big->body)["error"]["param"], "messages[0].content[1].image_url");
  EXPECT_EQ(Requests("INVALID_ARGUMENT"), 5);
  EXPECT_EQ(engine_->prefill_calls(), 0);
}

TEST_F(OpenAiEndpointTest, ABodyOverTheLimitIsRefusedBeforeParsing) {
  server_options_.openai.max_body_bytes = 4096;
  Start();
  const auto big = Post(Request(std::string(5000, 'a')));
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_TRUE(Json::parse(big->body)["error"].contains("message"));
  EXPECT_EQ(engine_->prefill_calls(), 0);
  const auto fits = Post(Request("q"));
  ASSERT_TRUE(fits);
  EXPECT_EQ(fits->status, 200);
}

TEST_F(OpenAiEndpointTest, APromptOverTheByteLimitIsRefusedBeforeTokenising) {
  FakeEngineOptions options;
  options.limits.max_prompt_bytes = 100;
  Start(options);
  const auto big = Post(Request(std::string(101, 'a')));
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 400);
  EXPECT_EQ(Json::parse(big->body)["error"]["param"], "messages");
  EXPECT_EQ(StatusOf(Post(Request(std::string(100, 'a')))), 200);
}

TEST_F(OpenAiEndpointTest, BearerTokensAsGrpcChecksThem) {
  server_options_.auth_token_file = WriteTokens("0123456789abcdef0123 alice\n");
  Start();
  const auto missing = Post(Request("q"));
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 401);
  EXPECT_EQ(Json::parse(missing->body)["error"]["type"], "authentication_error");
  EXPECT_EQ(StatusOf(http_->Get("/v1/models")), 401);
  EXPECT_EQ(StatusOf(http_->Get("/health")), 200);  // Probes need no token.
  http_->set_bearer_token_auth("0123456789abcdef0124");
  EXPECT_EQ(StatusOf(Post(Request("q"))), 401);
  http_->set_bearer_token_auth("0123456789abcdef0123");
  EXPECT_EQ(StatusOf(Post(Request("q"))), 200);
  EXPECT_EQ(StatusOf(http_->Get("/v1/models")), 200);
  EXPECT_EQ(Requests("UNAUTHENTICATED"), 2);
}

TEST_F(OpenAiEndpointTest, AFullQueueIs429WithRetryAfter) {
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  SchedulerConfig scheduler;
  scheduler.max_running = 1;
  scheduler.max_queued = 1;
  Start(options, scheduler);
  std::thread running([&] { EXPECT_EQ(StatusOf(Post(Request("first"))), 200); });
  hold.WaitEntered();
  httplib::Client second("127.0.0.1", server_->openai_port());
  second.set_read_timeout(kWait);
  std::thread queued([&] {
    EXPECT_EQ(
        StatusOf(second.Post("/v1/chat/completions", Request("second").dump(), "application/json")),
        200);
  });
  ASSERT_TRUE(
      server_->scheduler().WaitFor([](const SchedulerStats& s) { return s.queued == 1; }, kWait));
  httplib::Client third("127.0.0.1", server_->openai_port());
  const auto refused =
      third.Post("/v1/chat/completions", Request("third").dump(), "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 429);
  EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
  EXPECT_EQ(Json::parse(refused->body)["error"]["type"], "rate_limit_error");
  hold.Release();
  running.join();
  queued.join();
}

TEST_F(OpenAiEndpointTest, OneClientsShareCountsItsCallsOnBothProtocols) {
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  server_options_.max_calls_per_client = 1;
  Start(options);
  std::thread grpc_call([&] { EXPECT_TRUE(Generate(Question("first")).status.ok()); });
  hold.WaitEntered();
  const auto refused = Post(Request("second"));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 429);
  hold.Release();
  grpc_call.join();
  EXPECT_EQ(StatusOf(Post(Request("third"))), 200);
}

TEST_F(OpenAiEndpointTest, ATimeoutHeaderIsTheRequestsDeadline) {
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  SchedulerConfig scheduler;
  scheduler.max_running = 1;
  Start(options, scheduler);
  std::thread running([&] { EXPECT_EQ(StatusOf(Post(Request("first"))), 200); });
  hold.WaitEntered();
  httplib::Client late("127.0.0.1", server_->openai_port());
  late.set_read_timeout(kWait);
  std::thread expiring([&] {
    const auto expired = late.Post("/v1/chat/completions", {{"X-Request-Timeout", "0.05"}},
                                   Request("second").dump(), "application/json");
    ASSERT_TRUE(expired);
    EXPECT_EQ(expired->status, 504) << expired->body;
  });
  ASSERT_TRUE(
      server_->scheduler().WaitFor([](const SchedulerStats& s) { return s.queued == 1; }, kWait));
  // The deadline is on the clock: the request arrived before it was queued, so its deadline has
  // passed 50 ms after that; release the step only then.
  const auto queued = Clock::now();
  while (Clock::now() < queued + 60ms) std::this_thread::yield();
  hold.Release();
  running.join();
  expiring.join();
  EXPECT_EQ(Requests("DEADLINE_EXCEEDED"), 1);
}

// The client closes the connection mid-stream: the request ends CANCELLED at the next step and its
// slot is free, long before max_tokens.
TEST_F(OpenAiEndpointTest, AClosedStreamFreesItsSlot) {
  FakeEngineOptions options;
  options.step_delay = 1ms;
  Start(options);
  const int fd = Connect();
  Send(fd, Request("go on", {{"stream", true}, {"max_tokens", 1000}, {"ignore_eos", true}}));
  char buffer[256];
  ASSERT_GT(read(fd, buffer, sizeof(buffer)), 0);  // Headers and the first events: it runs.
  close(fd);
  ASSERT_TRUE(server_->scheduler().WaitFor(
      [](const SchedulerStats& s) { return s.finished == 1 && s.running == 0; }, kWait));
  EXPECT_LT(engine_->decode_calls(), 999);
  EXPECT_EQ(engine_->resident(), 0);
  // EndCall runs on the HTTP thread once the final item is there.
  const auto deadline = Clock::now() + kWait;
  while (Requests("CANCELLED") < 1 && Clock::now() < deadline) std::this_thread::yield();
  EXPECT_EQ(Requests("CANCELLED"), 1);
}

// The same for a non-streamed request, which writes nothing until its end: the connection is
// watched while the request runs.
TEST_F(OpenAiEndpointTest, AClosedConnectionCancelsANonStreamedRequest) {
  FakeEngineOptions options;
  options.step_delay = 1ms;
  Start(options);
  const int fd = Connect();
  Send(fd, Request("go on", {{"max_tokens", 1000}, {"ignore_eos", true}}));
  ASSERT_TRUE(
      server_->scheduler().WaitFor([](const SchedulerStats& s) { return s.running == 1; }, kWait));
  close(fd);
  ASSERT_TRUE(server_->scheduler().WaitFor(
      [](const SchedulerStats& s) { return s.finished == 1 && s.running == 0; }, kWait));
  EXPECT_LT(engine_->decode_calls(), 999);
}

TEST_F(OpenAiEndpointTest, DrainRefusesNewRequestsAndFinishesRunningOnes) {
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  Start(options);
  std::thread running([&] {
    const auto answer = Post(Request("first", {{"stream", true}}));
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 200);
    EXPECT_TRUE(ParseSse(answer->body).done);
  });
  hold.WaitEntered();
  std::thread drain([&] { server_->Shutdown(Clock::now() + kWait); });
  httplib::Client probe("127.0.0.1", server_->openai_port());
  const auto deadline = Clock::now() + kWait;
  int status = 0;
  while (status != 503 && Clock::now() < deadline) {
    const auto health = probe.Get("/health");
    status = health ? health->status : 0;
  }
  EXPECT_EQ(status, 503);
  const auto refused =
      probe.Post("/v1/chat/completions", Request("late").dump(), "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_FALSE(refused->get_header_value("Retry-After").empty());
  hold.Release();
  running.join();
  drain.join();
}

}  // namespace
}  // namespace flexvqa::testing
