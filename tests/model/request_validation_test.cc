// Every rule of model/request_validation.h, each with a request that breaks it and one at its
// edge that passes.
#include "model/request_validation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace flexvqa {
namespace {

ChatTurn User(std::string text) { return {ChatTurn::Role::kUser, std::move(text)}; }
ChatTurn Assistant(std::string text) { return {ChatTurn::Role::kAssistant, std::move(text)}; }

void ExpectInvalid(const Status& status, const std::string& message_part) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find(message_part), std::string::npos) << status.message();
}

Status Conversation(const std::vector<ChatTurn>& turns) {
  return ValidateConversation(turns, EngineLimits{});
}

TEST(ConversationValidationTest, AcceptsValidConversations) {
  EXPECT_TRUE(Conversation({User("What is this?")}).ok());
  EXPECT_TRUE(Conversation({User("Où? 😀 中")}).ok());
  EXPECT_TRUE(Conversation({User("a"), Assistant("b"), User("c")}).ok());
  EXPECT_TRUE(Conversation({User(" x ")}).ok());
  EXPECT_TRUE(Conversation({User("<imag> and image> are fine")}).ok());
}

TEST(ConversationValidationTest, TurnsAndOrder) {
  ExpectInvalid(Conversation({}), "no turns");
  ExpectInvalid(Conversation({Assistant("Hello")}), "turn 0 must be the user's");
  ExpectInvalid(Conversation({User("a"), User("b")}), "turn 1 must be the assistant's");
  ExpectInvalid(Conversation({User("a"), Assistant("b"), Assistant("c")}),
                "turn 2 must be the user's");
  ExpectInvalid(Conversation({User("What?"), Assistant("That.")}), "last turn must be the user's");
}

TEST(ConversationValidationTest, EmptyAndBlankText) {
  ExpectInvalid(Conversation({User("")}), "turn 0 is empty");
  ExpectInvalid(Conversation({User("   \n\t\r\f\v ")}), "turn 0 is empty");
  ExpectInvalid(Conversation({User("ok"), Assistant(" "), User("ok")}), "turn 1 is empty");
  ExpectInvalid(Conversation({User("ok"), Assistant("b"), User("")}), "turn 2 is empty");
}

TEST(ConversationValidationTest, Utf8) {
  ExpectInvalid(Conversation({User("bad \xC3\x28 byte")}),
                "turn 0 is not valid UTF-8 (first bad byte at offset 4)");
  ExpectInvalid(Conversation({User("ok"), Assistant("cut \xF0\x9F"), User("ok")}),
                "turn 1 is not valid UTF-8 (first bad byte at offset 4)");
  ExpectInvalid(Conversation({User("\xC0\xAF")}), "not valid UTF-8");      // Overlong.
  ExpectInvalid(Conversation({User("\xED\xA0\x80")}), "not valid UTF-8");  // Surrogate.
  ExpectInvalid(Conversation({User("\xF4\x90\x80\x80")}), "not valid UTF-8");
  ExpectInvalid(Conversation({User("\xFF")}), "not valid UTF-8");
}

TEST(ConversationValidationTest, ImagePlaceholderIsReserved) {
  ExpectInvalid(Conversation({User("<image>\nWhat is this?")}), "image field");
  ExpectInvalid(Conversation({User("ok"), Assistant("see <image>"), User("ok")}),
                "turn 1 contains");
}

SamplingParams Sampling() { return SamplingParams{}; }

TEST(SamplingValidationTest, DefaultsAndEdgesAreValid) {
  const EngineLimits limits;
  EXPECT_TRUE(ValidateSampling(Sampling(), limits).ok());
  SamplingParams s;
  s.max_new_tokens = limits.max_new_tokens;
  s.temperature = 0;
  s.top_p = 1;
  s.top_k = 0;
  s.repetition_penalty = 1e-6f;
  s.stop.assign(limits.max_stop_strings, std::string(limits.max_stop_string_bytes, 'x'));
  EXPECT_TRUE(ValidateSampling(s, limits).ok());
  s.max_new_tokens = 1;
  s.top_p = 1e-6f;
  s.top_k = 1;
  s.temperature = 100;
  s.stop = {"\xC3\xA9", "😀"};
  EXPECT_TRUE(ValidateSampling(s, limits).ok());
}

TEST(SamplingValidationTest, MaxNewTokens) {
  EngineLimits limits;
  limits.max_new_tokens = 50;
  for (int bad : {0, -1, 51, std::numeric_limits<int>::max()}) {
    SamplingParams s;
    s.max_new_tokens = bad;
    ExpectInvalid(ValidateSampling(s, limits), "max_new_tokens must be between 1 and 50");
  }
}

