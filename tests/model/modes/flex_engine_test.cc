// The engine in flex mode on the tiny FlexAttention fixture: it loads as "flex", runs the 1008
// pipeline, matches the model-level harness (itself checked against the reference in
// flex_parity_test) in tokens and selections alone and batched, honours selection_threshold,
// reports selected HR tokens and frees the state at Release.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>

#include "model/engine.h"
#include "model/modes/flex.h"
#include "model/text/prompt.h"
#include "model/text/tokenizer.h"
#include "model/weights/weights.h"
#include "tests/support/engine_runner.h"
#include "tests/support/flex_fixture.h"

namespace flexvqa {
namespace {

std::unique_ptr<Engine> MakeEngine(const std::string& dir) { return testing::MakeEngine(dir, 4); }

using Result = testing::EngineRun;

std::vector<Result> RunBatch(Engine& engine, const std::vector<GenerationRequest>& requests) {
  std::vector<Result> out = testing::RunInLockstep(engine, requests);
  for (const Result& r : out) EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  return out;
}

class FlexEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = testing::LoadFlexFixture();
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    fixture_ = std::move(*f);
    model_dir_ = fixture_.dir + "/model";
  }

  GenerationRequest Request(int c, const std::string& question, int max_new = 10) {
    GenerationRequest r;
    r.turns.push_back({ChatTurn::Role::kUser, question});
    r.image = ImageInput{testing::ReadFixtureFile(fixture_, fixture_.cases[c].image), "image/png"};
    r.sampling.max_new_tokens = max_new;
    r.sampling.ignore_eos = true;
    return r;
  }

  // The same request through the harness: the prompt as the engine builds it.
  testing::FlexInput HarnessInput(const GenerationRequest& r, int threshold) {
    auto tokenizer = Tokenizer::Load(model_dir_ + "/tokenizer.model");
    EXPECT_TRUE(tokenizer.ok());
    PromptOptions options;
    options.has_image = true;
    options.image_token_id = fixture_.config.image_token_id;
    options.num_image_tokens = fixture_.config.num_image_tokens();
    auto ids = BuildLlavaPrompt(**tokenizer, r.turns, options);
    EXPECT_TRUE(ids.ok());
    testing::FlexInput in;
    in.input_ids = *ids;
    in.image_bytes = r.image->bytes;
    in.threshold = threshold;
    return in;
  }

  testing::FlexFixture fixture_;
  std::string model_dir_;
};

TEST_F(FlexEngineTest, LoadsAsFlex) {
  auto engine = MakeEngine(model_dir_);
  ASSERT_TRUE(engine);
  EXPECT_EQ(engine->Info().mode, "flex");
  EXPECT_EQ(engine->Info().num_image_tokens, 576);
  EXPECT_EQ(fixture_.config.flex.num_sa_layers, 2);
  EXPECT_EQ(fixture_.config.flex.threshold, 48);
  EXPECT_EQ(fixture_.config.flex.highres_size, 1008);
}

TEST_F(FlexEngineTest, MatchesHarnessAloneAndBatched) {
  auto engine = MakeEngine(model_dir_);
  ASSERT_TRUE(engine);
  auto harness = testing::FlexHarness::Open(fixture_.config);
  ASSERT_TRUE(harness.ok());
  std::vector<GenerationRequest> requests = {Request(0, "What is in the picture?"),
                                             Request(1, "Where is the bright spot?", 7),
                                             Request(3, "Describe the image.", 12)};
  requests[1].selection_threshold = 120;
  std::vector<testing::FlexInput> inputs;
  for (const auto& r : requests) {
    inputs.push_back(
        HarnessInput(r, r.selection_threshold.value_or(fixture_.config.flex.threshold)));
  }
  const std::vector<Result> together = RunBatch(*engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const Result alone = RunBatch(*engine, {requests[i]})[0];
    const testing::FlexRun expected =
        (*harness)->Run({inputs[i]}, requests[i].sampling.max_new_tokens)[0];
    std::vector<int32_t> expected_tokens(expected.tokens.begin(), expected.tokens.end());
    EXPECT_EQ(alone.tokens, expected_tokens);
    EXPECT_EQ(together[i].tokens, expected_tokens);
    EXPECT_EQ(alone.trace.masks, expected.trace.masks);
    EXPECT_EQ(together[i].trace.masks, expected.trace.masks);
    EXPECT_EQ(together[i].trace.num_steps, requests[i].sampling.max_new_tokens);
    int64_t total = 0;
    for (int32_t n : expected.trace.selected_tokens) total += n;
    EXPECT_EQ(together[i].report.selected_hr_tokens, total);
    EXPECT_GT(total, 0);
    // FLOPs: every phase ran, and k_proj_hd was paid for once per HR token and FA layer, at
    // admission (no v_proj_hd: values go through the raw features).
    const FlopCount& f = together[i].report.flops;
    for (int phase :
         {FlopCount::kVision, FlopCount::kProjector, FlopCount::kPrefill, FlopCount::kDecode}) {
      double sum = 0;
      for (double x : f.flops[phase]) sum += x;
      EXPECT_GT(sum, 0) << "phase " << phase;
    }
    const double hr = f.flops[FlopCount::kPrefill][FlopCount::kHighResProjections] +
                      f.flops[FlopCount::kDecode][FlopCount::kHighResProjections];
    const double per_row = 2.0 * 64 * 64;  // D = 64, KV Dh = 64.
    EXPECT_EQ(f.flops[FlopCount::kPrefill][FlopCount::kHighResProjections], hr);
    EXPECT_EQ(hr, per_row * 72 * 72 * 2);  // 72 x 72 HR tokens, 2 FA layers.
  }
}

