// The OpenAI conversion layer: request bodies into v1::GenerateRequest, refusals naming the field,
// the Status -> HTTP error map, and the response and chunk shapes.
#include "server/openai_api.h"

#include <gtest/gtest.h>

#include <string>

namespace flexvqa {
namespace {

using Json = nlohmann::json;

constexpr char kModel[] = "tiny-llava";

// base64 of the bytes "\x89PNG\r\n" and of "abc".
constexpr char kPngHeaderBase64[] = "iVBORw0K";

std::string Body(Json extra) {
  Json body = {{"model", kModel}, {"messages", {{{"role", "user"}, {"content", "what is it?"}}}}};
  if (!extra.is_null()) body.update(extra);
  return body.dump();
}

ChatRequest Parse(const std::string& body) {
  ChatRequest out;
  const std::optional<OpenAiError> error = ParseChatRequest(body, kModel, &out);
  EXPECT_FALSE(error.has_value()) << (error ? error->message : "");
  return out;
}

OpenAiError Refusal(const std::string& body) {
  ChatRequest out;
  std::optional<OpenAiError> error = ParseChatRequest(body, kModel, &out);
  EXPECT_TRUE(error.has_value()) << body;
  return error.value_or(OpenAiError{});
}

TEST(OpenAiApiTest, StringContentIsOneUserTurnWithOpenAiDefaults) {
  const ChatRequest chat = Parse(Body({}));
  ASSERT_EQ(chat.request.turns_size(), 1);
  EXPECT_EQ(chat.request.turns(0).role(), v1::ChatTurn::ROLE_USER);
  EXPECT_EQ(chat.request.turns(0).text(), "what is it?");
  EXPECT_EQ(chat.request.images_size(), 0);
  EXPECT_FALSE(chat.stream);
  // OpenAI samples at temperature 1 when it is unset; max tokens stay the engine's default.
  EXPECT_EQ(chat.request.sampling().temperature(), 1.0f);
  EXPECT_FALSE(chat.request.sampling().has_max_new_tokens());
}

TEST(OpenAiApiTest, PartsJoinTextAndDecodeTheDataUrl) {
  const Json messages = {
      {{"role", "system"}, {"content", "Be brief."}},
      {{"role", "user"},
       {"content",
        {{{"type", "image_url"},
          {"image_url", {{"url", std::string("data:image/png;base64,") + kPngHeaderBase64}}}},
         {{"type", "text"}, {"text", "what"}},
         {{"type", "text"}, {"text", "is it?"}}}}},
      {{"role", "assistant"}, {"content", "a cat"}},
      {{"role", "user"}, {"content", "which colour?"}}};
  const ChatRequest chat = Parse(Body({{"messages", messages}}));
  ASSERT_EQ(chat.request.images_size(), 1);
  EXPECT_EQ(chat.request.images(0).data(), std::string("\x89PNG\r\n", 6));
  EXPECT_EQ(chat.request.images(0).mime_type(), "image/png");
  EXPECT_EQ(chat.image_param, "messages[1].content[0].image_url");
  ASSERT_EQ(chat.request.turns_size(), 3);
  // The system text joins the first user turn: LLaVA's templates have no system turn.
  EXPECT_EQ(chat.request.turns(0).text(), "Be brief.\n\nwhat\nis it?");
  EXPECT_EQ(chat.request.turns(1).role(), v1::ChatTurn::ROLE_ASSISTANT);
  EXPECT_EQ(chat.request.turns(2).text(), "which colour?");
}

TEST(OpenAiApiTest, SamplingFieldsMapOntoTheGrpcRequest) {
  const ChatRequest chat = Parse(Body({{"max_tokens", 7},
                                       {"max_completion_tokens", 9},
                                       {"temperature", 0},
                                       {"top_p", 0.5},
                                       {"seed", 42},
                                       {"stop", {"END", "STOP"}},
                                       {"stream", true},
                                       {"stream_options", {{"include_usage", true}}},
                                       {"n", 1},
                                       {"logprobs", false}}));
  const v1::SamplingParams& s = chat.request.sampling();
  EXPECT_EQ(s.max_new_tokens(), 9);  // max_completion_tokens supersedes max_tokens.
  EXPECT_EQ(chat.max_tokens_param, "max_completion_tokens");
  EXPECT_EQ(s.temperature(), 0.0f);
  EXPECT_EQ(s.top_p(), 0.5f);
  EXPECT_EQ(s.seed(), 42u);
  ASSERT_EQ(s.stop_size(), 2);
  EXPECT_EQ(s.stop(1), "STOP");
  EXPECT_TRUE(chat.stream);
  EXPECT_TRUE(chat.include_usage);
  EXPECT_EQ(Parse(Body({{"stop", "END"}})).request.sampling().stop(0), "END");
  EXPECT_EQ(Parse(Body({{"max_tokens", 5}})).max_tokens_param, "max_tokens");
}

TEST(OpenAiApiTest, RefusesWhatItDoesNotImplementNamingTheField) {
  struct Case {
    Json extra;
    const char* param;
  };
  const Case cases[] = {
      {{{"n", 2}}, "n"},
      {{{"logprobs", true}}, "logprobs"},
      {{{"top_logprobs", 2}}, "top_logprobs"},
      {{{"tools", {{{"type", "function"}}}}}, "tools"},
      {{{"tool_choice", "auto"}}, "tool_choice"},
      {{{"response_format", {{"type", "json_object"}}}}, "response_format"},
      {{{"presence_penalty", 0.5}}, "presence_penalty"},
      {{{"model", "gpt-4o"}}, "model"},
      {{{"temperature", "hot"}}, "temperature"},
      {{{"max_tokens", 1.5}}, "max_tokens"},
      {{{"stop", {1, 2}}}, "stop"},
      {{{"stream", "yes"}}, "stream"},
      {{{"messages", Json::array()}}, "messages"},
      {{{"messages", {{{"role", "tool"}, {"content", "x"}}}}}, "messages[0].role"},
      {{{"messages", {{{"role", "system"}, {"content", "x"}}}}}, "messages"},
      {{{"messages", {{{"role", "user"}, {"content", {{{"type", "input_audio"}}}}}}}},
       "messages[0].content[0].type"},
  };
  for (const Case& c : cases) {
    const OpenAiError error = Refusal(Body(c.extra));
    EXPECT_EQ(error.http_status, 400) << c.extra.dump();
    EXPECT_EQ(error.type, "invalid_request_error");
    EXPECT_EQ(error.param, c.param) << c.extra.dump();
  }
  EXPECT_EQ(Refusal(Body({{"model", "gpt-4o"}})).code, "model_not_found");
  EXPECT_EQ(Refusal(Body({{"model", nullptr}})).param, "model");
}

Json ImageMessage(const std::string& url) {
  return {{{"role", "user"},
           {"content",
            {{{"type", "image_url"}, {"image_url", {{"url", url}}}},
             {{"type", "text"}, {"text", "q"}}}}}};
}

TEST(OpenAiApiTest, RefusesRemoteAndMalformedImageUrls) {
  const std::string param = "messages[0].content[0].image_url";
  for (const char* url : {"http://169.254.169.254/latest/meta-data", "HTTPS://example.com/a.png"}) {
    const OpenAiError error = Refusal(Body({{"messages", ImageMessage(url)}}));
    EXPECT_EQ(error.param, param);
    EXPECT_EQ(error.code, "invalid_image_url");
    EXPECT_NE(error.message.find("not fetched"), std::string::npos) << error.message;
  }
  for (const char* url :
       {"data:image/gif;base64,R0lGOD", "file:///etc/passwd", "data:image/png;base64,not*base64",
        "data:image/png;base64,abc", "data:image/png;base64,"}) {
    EXPECT_EQ(Refusal(Body({{"messages", ImageMessage(url)}})).param, param) << url;
  }
  // A second image: LLaVA-1.5 takes one.
  Json two = ImageMessage(std::string("data:image/png;base64,") + kPngHeaderBase64);
  two[0]["content"].push_back(two[0]["content"][0]);
  EXPECT_EQ(Refusal(Body({{"messages", two}})).param, "messages[0].content[2].image_url");
  // Images in a system or assistant message.
  Json system = ImageMessage(std::string("data:image/png;base64,") + kPngHeaderBase64);
  system[0]["role"] = "assistant";
  EXPECT_EQ(Refusal(Body({{"messages", system}})).param, "messages[0].content[0].image_url");
}

TEST(OpenAiApiTest, RefusesBodiesThatAreNotARequest) {
  EXPECT_EQ(Refusal("{\"model\": ").http_status, 400);
  EXPECT_EQ(Refusal("[1, 2]").http_status, 400);
  EXPECT_EQ(Refusal("").http_status, 400);
  // Nesting limit: deeper than any request, refused without building the tree.
  std::string deep = "{\"model\": \"tiny-llava\", \"x\": ";
  for (int i = 0; i < 100000; ++i) deep += '[';
  const OpenAiError error = Refusal(deep);
  EXPECT_NE(error.message.find("nests deeper"), std::string::npos) << error.message;
}

TEST(OpenAiApiTest, TimeoutHeaderIsPositiveSeconds) {
  EXPECT_EQ(ParseTimeoutSeconds("2.5").value(), std::chrono::milliseconds(2500));
  EXPECT_EQ(ParseTimeoutSeconds("600").value(), std::chrono::milliseconds(600'000));
  for (const char* bad : {"", "0", "-1", "abc", "1s", "nan", "inf", "1e300"}) {
    EXPECT_EQ(ParseTimeoutSeconds(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(OpenAiApiTest, ErrorForMapsEveryCodeOnce) {
  struct Case {
    Status status;
    int http;
    const char* type;
    int retry_after;
  };
  const Case cases[] = {
      {InvalidArgumentError("x"), 400, "invalid_request_error", 0},
      {UnauthenticatedError("x"), 401, "authentication_error", 0},
      {ResourceExhaustedError("queue full"), 429, "rate_limit_error", 1},
      {UnavailableError("draining"), 503, "service_unavailable", 1},
      {DeadlineExceededError("late"), 504, "timeout", 0},
      {CancelledError("gone"), 499, "cancelled", 0},
      {InternalError("boom"), 500, "server_error", 0},
  };
  for (const Case& c : cases) {
    const OpenAiError error = ErrorFor(c.status, nullptr);
    EXPECT_EQ(error.http_status, c.http) << c.status.ToString();
    EXPECT_EQ(error.type, c.type);
    EXPECT_EQ(error.retry_after_s, c.retry_after);
  }
  const Json body = ErrorBody(ErrorFor(ResourceExhaustedError("queue full"), nullptr));
  EXPECT_EQ(body["error"]["message"], "queue full");
  EXPECT_EQ(body["error"]["code"], "rate_limit_exceeded");
  EXPECT_TRUE(body["error"]["param"].is_null());
}

TEST(OpenAiApiTest, EngineRefusalsNameTheOpenAiField) {
  ChatRequest chat;
  chat.max_tokens_param = "max_tokens";
  chat.image_param = "messages[0].content[0].image_url";
  auto param = [&chat](const std::string& message) {
    return ErrorFor(InvalidArgumentError(message), &chat).param;
  };
  EXPECT_EQ(param("max_new_tokens must be between 1 and 1024, got 5000"), "max_tokens");
  EXPECT_EQ(param("temperature must be a finite number >= 0 (0 means greedy), got -1"),
            "temperature");
  EXPECT_EQ(param("top_p must be in (0, 1], got 2"), "top_p");
  EXPECT_EQ(param("at most 8 stop strings are allowed, got 9"), "stop");
  EXPECT_EQ(param("each stop string must be 1 to 64 bytes long"), "stop");
  EXPECT_EQ(param("turn 0 is empty or only whitespace"), "messages");
  EXPECT_EQ(param("corrupt PNG: bad header"), chat.image_param);
  EXPECT_EQ(param("something else"), "");
}

StreamItem Final(FinishReason reason) {
  StreamItem item;
  item.final = true;
  item.reason = reason;
  item.usage.prompt_tokens = 30;
  item.usage.image_tokens = 16;
  item.usage.generated_tokens = 4;
  item.flops.flops[FlopCount::kVision][FlopCount::kMlp] = 5000;
  item.flops.flops[FlopCount::kDecode][FlopCount::kAttention] = 40;
  item.timings.first_token_ms = 12.5;
  return item;
}

TEST(OpenAiApiTest, CompletionCarriesUsageAndOurFigures) {
  const Json body =
      CompletionBody("chatcmpl-o1", 1700000000, kModel, "a cat", Final(FinishReason::kLength));
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "a cat");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 30);
  EXPECT_EQ(body["usage"]["completion_tokens"], 4);
  EXPECT_EQ(body["usage"]["total_tokens"], 34);
  EXPECT_EQ(body["flexvqa"]["flops_by_phase"]["vision"], 5000);
  EXPECT_EQ(body["flexvqa"]["flops_by_phase"]["decode"], 40);
  EXPECT_EQ(body["flexvqa"]["flops"], 5040);
  EXPECT_EQ(body["flexvqa"]["timings_ms"]["first_token"], 12.5);
  EXPECT_EQ(
      CompletionBody("i", 0, kModel, "", Final(FinishReason::kStop))["choices"][0]["finish_reason"],
      "stop");
}

TEST(OpenAiApiTest, ChunksFollowOpenAisStreamShape) {
  const Json first = ChunkBody("i", 1, kModel, true, "", nullptr, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());
  const Json text = ChunkBody("i", 1, kModel, false, "cat", nullptr, false);
  EXPECT_FALSE(text["choices"][0]["delta"].contains("role"));
  EXPECT_FALSE(text.contains("usage"));
  const StreamItem final_item = Final(FinishReason::kStop);
  const Json last = ChunkBody("i", 1, kModel, false, "", &final_item, false);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(last["flexvqa"]["image_tokens"], 16);
  const Json usage = UsageChunkBody("i", 1, kModel, final_item);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 34);
  // One event per line pair: a newline in the text stays escaped.
  const std::string event = SseEvent(ChunkBody("i", 1, kModel, false, "a\nb", nullptr, false));
  EXPECT_EQ(event.rfind("data: {", 0), 0u);
  EXPECT_EQ(event.find('\n'), event.size() - 2);
}

}  // namespace
}  // namespace flexvqa