TEST(SamplingValidationTest, Ranges) {
  const float nan = std::nanf("");
  const float inf = std::numeric_limits<float>::infinity();
  const EngineLimits limits;
  for (float t : {-0.1f, nan, inf, -inf}) {
    SamplingParams s;
    s.temperature = t;
    ExpectInvalid(ValidateSampling(s, limits), "temperature");
  }
  for (float p : {0.0f, -0.5f, 1.0001f, nan, inf}) {
    SamplingParams s;
    s.top_p = p;
    ExpectInvalid(ValidateSampling(s, limits), "top_p must be in (0, 1]");
  }
  SamplingParams k;
  k.top_k = -1;
  ExpectInvalid(ValidateSampling(k, limits), "top_k must be >= 0");
  for (float r : {0.0f, -1.0f, nan, inf}) {
    SamplingParams s;
    s.repetition_penalty = r;
    ExpectInvalid(ValidateSampling(s, limits), "repetition_penalty");
  }
}

TEST(SamplingValidationTest, StopStrings) {
  EngineLimits limits;
  limits.max_stop_strings = 2;
  limits.max_stop_string_bytes = 4;
  SamplingParams s;
  s.stop = {"a", "b", "c"};
  ExpectInvalid(ValidateSampling(s, limits), "at most 2 stop strings");
  s.stop = {""};
  ExpectInvalid(ValidateSampling(s, limits), "1 to 4 bytes");
  s.stop = {"abcde"};
  ExpectInvalid(ValidateSampling(s, limits), "1 to 4 bytes");
  s.stop = {"ok", "\xC3"};  // A truncated character.
  ExpectInvalid(ValidateSampling(s, limits),
                "stop string 1 is not valid UTF-8 (first bad byte at offset 0)");
  s.stop = {"a\xED\xA0\x80"};  // A surrogate: what the fake engine's old check let through.
  ExpectInvalid(ValidateSampling(s, limits), "stop string 0 is not valid UTF-8");
  s.stop = {"\xC0\xAF"};  // Overlong.
  ExpectInvalid(ValidateSampling(s, limits), "not valid UTF-8");
}

ModelInfo Model(const std::string& mode) {
  ModelInfo info;
  info.mode = mode;
  return info;
}

GenerationRequest Question() {
  GenerationRequest r;
  r.turns = {User("What is this?")};
  return r;
}

TEST(RequestValidationTest, SelectionThreshold) {
  GenerationRequest r = Question();
  EXPECT_TRUE(ValidateRequest(r, Model("full"), false).ok());
  EXPECT_TRUE(ValidateRequest(r, Model("flex"), true).ok());
  r.selection_threshold = 10;
  ExpectInvalid(ValidateRequest(r, Model("hd"), false),
                "selection_threshold applies to FlexAttention models only; this model's attention "
                "mode is 'hd'");
  for (int ok : {0, 48, 255}) {
    r.selection_threshold = ok;
    EXPECT_TRUE(ValidateRequest(r, Model("flex"), true).ok()) << ok;
  }
  for (int bad : {-1, 256, std::numeric_limits<int>::max()}) {
    r.selection_threshold = bad;
    ExpectInvalid(ValidateRequest(r, Model("flex"), true),
                  "selection_threshold must be between 0 and 255, got " + std::to_string(bad));
  }
}

TEST(RequestValidationTest, ChecksInOrderConversationSamplingThreshold) {
  GenerationRequest r;
  r.sampling.top_p = 0;
  r.selection_threshold = 999;
  ExpectInvalid(ValidateRequest(r, Model("full"), false), "no turns");
  r.turns = {User("q")};
  ExpectInvalid(ValidateRequest(r, Model("full"), false), "top_p");
  r.sampling.top_p = 1;
  ExpectInvalid(ValidateRequest(r, Model("full"), false), "FlexAttention models only");
}

TEST(RequestValidationTest, UsesTheModelsLimits) {
  ModelInfo model = Model("full");
  model.limits.max_new_tokens = 4;
  GenerationRequest r = Question();
  r.sampling.max_new_tokens = 5;
  ExpectInvalid(ValidateRequest(r, model, false), "between 1 and 4");
  r.sampling.max_new_tokens = 4;
  EXPECT_TRUE(ValidateRequest(r, model, false).ok());
}

}  // namespace
}  // namespace flexvqa
