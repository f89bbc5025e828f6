// The service tests' fake engine and the real LLaVA engine (tiny checkpoints, full and flex) give
// the same bad request the same status code and message: both call model/request_validation.h.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "model/engine.h"
#include "tests/server/fake_engine.h"
#include "tests/support/tiny_model.h"

namespace flexvqa {
namespace {

ChatTurn User(std::string text) { return {ChatTurn::Role::kUser, std::move(text)}; }
ChatTurn Assistant(std::string text) { return {ChatTurn::Role::kAssistant, std::move(text)}; }

struct BadRequest {
  std::string name;
  std::function<void(GenerationRequest*)> spoil;
};

std::vector<BadRequest> BadRequests() {
  const auto turns = [](std::vector<ChatTurn> t) {
    return [t](GenerationRequest* r) { r->turns = t; };
  };
  const auto sampling = [](std::function<void(SamplingParams*)> f) {
    return [f](GenerationRequest* r) { f(&r->sampling); };
  };
  return {
      {"no turns", turns({})},
      {"assistant first", turns({Assistant("a"), User("q")})},
      {"two user turns", turns({User("a"), User("b")})},
      {"assistant last", turns({User("q"), Assistant("a")})},
      {"empty turn", turns({User("")})},
      {"blank answer", turns({User("q"), Assistant(" \n"), User("q")})},
      {"invalid UTF-8 turn", turns({User("caf\xC3")})},
      {"surrogate in a turn", turns({User("a\xED\xA0\x80")})},
      {"image placeholder", turns({User("<image> what?")})},
      {"max_new_tokens 0", sampling([](SamplingParams* s) { s->max_new_tokens = 0; })},
      {"max_new_tokens huge", sampling([](SamplingParams* s) { s->max_new_tokens = 1 << 30; })},
      {"negative temperature", sampling([](SamplingParams* s) { s->temperature = -1; })},
      {"NaN temperature", sampling([](SamplingParams* s) { s->temperature = std::nanf(""); })},
      {"top_p 0", sampling([](SamplingParams* s) { s->top_p = 0; })},
      {"top_p 2", sampling([](SamplingParams* s) { s->top_p = 2; })},
      {"negative top_k", sampling([](SamplingParams* s) { s->top_k = -1; })},
      {"repetition_penalty 0", sampling([](SamplingParams* s) { s->repetition_penalty = 0; })},
      {"too many stop strings", sampling([](SamplingParams* s) { s->stop.assign(9, "x"); })},
      {"empty stop string", sampling([](SamplingParams* s) { s->stop = {""}; })},
      {"long stop string", sampling([](SamplingParams* s) { s->stop = {std::string(65, 'x')}; })},
      // The fake's own check used to accept these two.
      {"invalid UTF-8 stop string", sampling([](SamplingParams* s) {
         s->stop = {"ok", "\xC3"};
       })},
      {"surrogate stop string", sampling([](SamplingParams* s) { s->stop = {"\xED\xA0\x80"}; })},
      {"bad conversation and bad sampling",
       [](GenerationRequest* r) {
         r->turns = {Assistant("a")};
         r->sampling.top_p = 0;
       }},
      {"threshold -1", [](GenerationRequest* r) { r->selection_threshold = -1; }},
      {"threshold 300", [](GenerationRequest* r) { r->selection_threshold = 300; }},
  };
}

std::unique_ptr<Engine> RealEngine(const std::string& dir) {
  EngineOptions options;
  options.model_dir = dir;
  options.max_sequences = 1;
  auto engine = CreateLlavaEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

void ExpectSameVerdicts(const Engine& real) {
  testing::FakeEngineOptions fake_options;
  fake_options.mode = real.Info().mode;
  fake_options.limits = real.Info().limits;
  fake_options.context_length = real.Info().context_length;
  const testing::FakeEngine fake(fake_options);
  int rejected = 0;
  for (const BadRequest& bad : BadRequests()) {
    GenerationRequest request;
    request.turns = {User("What is this?")};
    request.sampling.max_new_tokens = 4;
    bad.spoil(&request);
    const Status from_real = real.Prepare(request).status();
    const Status from_fake = fake.Prepare(request).status();
    EXPECT_EQ(from_real.code(), StatusCode::kInvalidArgument)
        << bad.name << ": " << from_real.ToString();
    EXPECT_EQ(from_fake.code(), from_real.code()) << bad.name;
    EXPECT_EQ(from_fake.message(), from_real.message()) << bad.name;
    rejected += from_real.code() == StatusCode::kInvalidArgument;
  }
  EXPECT_EQ(rejected, static_cast<int>(BadRequests().size()));
  GenerationRequest good;
  good.turns = {User("What is this?")};
  good.sampling.max_new_tokens = 4;
  EXPECT_TRUE(real.Prepare(good).ok());
  EXPECT_TRUE(fake.Prepare(good).ok());
}

TEST(EngineValidationTest, FakeAndRealFullEngineAgree) {
  auto real = RealEngine(testing::TinyModelDir());
  ASSERT_NE(real, nullptr);
  ASSERT_EQ(real->Info().mode, "full");
  ExpectSameVerdicts(*real);
  // A threshold at all is wrong for a full model, in either engine, in the same words.
  GenerationRequest request;
  request.turns = {User("q")};
  request.selection_threshold = 10;
  const testing::FakeEngine fake;
  EXPECT_EQ(fake.Prepare(request).status().message(), real->Prepare(request).status().message());
  EXPECT_EQ(real->Prepare(request).status().code(), StatusCode::kInvalidArgument);
}

TEST(EngineValidationTest, FakeAndRealFlexEngineAgree) {
  char dir_template[] = "/tmp/flexvqa_engine_validation_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = std::string(dir_template) + "/flex";
  ASSERT_TRUE(WriteTinyLlava(dir, TinyFlexLlavaOptions()).ok());
  auto real = RealEngine(dir);
  ASSERT_NE(real, nullptr);
  ASSERT_EQ(real->Info().mode, "flex");
  ExpectSameVerdicts(*real);
}

}  // namespace
}  // namespace flexvqa
