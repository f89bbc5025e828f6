// The tiny checkpoint generator (tools/tiny/tiny_llava.h) for every layout and mode: what it writes
// is read back by the engine's own loaders (config, safetensors by section, tokenizer, the whole
// model), with the shapes its options ask for, the same bytes for the same seed, the same weights
// in both layouts, each mode's extra weights and config keys, and a status for every bad option.
#include "tools/tiny/tiny_llava.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "model/llava_model.h"
#include "model/text/tokenizer.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  return ::testing::TempDir() + "flexvqa_tiny_test_" + std::to_string(getpid()) + "_" + name;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing " << path;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Case {
  CheckpointLayout layout;
  std::string mode;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return std::string(info.param.layout == CheckpointLayout::kHfLlava ? "hf_" : "original_") +
         info.param.mode;
}

class TinyLlavaLayoutModeTest : public ::testing::TestWithParam<Case> {};

TEST_P(TinyLlavaLayoutModeTest, WritesACheckpointTheLoadersRead) {
  const Case& c = GetParam();
  TinyLlavaOptions o = c.mode == "flex" ? TinyFlexLlavaOptions(3) : TinyLlavaOptions();
  o.layout = c.layout;
  o.mode = c.mode;
  o.seed = 3;
  o.num_kv_heads = 2;  // Grouped-query attention, so the k/v shapes differ from q's.
  const std::string dir = TempDir(CaseName({c, 0}));
  const Status written = WriteTinyLlava(dir, o);
  ASSERT_TRUE(written.ok()) << written.ToString();

  auto config = LoadLlavaConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->layout, c.layout);
  EXPECT_STREQ(AttentionModeName(config->mode.attention), c.mode.c_str());
  const TextConfig& t = config->text;
  EXPECT_EQ(t.hidden_size, o.hidden_size);
  EXPECT_EQ(t.intermediate_size, o.intermediate_size);
  EXPECT_EQ(t.num_hidden_layers, o.num_layers);
  EXPECT_EQ(t.num_attention_heads, o.num_heads);
  EXPECT_EQ(t.num_key_value_heads, o.num_kv_heads);
  EXPECT_EQ(t.max_position_embeddings, o.max_positions);
  EXPECT_EQ(config->vision.hidden_size, o.vision_hidden);
  EXPECT_EQ(config->vision.num_hidden_layers, o.vision_layers);
  EXPECT_EQ(config->vision.image_size, o.image_size);
  EXPECT_EQ(config->vision.patch_size, o.patch_size);
  // llava-hf appends <image> after the SentencePiece pieces and pads the table to 64.
  const bool hf = c.layout == CheckpointLayout::kHfLlava;
  EXPECT_EQ(t.vocab_size, hf ? (o.tokenizer_vocab + 1 + 63) / 64 * 64 : o.tokenizer_vocab);
  if (hf) {
    EXPECT_EQ(config->image_token_id, o.tokenizer_vocab);
  }

  auto tokenizer = Tokenizer::Load(dir + "/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  EXPECT_EQ((*tokenizer)->vocab_size(), o.tokenizer_vocab);
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.vocab"));
  EXPECT_TRUE(fs::exists(dir + "/preprocessor_config.json"));
  EXPECT_EQ(fs::exists(dir + "/clip/model.safetensors"), !hf);

  auto weights = WeightLoader::Open(*config);
  ASSERT_TRUE(weights.ok()) << weights.status().ToString();
  const int64_t d = o.hidden_size, dh = d / o.num_heads;
  auto k = (*weights)->Get(WeightSection::kText, "layers.0.self_attn.k_proj.weight",
                           {o.num_kv_heads * dh, d}, at::kFloat, at::Device(at::kCPU));
  EXPECT_TRUE(k.ok()) << k.status().ToString();
  auto patch = (*weights)->Get(WeightSection::kVision, "embeddings.patch_embedding.weight",
                               {o.vision_hidden, 3, o.patch_size, o.patch_size}, at::kFloat,
                               at::Device(at::kCPU));
  EXPECT_TRUE(patch.ok()) << patch.status().ToString();
  // Each mode's own weights, and nothing of another mode's.
  const bool xattn = c.mode == "xattn", flex = c.mode == "flex";
  for (int i = 0; i < o.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    EXPECT_EQ((*weights)->Has(WeightSection::kText, p + "cross_attn.q_proj.weight"),
              xattn && i % o.xattn_every == 0)
        << p;
    EXPECT_EQ((*weights)->Has(WeightSection::kText, p + "self_attn.k_proj_hd.weight"), flex) << p;
  }
  const nlohmann::json json = nlohmann::json::parse(ReadFile(dir + "/config.json"));
  EXPECT_EQ(json.contains("extra"), flex);
  EXPECT_EQ(json.contains("attention_mode"), c.mode != "full" && !flex);
  if (c.mode == "hd") {
    EXPECT_EQ(config->mode.hd_zoom, o.hd_zoom);
  }
  if (xattn) {
    EXPECT_EQ(config->mode.xattn_zoom, o.xattn_zoom);
    EXPECT_EQ(config->mode.xattn_every, o.xattn_every);
    EXPECT_EQ(config->mode.xattn_hidden, o.xattn_hidden);
    EXPECT_EQ(config->mode.xattn_heads, o.xattn_heads);
  }
  if (flex) {
    EXPECT_EQ(config->flex.num_sa_layers, o.flex_num_sa_layers);
    EXPECT_EQ(config->flex.threshold, o.flex_threshold);
  }
  // The whole model loads: every tensor the engine needs is there with its shape.
  auto model = LlavaModel::Load(*config, at::kFloat, at::Device(at::kCPU), 64);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(LayoutsAndModes, TinyLlavaLayoutModeTest,
                         ::testing::Values(Case{CheckpointLayout::kHfLlava, "full"},
                                           Case{CheckpointLayout::kHfLlava, "hd"},
                                           Case{CheckpointLayout::kHfLlava, "composite"},
                                           Case{CheckpointLayout::kHfLlava, "xattn"},
                                           Case{CheckpointLayout::kOriginalLlava, "full"},
                                           Case{CheckpointLayout::kOriginalLlava, "hd"},
                                           Case{CheckpointLayout::kOriginalLlava, "composite"},
                                           Case{CheckpointLayout::kOriginalLlava, "xattn"},
                                           Case{CheckpointLayout::kOriginalLlava, "flex"},
                                           Case{CheckpointLayout::kHfLlava, "pooled"}),
                         CaseName);

TEST(TinyLlavaTest, SameSeedSameBytesOtherSeedOtherWeights) {
  TinyLlavaOptions o;
  const std::string a = TempDir("seed_a"), b = TempDir("seed_b"), other = TempDir("seed_other");
  ASSERT_TRUE(WriteTinyLlava(a, o).ok());
  ASSERT_TRUE(WriteTinyLlava(b, o).ok());
  o.seed = 1;
  ASSERT_TRUE(WriteTinyLlava(other, o).ok());
  for (const char* file : {"model.safetensors", "config.json", "preprocessor_config.json"}) {
    EXPECT_EQ(ReadFile(fs::path(a) / file), ReadFile(fs::path(b) / file)) << file;
  }
  EXPECT_NE(ReadFile(fs::path(a) / "model.safetensors"),
            ReadFile(fs::path(other) / "model.safetensors"));
  // tokenizer.model records its output path, so compare what it encodes: the same pieces in every
  // directory, whatever the seed (the tokenizer is not seeded).
  const std::string text = "What is in the picture? A red ball on the table.";
  std::vector<std::vector<int32_t>> encoded;
  std::vector<std::string> pieces;
  for (const std::string& dir : {a, b, other}) {
    auto tokenizer = Tokenizer::Load(dir + "/tokenizer.model");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
    encoded.push_back((*tokenizer)->Encode(text, true));
    std::string all;
    for (int32_t id = 0; id < (*tokenizer)->vocab_size(); ++id)
      all += (*tokenizer)->IdToPiece(id) + "\n";
    pieces.push_back(all);
  }
  EXPECT_GT(encoded[0].size(), 5u);
  EXPECT_EQ(encoded[0], encoded[1]);
  EXPECT_EQ(encoded[0], encoded[2]);
  EXPECT_EQ(pieces[0], pieces[1]);
  EXPECT_EQ(pieces[0], pieces[2]);
  for (const std::string& dir : {a, b, other}) fs::remove_all(dir);
}

TEST(TinyLlavaTest, BothLayoutsHoldTheSameWeights) {
  TinyLlavaOptions o;
  o.seed = 5;
  const std::string hf = TempDir("layout_hf"), original = TempDir("layout_original");
  ASSERT_TRUE(WriteTinyLlava(hf, o).ok());
  o.layout = CheckpointLayout::kOriginalLlava;
  ASSERT_TRUE(WriteTinyLlava(original, o).ok());
  auto hc = LoadLlavaConfig(hf), oc = LoadLlavaConfig(original);
  ASSERT_TRUE(hc.ok() && oc.ok());
  auto hw = WeightLoader::Open(*hc), ow = WeightLoader::Open(*oc);
  ASSERT_TRUE(hw.ok() && ow.ok());
  auto get = [](const WeightLoader& w, WeightSection s, const std::string& name,
                std::vector<int64_t> shape) {
    auto t = w.Get(s, name, shape, at::kFloat, at::Device(at::kCPU));
    EXPECT_TRUE(t.ok()) << name << ": " << t.status().ToString();
    return t.ok() ? *t : at::zeros(shape);
  };
  const int64_t d = o.hidden_size, v = o.tokenizer_vocab;
  // The original layout keeps the first rows of the hf layout's padded tables.
  EXPECT_TRUE(
      at::equal(get(**hw, WeightSection::kText, "embed_tokens.weight", {hc->text.vocab_size, d})
                    .narrow(0, 0, v),
                get(**ow, WeightSection::kText, "embed_tokens.weight", {v, d})));
  EXPECT_TRUE(at::equal(
      get(**hw, WeightSection::kText, "layers.1.mlp.down_proj.weight", {d, o.intermediate_size}),
      get(**ow, WeightSection::kText, "layers.1.mlp.down_proj.weight", {d, o.intermediate_size})));
  EXPECT_TRUE(at::equal(get(**hw, WeightSection::kProjector, "linear_2.bias", {d}),
                        get(**ow, WeightSection::kProjector, "linear_2.bias", {d})));
  EXPECT_TRUE(at::equal(get(**hw, WeightSection::kVision, "encoder.layers.0.mlp.fc1.weight",
                            {o.vision_intermediate, o.vision_hidden}),
                        get(**ow, WeightSection::kVision, "encoder.layers.0.mlp.fc1.weight",
                            {o.vision_intermediate, o.vision_hidden})));
  fs::remove_all(hf);
  fs::remove_all(original);
}

TEST(TinyLlavaTest, StoresTheRequestedDtype) {
  TinyLlavaOptions o;
  o.dtype = "bfloat16";
  const std::string dir = TempDir("bf16");
  ASSERT_TRUE(WriteTinyLlava(dir, o).ok());
  auto config = LoadLlavaConfig(dir);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  // safetensors header: every tensor's dtype is BF16.
  const std::string bytes = ReadFile(dir + "/model.safetensors");
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_size));
  int tensors = 0;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    EXPECT_EQ(entry.at("dtype"), "BF16") << name;
    ++tensors;
  }
  EXPECT_GT(tensors, 10);
  fs::remove_all(dir);
}