TEST_F(FlexEngineTest, ThresholdIsValidatedAndTextOnlyWorks) {
  auto engine = MakeEngine(model_dir_);
  ASSERT_TRUE(engine);
  GenerationRequest r = Request(0, "What?");
  r.selection_threshold = 256;
  EXPECT_EQ(engine->Prepare(r).status().code(), StatusCode::kInvalidArgument);
  r.selection_threshold = 255;
  const Result none = RunBatch(*engine, {r})[0];
  EXPECT_EQ(none.report.selected_hr_tokens, 0);
  GenerationRequest text = Request(0, "Tell me a story.");
  text.image.reset();
  const Result t = RunBatch(*engine, {text})[0];
  EXPECT_EQ(t.tokens.size(), 10u);
  EXPECT_EQ(t.trace.num_steps, 0);
}

// The slot pools (FlexSlotPools) are written at every admission, a text-only one's too ("no
// image": threshold 255, all bands): a request in a slot that held another image, with another
// threshold, runs and selects as in a fresh engine.
TEST_F(FlexEngineTest, ASlotForgetsItsLastRequest) {
  auto reused = testing::MakeEngine(model_dir_, 1);
  ASSERT_TRUE(reused);
  GenerationRequest text = Request(0, "Tell me a story.", 6);
  text.image.reset();
  GenerationRequest other = Request(1, "Where is the bright spot?", 6);
  other.selection_threshold = 120;
  const std::vector<GenerationRequest> requests = {Request(0, "What is in the picture?", 6), text,
                                                   other};
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    auto fresh = testing::MakeEngine(model_dir_, 1);
    ASSERT_TRUE(fresh);
    const Result expected = RunBatch(*fresh, {requests[i]})[0];
    const Result got = RunBatch(*reused, {requests[i]})[0];
    EXPECT_EQ(got.tokens, expected.tokens);
    EXPECT_EQ(got.trace.masks, expected.trace.masks);
    EXPECT_EQ(got.report.selected_hr_tokens, expected.report.selected_hr_tokens);
  }
}

// What a slot holds after Write and Clear, and the scratch slot from the start: a slot without an
// image selects nothing (threshold 255) and reads only the pad column (every cell a band cell),
// whatever stale keys and features it keeps (a long text-only prompt would otherwise select
// blocks of the slot's last image).
TEST_F(FlexEngineTest, SlotPoolsWriteAndClearASlot) {
  auto weights = WeightLoader::Open(fixture_.config);
  ASSERT_TRUE(weights.ok()) << weights.status().ToString();
  auto projections =
      HighResProjections::Load(**weights, fixture_.config, at::kFloat, at::Device(at::kCPU));
  ASSERT_TRUE(projections.ok()) << projections.status().ToString();
  const int64_t d = fixture_.config.text.hidden_size, t = int64_t{72} * 72;
  FlexSlotPools pools(**projections, /*num_slots=*/2, d);
  auto no_image = [&](int slot) {
    EXPECT_EQ(pools.threshold[slot].item<float>(), 255.0f) << "slot " << slot;
    EXPECT_TRUE(pools.band[slot].all().item<bool>()) << "slot " << slot;
  };
  for (int slot = 0; slot < 3; ++slot) no_image(slot);  // Slots 0, 1 and the scratch slot 2.
  at::manual_seed(3);
  const at::Tensor features = at::randn({t, d});
  // A 64 x 40 image pads 24 x 24 cells top and bottom: some cells are bands, not all.
  pools.Write(1, features, /*image_begin=*/7, /*width=*/64, /*height=*/40, /*threshold=*/48);
  EXPECT_EQ(pools.threshold[1].item<float>(), 48.0f);
  EXPECT_EQ(pools.image_begin[1].item<int64_t>(), 7);
  EXPECT_TRUE(pools.band[1].any().item<bool>());
  EXPECT_FALSE(pools.band[1].all().item<bool>());
  EXPECT_TRUE(pools.features[1].equal(features));
  EXPECT_GT(pools.keys.select(1, 1).abs().sum().item<double>(), 0);
  no_image(0);
  no_image(2);
  pools.Clear(1);
  no_image(1);
  EXPECT_EQ(pools.image_begin[1].item<int64_t>(), 0);
  EXPECT_EQ(pools.bytes_per_slot(), t * d * 4 + 2 * t * 64 * 4 + 24 * 24 + 8 + 4);
  EXPECT_EQ(pools.bytes(), 3 * pools.bytes_per_slot());
}

TEST_F(FlexEngineTest, HighResMemoryIsHeldWhileRunningAndFreedAtRelease) {
  auto engine = MakeEngine(model_dir_);
  ASSERT_TRUE(engine);
  auto prepared = engine->Prepare(Request(0, "What is in the picture?", 3));
  ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
  auto id = engine->Admit(*prepared);
  ASSERT_TRUE(id.ok());
  std::vector<TokenEvent> events;
  engine->Prefill({*id}, &events);
  const EngineMemory running = engine->Memory();
  // The slot's raw HR features and both FA layers' HR keys (72 x 72 tokens, D = KV Dh = 64,
  // fp32), the 24 x 24 band mask, the image offset (int64) and threshold (fp32); nothing grows
  // per step.
  const int64_t tokens = int64_t{72} * 72, d = fixture_.config.text.hidden_size;
  EXPECT_EQ(running.hr_cache_bytes, tokens * d * 4 + 2 * tokens * 64 * 4 + 24 * 24 + 8 + 4);
  engine->Decode({*id}, &events);
  EXPECT_EQ(engine->Memory().hr_cache_bytes, running.hr_cache_bytes);
  engine->Release(*id);
  EXPECT_EQ(engine->Memory().hr_cache_bytes, 0);
  EXPECT_EQ(engine->Memory().kv_cache_used_bytes, 0);
}

}  // namespace
}  // namespace flexvqa
