// WeightLoader over tiny checkpoints written in both public layouts: name mapping and aliases,
// shape checks, missing tensors and dtype conversion.
#include "model/weights/weights.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "model/weights/safetensors_writer.h"

namespace flexvqa {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

// Distinct, exactly representable values so that a mixed-up tensor is noticed.
at::Tensor Filled(std::vector<int64_t> shape, float base, at::ScalarType dtype = at::kFloat) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  return (at::arange(numel, at::kFloat) + base).reshape(shape).to(dtype);
}

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/weights_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string MakeDir(const std::string& name) {
    const std::string path = dir_ + "/" + name;
    std::filesystem::create_directories(path);
    return path;
  }

  LlavaConfig Config(CheckpointLayout layout, const std::string& model_dir,
                     const std::string& vision_dir) {
    LlavaConfig config;
    config.layout = layout;
    config.model_dir = model_dir;
    config.vision_dir = vision_dir;
    return config;
  }

  std::unique_ptr<WeightLoader> OpenOrDie(const LlavaConfig& config) {
    auto loader = WeightLoader::Open(config);
    EXPECT_TRUE(loader.ok()) << loader.status().ToString();
    return loader.ok() ? std::move(loader).value() : nullptr;
  }

  std::string dir_;
};

// A sharded llava-hf checkpoint stored in float16, as published.
TEST_F(WeightsTest, HfLayoutShardedFloat16) {
  const std::string model = MakeDir("hf");
  const at::Tensor q = Filled({8, 8}, 1.0f, at::kHalf);
  ASSERT_TRUE(
      WriteShardedSafetensors(
          model,
          {{"language_model.model.embed_tokens.weight", Filled({16, 8}, 0.0f, at::kHalf)},
           {"language_model.model.layers.0.self_attn.q_proj.weight", q},
           {"language_model.lm_head.weight", Filled({16, 8}, 5.0f, at::kHalf)},
           {"vision_tower.vision_model.embeddings.class_embedding", Filled({4}, 2.0f, at::kHalf)},
           {"multi_modal_projector.linear_1.weight", Filled({8, 4}, 3.0f, at::kHalf)},
           {"multi_modal_projector.linear_2.bias", Filled({8}, 4.0f, at::kHalf)}},
          2)
          .ok());
  auto loader = OpenOrDie(Config(CheckpointLayout::kHfLlava, model, model));
  ASSERT_NE(loader, nullptr);

  auto got = loader->Get(WeightSection::kText, "layers.0.self_attn.q_proj.weight", {8, 8},
                         at::kFloat, at::kCPU);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->scalar_type(), at::kFloat);
  EXPECT_TRUE(got->is_contiguous());
  EXPECT_TRUE(at::equal(*got, q.to(at::kFloat)));

  auto head = loader->Get(WeightSection::kLmHead, "weight", {16, 8}, at::kBFloat16, at::kCPU);
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->scalar_type(), at::kBFloat16);
  EXPECT_FLOAT_EQ(head->to(at::kFloat)[0][1].item<float>(), 6.0f);

  auto cls =
      loader->Get(WeightSection::kVision, "embeddings.class_embedding", {4}, at::kFloat, at::kCPU);
  ASSERT_TRUE(cls.ok()) << cls.status().ToString();
  EXPECT_FLOAT_EQ(cls->sum().item<float>(), 2 + 3 + 4 + 5);

  auto proj = loader->Get(WeightSection::kProjector, "linear_2.bias", {8}, at::kFloat, at::kCPU);
  ASSERT_TRUE(proj.ok()) << proj.status().ToString();
  EXPECT_FLOAT_EQ(proj->index({0}).item<float>(), 4.0f);

  EXPECT_TRUE(loader->Has(WeightSection::kProjector, "linear_1.weight"));
  EXPECT_FALSE(loader->Has(WeightSection::kProjector, "linear_1.bias"));
  EXPECT_EQ(loader->StoredNames().size(), 6u);
}

