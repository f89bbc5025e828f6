// The pooled mode (model/modes/pooled.cc) against its definition written here: the full-mode
// vision features of the image, averaged over each 2x2 cell of the patch grid by hand, placed at
// the prompt's (s/2)^2 placeholders, then plain LLaVA decoding. The engine's greedy tokens and the
// logits it sampled from must match; the pooling must matter.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "model/engine.h"
#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/llava_engine.h"
#include "model/llava_model.h"
#include "model/nn/kv_cache.h"
#include "model/text/prompt.h"
#include "model/text/tokenizer.h"
#include "tests/support/engine_runner.h"
#include "tests/support/tiny_model.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

constexpr int kSteps = 8;

class PooledModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "flexvqa_tiny_pooled_" + std::to_string(getpid());
    TinyLlavaOptions options;
    options.mode = "pooled";
    ASSERT_TRUE(WriteTinyLlava(dir_, options).ok());
    auto config = LoadLlavaConfig(dir_);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    config_ = *config;
  }

  GenerationRequest Request() const {
    GenerationRequest r;
    r.turns.push_back({ChatTurn::Role::kUser, "What is in the picture?"});
    r.image = ImageInput{testing::ReadSourceFile("tests/fixtures/flex_tiny/img_0_64x40.png"), ""};
    r.sampling.max_new_tokens = kSteps;
    r.sampling.ignore_eos = true;
    return r;
  }

  std::string dir_;
  LlavaConfig config_;
};

TEST_F(PooledModeTest, LoadsAsPooledWithAQuarterOfTheImageTokens) {
  EXPECT_EQ(config_.mode.attention, AttentionMode::kPooled);
  auto engine = testing::MakeEngine(dir_, 2);
  ASSERT_TRUE(engine);
  EXPECT_EQ(engine->Info().mode, "pooled");
  EXPECT_EQ(engine->Info().num_image_tokens, 4);  // 4x4 patches -> 2x2.
}

TEST_F(PooledModeTest, MatchesItsDefinition) {
  // The definition: full-mode features, each 2x2 cell averaged in a loop.
  auto model = LlavaModel::Load(config_, at::kFloat, at::Device(at::kCPU), 512);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto image = DecodeImage(Request().image->bytes, "", ImageLimits());
  ASSERT_TRUE(image.ok());
  const int size = config_.vision.image_size, s = size / config_.vision.patch_size;
  PreprocessOptions pre;
  pre.crop_size = pre.resize_shortest_edge = size;
  pre.mean = config_.image_mean;
  pre.std = config_.image_std;
  pre.pad_to_square = config_.image_aspect_ratio == "pad";
  auto pixels = PreprocessLlava(*image, pre);
  ASSERT_TRUE(pixels.ok());
  const at::Tensor full = (*model)->EncodeImages(at::tensor(*pixels).view({1, 3, size, size}))[0];
  std::vector<at::Tensor> cells;
  for (int i = 0; i < s / 2; ++i) {
    for (int j = 0; j < s / 2; ++j) {
      at::Tensor sum = at::zeros({full.size(1)});
      for (int di = 0; di < 2; ++di) {
        for (int dj = 0; dj < 2; ++dj) sum = sum + full[(2 * i + di) * s + 2 * j + dj];
      }
      cells.push_back(sum / 4);
    }
  }
  auto tokenizer = Tokenizer::Load(dir_ + "/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok());
  PromptOptions prompt;
  prompt.has_image = true;
  prompt.image_token_id = config_.image_token_id;
  prompt.num_image_tokens = static_cast<int>(cells.size());
  auto ids = BuildLlavaPrompt(**tokenizer, Request().turns, prompt);
  ASSERT_TRUE(ids.ok());
  const TextConfig& t = config_.text;
  auto cache = KvCache::Create({t.num_hidden_layers, 1, 512, t.num_key_value_heads, t.head_dim()},
                               at::kFloat, at::Device(at::kCPU));
  ASSERT_TRUE(cache.ok());
  PromptChunk chunk;
  chunk.tokens = &*ids;
  chunk.slot = cache->Allocate();
  chunk.image_features = at::stack(cells);
  std::vector<at::Tensor> expected = {(*model)->PrefillLogits({chunk}, *cache)[0]};
  std::vector<int32_t> tokens;
  for (int step = 1;; ++step) {
    tokens.push_back(static_cast<int32_t>(expected.back().argmax().item<int64_t>()));
    if (step == kSteps) break;
    expected.push_back((*model)->DecodeLogits({tokens.back()}, {chunk.slot}, *cache)[0]);
  }

  // The engine, from the request's turns and image bytes.
  testing::RecordingSink sink;
  EngineOptions options;
  options.model_dir = dir_;
  options.chat_template = ChatTemplateName(prompt.chat_template);  // The definition's prompt.
  auto engine = CreateLlavaEngine(options, &sink);
  ASSERT_TRUE(engine.ok());
  const testing::EngineRun run = testing::RunInLockstep(**engine, {Request()})[0];
  ASSERT_TRUE(run.status.ok()) << run.status.ToString();
  EXPECT_EQ(run.tokens, tokens);
  ASSERT_EQ(sink.rows().size(), 1u);
  std::vector<at::Tensor> ours;
  for (const auto& [position, row] : sink.rows().begin()->second) ours.push_back(at::tensor(row));
  ASSERT_EQ(ours.size(), expected.size());
  EXPECT_LE((at::stack(ours) - at::stack(expected)).abs().max().item<double>(), 1e-4);
  // Pooling matters: the first 4 unpooled patch features in the same places give other logits.
  chunk.image_features = full.narrow(0, 0, static_cast<int64_t>(cells.size()));
  const at::Tensor unpooled = (*model)->PrefillLogits({chunk}, *cache)[0];
  EXPECT_GT((unpooled - expected[0]).abs().max().item<double>(), 1e-3);
}

}  // namespace
}  // namespace flexvqa