TEST(TinyLlavaTest, RejectsBadOptions) {
  TinyLlavaOptions o;
  o.mode = "sparse";
  EXPECT_EQ(WriteTinyLlava(TempDir("bad_mode"), o).code(), StatusCode::kInvalidArgument);
  o = TinyLlavaOptions();
  o.mode = "flex";  // FlexAttention checkpoints exist in the original layout only.
  EXPECT_EQ(WriteTinyLlava(TempDir("bad_flex"), o).code(), StatusCode::kInvalidArgument);
  o = TinyLlavaOptions();
  o.dtype = "float8";
  EXPECT_EQ(WriteTinyLlava(TempDir("bad_dtype"), o).code(), StatusCode::kInvalidArgument);
  o = TinyLlavaOptions();
  o.trainer_path = "/nonexistent/flexvqa_train_tokenizer";
  EXPECT_EQ(WriteTinyLlava(TempDir("bad_trainer"), o).code(), StatusCode::kInternal);
  o = TinyLlavaOptions();
  o.corpus_path = "/nonexistent/corpus.txt";
  EXPECT_EQ(WriteTinyLlava(TempDir("bad_corpus"), o).code(), StatusCode::kInternal);
  // A directory that cannot be created: its parent is a file.
  const std::string file = TempDir("a_file");
  std::ofstream(file) << "x";
  EXPECT_EQ(WriteTinyLlava(file + "/model", TinyLlavaOptions()).code(), StatusCode::kInternal);
  fs::remove(file);
  for (const char* name : {"bad_mode", "bad_flex", "bad_dtype", "bad_trainer", "bad_corpus"}) {
    fs::remove_all(TempDir(name));
  }
}

}  // namespace
}  // namespace flexvqa
