// The encoder cache in the LLaVA engine (EngineOptions::encoder_cache_bytes), for full and flex on
// tiny checkpoints: a second turn about the same image skips the tower (no vision FLOPs, vision_ms
// 0, a hit) and answers as an engine without the cache; two identical images in one prefill encode
// once; the bound evicts by bytes in LRU order; 0 turns it off; a negative bound is refused.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/engine.h"
#include "tests/support/engine_runner.h"
#include "tests/support/tiny_model.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

using Outcome = testing::EngineRun;
using Use = EncoderCacheUse;

std::string ModelDir(const std::string& mode) {
  if (mode == "full") return testing::TinyModelDir();
  static const std::string dir = [] {
    const std::string d =
        ::testing::TempDir() + "flexvqa_enccache_flex_" + std::to_string(getpid());
    const Status status = WriteTinyLlava(d, TinyFlexLlavaOptions());
    EXPECT_TRUE(status.ok()) << status.ToString();
    return d;
  }();
  return dir;
}

std::unique_ptr<Engine> MakeEngine(const std::string& mode, int64_t cache_bytes) {
  EngineOptions options;
  options.model_dir = ModelDir(mode);
  options.max_sequences = 4;
  options.encoder_cache_bytes = cache_bytes;
  auto engine = CreateLlavaEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return engine.ok() ? std::move(*engine) : nullptr;
}

const std::string& Photo() {
  static const std::string bytes =
      testing::ReadSourceFile("tests/fixtures/preprocess/photo_64x48.jpg");
  return bytes;
}
const std::string& Portrait() {  // 21x44 PNG.
  static const std::string bytes =
      testing::ReadSourceFile("tests/fixtures/preprocess/portrait_21x44.png");
  return bytes;
}
const std::string& Landscape() {
  static const std::string bytes =
      testing::ReadSourceFile("tests/fixtures/preprocess/landscape_37x23.png");
  return bytes;
}

GenerationRequest Question(const std::string& text, const std::string& image) {
  GenerationRequest r;
  r.turns.push_back({ChatTurn::Role::kUser, text});
  r.image = ImageInput{image, ""};
  r.sampling.max_new_tokens = 6;
  r.sampling.ignore_eos = true;
  return r;
}

// The second turn of a conversation about `image`: the first question, its answer, a new one.
GenerationRequest SecondTurn(const std::string& first_answer, const std::string& image) {
  GenerationRequest r = Question("What is in the picture?", image);
  r.turns.push_back({ChatTurn::Role::kAssistant, first_answer});
  r.turns.push_back({ChatTurn::Role::kUser, "And what colour is it?"});
  return r;
}

double VisionFlops(const Outcome& run) {
  double total = 0;
  for (int phase : {FlopCount::kVision, FlopCount::kProjector}) {
    for (double f : run.report.flops.flops[phase]) total += f;
  }
  return total;
}

double PrefillFlops(const Outcome& run) {
  double total = 0;
  for (double f : run.report.flops.flops[FlopCount::kPrefill]) total += f;
  return total;
}

Outcome RunOne(Engine& engine, const GenerationRequest& request) {
  Outcome run = testing::RunInLockstep(engine, {request})[0];
  EXPECT_TRUE(run.status.ok()) << run.status.ToString();
  return run;
}

class EncoderCacheEngineTest : public ::testing::TestWithParam<std::string> {
 protected:
  static constexpr int64_t kBound = 64 << 20;
};

TEST_P(EncoderCacheEngineTest, ASecondTurnAboutTheSameImageSkipsTheTowerAndAnswersTheSame) {
  auto cached = MakeEngine(GetParam(), kBound);
  auto uncached = MakeEngine(GetParam(), 0);
  ASSERT_TRUE(cached && uncached);
  const GenerationRequest first = Question("What is in the picture?", Photo());
  const Outcome first_on = RunOne(*cached, first);
  const Outcome first_off = RunOne(*uncached, first);
  EXPECT_EQ(first_on.report.encoder_cache, Use::kMiss);
  EXPECT_EQ(first_off.report.encoder_cache, Use::kNone);
  EXPECT_GT(VisionFlops(first_on), 0);
  EXPECT_EQ(VisionFlops(first_on), VisionFlops(first_off));
  EXPECT_GT(first_on.report.vision_ms, 0);
  EXPECT_EQ(first_on.tokens, first_off.tokens);
  EXPECT_GT(cached->Memory().encoder_cache_bytes, 0);
  EXPECT_EQ(uncached->Memory().encoder_cache_bytes, 0);

  const GenerationRequest second = SecondTurn(first_off.text, Photo());
  const Outcome second_on = RunOne(*cached, second);
  const Outcome second_off = RunOne(*uncached, second);
  EXPECT_EQ(second_on.report.encoder_cache, Use::kHit);
  EXPECT_EQ(VisionFlops(second_on), 0);
  EXPECT_EQ(second_on.report.vision_ms, 0);
  EXPECT_EQ(second_off.report.encoder_cache, Use::kNone);
  EXPECT_GT(VisionFlops(second_off), 0);
  EXPECT_EQ(PrefillFlops(second_on), PrefillFlops(second_off));
  EXPECT_EQ(second_on.tokens, second_off.tokens);
  EXPECT_EQ(second_on.text, second_off.text);
  EXPECT_EQ(second_on.trace.masks, second_off.trace.masks);  // flex: the same selections.
  EXPECT_EQ(second_on.report.selected_hr_tokens, second_off.report.selected_hr_tokens);
}

