// The fake engine itself: deterministic, batch-independent, validating like the real one.
#include "tests/server/fake_engine.h"

#include <gtest/gtest.h>

#include "tests/server/test_images.h"

namespace flexvqa::testing {
namespace {

GenerationRequest Question(const std::string& text, uint64_t seed = 0, float temperature = 0) {
  GenerationRequest request;
  request.turns.push_back({ChatTurn::Role::kUser, text});
  request.sampling.seed = seed;
  request.sampling.temperature = temperature;
  request.sampling.max_new_tokens = 24;
  return request;
}

TEST(FakeEngineTest, SameRequestSameOutput) {
  FakeEngine engine;
  auto a = GenerateDirect(engine, Question("what is this?", 7, 0.8f));
  auto b = GenerateDirect(engine, Question("what is this?", 7, 0.8f));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->token_ids, b->token_ids);
  EXPECT_EQ(a->text, b->text);
  EXPECT_FALSE(a->token_ids.empty());
  auto c = GenerateDirect(engine, Question("what is this?", 8, 0.8f));
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->token_ids, c->token_ids);
  EXPECT_EQ(engine.resident(), 0);
}

TEST(FakeEngineTest, BatchingDoesNotChangeTokens) {
  FakeEngine engine;
  auto alone = GenerateDirect(engine, Question("first"));
  ASSERT_TRUE(alone.ok());
  auto p1 = engine.Prepare(Question("first"));
  auto p2 = engine.Prepare(Question("second"));
  ASSERT_TRUE(p1.ok() && p2.ok());
  SequenceId s1 = *engine.Admit(*p1), s2 = *engine.Admit(*p2);
  std::vector<TokenEvent> events;
  engine.Prefill({s1, s2}, &events);
  std::vector<int32_t> tokens;
  while (true) {
    bool done = false;
    for (const TokenEvent& e : events) {
      if (e.sequence == s1) {
        tokens.push_back(e.token_id);
        done = e.finished;
      }
    }
    if (done) break;
    events.clear();
    engine.Decode({s1, s2}, &events);
  }
  EXPECT_EQ(tokens, alone->token_ids);
}

TEST(FakeEngineTest, ValidatesLikeTheRealEngine) {
  FakeEngine engine;
  auto bad = [&](GenerationRequest r) { return engine.Prepare(r).status().code(); };
  GenerationRequest r = Question("q");
  r.sampling.max_new_tokens = 0;
  EXPECT_EQ(bad(r), StatusCode::kInvalidArgument);
  r = Question("q");
  r.sampling.top_p = 0;
  EXPECT_EQ(bad(r), StatusCode::kInvalidArgument);
  r = Question("\xff\xfe");
  EXPECT_EQ(bad(r), StatusCode::kInvalidArgument);
  r = Question("q");
  r.image = ImageInput{MakePng(8, 8).substr(0, 40), ""};
  EXPECT_EQ(bad(r), StatusCode::kInvalidArgument);
  r.image = ImageInput{PngClaiming(60000, 60000), ""};
  EXPECT_EQ(bad(r), StatusCode::kInvalidArgument);
  r.image = ImageInput{MakeJpeg(8, 8), "image/png"};
  EXPECT_EQ(bad(r), StatusCode::kInvalidArgument);
  r.image = ImageInput{MakeJpeg(8, 8), "image/jpeg"};
  EXPECT_TRUE(engine.Prepare(r).ok());
  r.image = ImageInput{MakePng(8, 8), ""};
  auto prepared = engine.Prepare(r);
  ASSERT_TRUE(prepared.ok());
  EXPECT_EQ((*prepared)->image_tokens, 16);
}

}  // namespace
}  // namespace flexvqa::testing