TEST_F(WeightsTest, WrongShapeNamesBothShapesAndTheFile) {
  const std::string model = MakeDir("hf");
  ASSERT_TRUE(WriteShardedSafetensors(model,
                                      {{"language_model.model.layers.0.self_attn.q_proj.weight",
                                        Filled({64, 32}, 0.0f)},
                                       {"language_model.model.norm.weight", Filled({64}, 0.0f)}},
                                      2)
                  .ok());
  auto loader = OpenOrDie(Config(CheckpointLayout::kHfLlava, model, model));
  ASSERT_NE(loader, nullptr);
  auto got = loader->Get(WeightSection::kText, "layers.0.self_attn.q_proj.weight", {64, 64},
                         at::kFloat, at::kCPU);
  EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument);
  const std::string& m = got.status().message();
  EXPECT_THAT(m, HasSubstr("text weight 'layers.0.self_attn.q_proj.weight'"));
  EXPECT_THAT(
      m, HasSubstr("tensor 'language_model.model.layers.0.self_attn.q_proj.weight' in " + model +
                   "/model-00001-of-00002.safetensors has shape [64, 32], expected [64, 64]"));
  // Rank mismatch too.
  EXPECT_THAT(loader->Get(WeightSection::kText, "norm.weight", {1, 64}, at::kFloat, at::kCPU)
                  .status()
                  .message(),
              HasSubstr("has shape [64], expected [1, 64]"));
}

TEST_F(WeightsTest, MissingTensorListsTheNamesTried) {
  const std::string model = MakeDir("hf");
  ASSERT_TRUE(
      WriteSafetensors(model + "/model.safetensors", {{"lm_head.weight", Filled({2}, 0)}}).ok());
  auto loader = OpenOrDie(Config(CheckpointLayout::kHfLlava, model, model));
  ASSERT_NE(loader, nullptr);
  auto got =
      loader->Get(WeightSection::kVision, "post_layernorm.weight", {2}, at::kFloat, at::kCPU);
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  const std::string& m = got.status().message();
  EXPECT_THAT(m, HasSubstr("vision weight 'post_layernorm.weight'"));
  EXPECT_THAT(m, HasSubstr("'vision_tower.vision_model.post_layernorm.weight'"));
  EXPECT_THAT(m, HasSubstr("'vision_tower.post_layernorm.weight'"));
  EXPECT_THAT(m, HasSubstr("'model.vision_tower.vision_model.post_layernorm.weight'"));
  EXPECT_FALSE(loader->Has(WeightSection::kVision, "post_layernorm.weight"));
  // lm_head.weight is the second kLmHead alias.
  EXPECT_TRUE(loader->Get(WeightSection::kLmHead, "weight", {2}, at::kFloat, at::kCPU).ok());
}

TEST_F(WeightsTest, HfAliasesOfNewerTransformers) {
  const std::string model = MakeDir("hf");
  ASSERT_TRUE(
      WriteSafetensors(model + "/model.safetensors",
                       {{"model.language_model.norm.weight", Filled({4}, 1)},
                        {"vision_tower.post_layernorm.bias", Filled({3}, 2)},
                        {"model.vision_tower.vision_model.pre_layrnorm.bias", Filled({3}, 3)},
                        {"model.vision_tower.post_layernorm.weight", Filled({3}, 4)},
                        {"model.multi_modal_projector.linear_1.bias", Filled({5}, 5)},
                        {"lm_head.weight", Filled({2, 4}, 6)}})
          .ok());
  auto loader = OpenOrDie(Config(CheckpointLayout::kHfLlava, model, model));
  ASSERT_NE(loader, nullptr);
  struct Case {
    WeightSection section;
    std::string name;
    std::vector<int64_t> shape;
    float first;
  };
  for (const Case& c : std::vector<Case>{{WeightSection::kText, "norm.weight", {4}, 1},
                                         {WeightSection::kVision, "post_layernorm.bias", {3}, 2},
                                         {WeightSection::kVision, "pre_layrnorm.bias", {3}, 3},
                                         {WeightSection::kVision, "post_layernorm.weight", {3}, 4},
                                         {WeightSection::kProjector, "linear_1.bias", {5}, 5},
                                         {WeightSection::kLmHead, "weight", {2, 4}, 6}}) {
    auto got = loader->Get(c.section, c.name, c.shape, at::kFloat, at::kCPU);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_FLOAT_EQ(got->flatten()[0].item<float>(), c.first) << c.name;
  }
}

TEST_F(WeightsTest, FirstPrefixWins) {
  const std::string model = MakeDir("hf");
  ASSERT_TRUE(
      WriteSafetensors(model + "/model.safetensors",
                       {{"vision_tower.embeddings.class_embedding", Filled({2}, 20)},
                        {"vision_tower.vision_model.embeddings.class_embedding", Filled({2}, 10)}})
          .ok());
  auto loader = OpenOrDie(Config(CheckpointLayout::kHfLlava, model, model));
  ASSERT_NE(loader, nullptr);
  auto got =
      loader->Get(WeightSection::kVision, "embeddings.class_embedding", {2}, at::kFloat, at::kCPU);
  ASSERT_TRUE(got.ok());
  EXPECT_FLOAT_EQ(got->index({0}).item<float>(), 10.0f);
}