TEST_P(EncoderCacheEngineTest, IdenticalImagesInOnePrefillEncodeOnce) {
  auto cached = MakeEngine(GetParam(), kBound);
  auto uncached = MakeEngine(GetParam(), 0);
  ASSERT_TRUE(cached && uncached);
  const std::vector<GenerationRequest> batch = {Question("What is in the picture?", Photo()),
                                                Question("Describe it.", Landscape()),
                                                Question("Is there a cat?", Photo())};
  const std::vector<Outcome> on = testing::RunInLockstep(*cached, batch);
  const std::vector<Outcome> off = testing::RunInLockstep(*uncached, batch);
  EXPECT_EQ(on[0].report.encoder_cache, Use::kMiss);
  EXPECT_EQ(on[1].report.encoder_cache, Use::kMiss);
  EXPECT_EQ(on[2].report.encoder_cache, Use::kHit);
  EXPECT_GT(VisionFlops(on[0]), 0);
  EXPECT_EQ(VisionFlops(on[2]), 0);
  EXPECT_EQ(on[2].report.vision_ms, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    EXPECT_EQ(on[i].tokens, off[i].tokens) << "request " << i;
    EXPECT_EQ(off[i].report.encoder_cache, Use::kNone);
  }
  // Two entries of one size: the photo's is not there twice.
  const int64_t two = cached->Memory().encoder_cache_bytes;
  const Outcome again = RunOne(*cached, Question("Is there a dog?", Landscape()));
  EXPECT_EQ(again.report.encoder_cache, Use::kHit);
  EXPECT_EQ(cached->Memory().encoder_cache_bytes, two);
  auto single = MakeEngine(GetParam(), kBound);
  RunOne(*single, batch[0]);
  EXPECT_EQ(two, 2 * single->Memory().encoder_cache_bytes);
}

TEST_P(EncoderCacheEngineTest, TheBoundEvictsTheLeastRecentlyUsedImage) {
  int64_t entry = 0;
  {
    auto probe = MakeEngine(GetParam(), kBound);
    ASSERT_TRUE(probe);
    RunOne(*probe, Question("What is in the picture?", Photo()));
    entry = probe->Memory().encoder_cache_bytes;
  }
  if (GetParam() == "full") {
    // [image tokens, hidden] fp32 rows of the projector's output.
    auto info_engine = MakeEngine(GetParam(), 0);
    EXPECT_EQ(entry, int64_t{info_engine->Info().num_image_tokens} * 64 * 4);
  }
  // Room for two images, not three.
  auto engine = MakeEngine(GetParam(), 2 * entry + entry / 2);
  ASSERT_TRUE(engine);
  auto use = [&engine](const std::string& image) {
    return RunOne(*engine, Question("What is in the picture?", image)).report.encoder_cache;
  };
  EXPECT_EQ(use(Photo()), Use::kMiss);
  EXPECT_EQ(use(Landscape()), Use::kMiss);
  EXPECT_EQ(use(Photo()), Use::kHit);      // The landscape is now the least recently used ...
  EXPECT_EQ(use(Portrait()), Use::kMiss);  // ... so the portrait evicts it.
  EXPECT_EQ(engine->Memory().encoder_cache_bytes, 2 * entry);
  EXPECT_EQ(use(Photo()), Use::kHit);
  EXPECT_EQ(use(Landscape()), Use::kMiss);  // Evicts the portrait, not the photo.
  EXPECT_EQ(use(Photo()), Use::kHit);
  EXPECT_EQ(use(Portrait()), Use::kMiss);

  auto too_small = MakeEngine(GetParam(), entry - 1);  // No image fits: never a hit.
  ASSERT_TRUE(too_small);
  for (int i = 0; i < 2; ++i) {
    const Outcome run = RunOne(*too_small, Question("What is in the picture?", Photo()));
    EXPECT_EQ(run.report.encoder_cache, Use::kMiss);
    EXPECT_GT(VisionFlops(run), 0);
  }
  EXPECT_EQ(too_small->Memory().encoder_cache_bytes, 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, EncoderCacheEngineTest, ::testing::Values("full", "flex"),
                         [](const auto& info) { return info.param; });

TEST(EncoderCacheOptionsTest, ZeroIsOffAndNegativeIsRefused) {
  auto off = MakeEngine("full", 0);
  ASSERT_TRUE(off);
  for (int i = 0; i < 2; ++i) {
    const Outcome run = RunOne(*off, Question("What is in the picture?", Photo()));
    EXPECT_EQ(run.report.encoder_cache, Use::kNone);
    EXPECT_GT(VisionFlops(run), 0);
  }
  EXPECT_EQ(off->Memory().encoder_cache_bytes, 0);
  EngineOptions options;
  options.model_dir = ModelDir("full");
  options.encoder_cache_bytes = -1;
  auto refused = CreateLlavaEngine(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("encoder_cache_bytes"), std::string::npos);
}

}  // namespace
}  // namespace flexvqa