TEST_F(WeightsTest, OriginalLayoutReadsClipDirAndRenamesProjector) {
  const std::string model = MakeDir("llava");
  const std::string clip = MakeDir("clip");
  ASSERT_TRUE(WriteShardedSafetensors(
                  model,
                  {{"model.embed_tokens.weight", Filled({16, 8}, 0, at::kHalf)},
                   {"model.layers.0.mlp.gate_proj.weight", Filled({12, 8}, 1, at::kHalf)},
                   {"model.mm_projector.0.weight", Filled({8, 4}, 2, at::kHalf)},
                   {"model.mm_projector.2.bias", Filled({8}, 3, at::kHalf)},
                   {"lm_head.weight", Filled({16, 8}, 4, at::kHalf)}},
                  2)
                  .ok());
  // A full CLIPModel checkpoint: the text tower is stored too and ignored.
  ASSERT_TRUE(
      WriteSafetensors(clip + "/model.safetensors",
                       {{"vision_model.embeddings.patch_embedding.weight", Filled({4, 3, 2, 2}, 5)},
                        {"text_model.embeddings.token_embedding.weight", Filled({3, 2}, 6)}})
          .ok());
  auto loader = OpenOrDie(Config(CheckpointLayout::kOriginalLlava, model, clip));
  ASSERT_NE(loader, nullptr);

  auto gate = loader->Get(WeightSection::kText, "layers.0.mlp.gate_proj.weight", {12, 8},
                          at::kFloat, at::kCPU);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  EXPECT_FLOAT_EQ(gate->index({0, 0}).item<float>(), 1.0f);
  auto l1 = loader->Get(WeightSection::kProjector, "linear_1.weight", {8, 4}, at::kFloat, at::kCPU);
  ASSERT_TRUE(l1.ok()) << l1.status().ToString();
  EXPECT_FLOAT_EQ(l1->index({0, 0}).item<float>(), 2.0f);
  auto l2 = loader->Get(WeightSection::kProjector, "linear_2.bias", {8}, at::kFloat, at::kCPU);
  ASSERT_TRUE(l2.ok()) << l2.status().ToString();
  EXPECT_FLOAT_EQ(l2->index({0}).item<float>(), 3.0f);
  auto patch = loader->Get(WeightSection::kVision, "embeddings.patch_embedding.weight",
                           {4, 3, 2, 2}, at::kFloat, at::kCPU);
  ASSERT_TRUE(patch.ok()) << patch.status().ToString();
  EXPECT_FLOAT_EQ(patch->flatten()[0].item<float>(), 5.0f);
  EXPECT_TRUE(loader->Has(WeightSection::kLmHead, "weight"));

  auto missing = loader->Get(WeightSection::kProjector, "linear_1.bias", {8}, at::kFloat, at::kCPU);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("'model.mm_projector.0.bias'"));
  auto missing_vision =
      loader->Get(WeightSection::kVision, "post_layernorm.weight", {4}, at::kFloat, at::kCPU);
  EXPECT_THAT(missing_vision.status().message(), HasSubstr(clip));

  EXPECT_THAT(loader->StoredNames(), Contains("vision_model.embeddings.patch_embedding.weight"));
  EXPECT_THAT(loader->StoredNames(), Contains("model.mm_projector.2.bias"));
}

TEST_F(WeightsTest, OpenErrors) {
  const std::string model = MakeDir("llava");
  ASSERT_TRUE(
      WriteSafetensors(model + "/model.safetensors", {{"lm_head.weight", Filled({2}, 0)}}).ok());
  auto no_clip = WeightLoader::Open(Config(CheckpointLayout::kOriginalLlava, model, ""));
  EXPECT_EQ(no_clip.status().code(), StatusCode::kFailedPrecondition);
  auto empty_clip =
      WeightLoader::Open(Config(CheckpointLayout::kOriginalLlava, model, MakeDir("clip")));
  EXPECT_EQ(empty_clip.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(empty_clip.status().message(), HasSubstr("vision tower"));
  auto no_model = WeightLoader::Open(Config(CheckpointLayout::kHfLlava, dir_ + "/none", ""));
  EXPECT_EQ(no_model.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(no_model.status().message(), HasSubstr(dir_ + "/none"));
}

}  // namespace
}  // namespace flexvqa
