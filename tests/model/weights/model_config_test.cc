// config.json parsing: the published llava-hf and original LLaVA-1.5 7B configs (reproduced
// verbatim, as their omitted fields are the point), CLIP directory resolution, preprocessor configs
// and bad input.
#include "model/weights/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace flexvqa {
namespace {

using ::testing::HasSubstr;

// llava-hf/llava-1.5-7b-hf config.json.
constexpr char kHfConfig[] = R"({
  "architectures": ["LlavaForConditionalGeneration"],
  "ignore_index": -100,
  "image_token_index": 32000,
  "model_type": "llava",
  "pad_token_id": 32001,
  "projector_hidden_act": "gelu",
  "text_config": {
    "_name_or_path": "lmsys/vicuna-7b-v1.5",
    "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "rms_norm_eps": 1e-05,
    "torch_dtype": "float16",
    "vocab_size": 32064
  },
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.36.0.dev0",
  "vision_config": {
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000
  },
  "vision_feature_layer": -2,
  "vision_feature_select_strategy": "default",
  "vocab_size": 32064
})";

// liuhaotian/llava-v1.5-7b config.json.
constexpr char kOriginalConfig[] = R"({
  "_name_or_path": "./checkpoints/vicuna-7b-v1-5",
  "architectures": ["LlavaLlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "freeze_mm_mlp_adapter": false,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "image_aspect_ratio": "pad",
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_length": 4096,
  "max_position_embeddings": 4096,
  "mm_hidden_size": 1024,
  "mm_projector_type": "mlp2x_gelu",
  "mm_use_im_patch_token": false,
  "mm_use_im_start_end": false,
  "mm_vision_select_feature": "patch",
  "mm_vision_select_layer": -2,
  "mm_vision_tower": "openai/clip-vit-large-patch14-336",
  "model_type": "llava",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pad_token_id": 0,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0",
  "tune_mm_mlp_adapter": false,
  "tune_mm_vision_resampler": false,
  "unfreeze_mm_vision_tower": false,
  "use_cache": true,
  "use_mm_proj": true,
  "vocab_size": 32000
})";

// openai/clip-vit-large-patch14-336 config.json (a full CLIPConfig), abridged to the vision part.
constexpr char kClipConfig[] = R"({
  "architectures": ["CLIPModel"],
  "model_type": "clip",
  "projection_dim": 768,
  "text_config": {"hidden_size": 768, "model_type": "clip_text_model", "num_hidden_layers": 12},
  "vision_config": {
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768
  }
})";

// A tiny CLIPVisionConfig as a standalone vision tower directory would hold.
constexpr char kTinyClipVisionConfig[] = R"({
  "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 28, "patch_size": 14,
  "hidden_act": "gelu"
})";

void WriteFile(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

// kOriginalConfig with the value of `key` replaced by `value` (a JSON literal).
std::string OriginalWith(const std::string& key, const std::string& value) {
  std::string text = kOriginalConfig;
  const std::string needle = "\"" + key + "\": ";
  const size_t at = text.find(needle);
  EXPECT_NE(at, std::string::npos) << key;
  const size_t begin = at + needle.size();
  const size_t end = text.find_first_of(",\n", begin);
  return text.replace(begin, end - begin, value);
}

class ModelConfigDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/model_config_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST(ModelConfigTest, PublishedHfConfigFillsLlamaAndClipDefaults) {
  auto config = ParseLlavaConfigJson(kHfConfig);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->layout, CheckpointLayout::kHfLlava);
  const TextConfig& t = config->text;
  EXPECT_EQ(t.hidden_size, 4096);
  EXPECT_EQ(t.num_hidden_layers, 32);
  EXPECT_EQ(t.intermediate_size, 11008);
  EXPECT_EQ(t.num_attention_heads, 32);
  EXPECT_EQ(t.num_key_value_heads, 32);
  EXPECT_EQ(t.head_dim(), 128);
  EXPECT_EQ(t.vocab_size, 32064);
  EXPECT_EQ(t.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(t.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(t.rope_theta, 10000.0);
  EXPECT_EQ(t.pad_token_id, 32001);
  EXPECT_EQ(t.hidden_act, "silu");
  const VisionConfig& v = config->vision;
  EXPECT_EQ(v.hidden_size, 1024);
  EXPECT_EQ(v.num_hidden_layers, 24);
  EXPECT_EQ(v.num_attention_heads, 16);
  EXPECT_EQ(v.intermediate_size, 4096);
  EXPECT_EQ(v.patch_size, 14);
  EXPECT_EQ(v.image_size, 336);
  EXPECT_EQ(v.hidden_act, "quick_gelu");
  EXPECT_EQ(config->image_token_id, 32000);
  EXPECT_EQ(config->vision_feature_layer, -2);
  EXPECT_EQ(config->vision_feature_select, "default");
  EXPECT_EQ(config->projector_type, "mlp2x_gelu");
  EXPECT_EQ(config->torch_dtype, "float16");
  EXPECT_EQ(config->crop_size, 336);
  EXPECT_EQ(config->num_image_tokens(), 576);
}

TEST(ModelConfigTest, PublishedOriginalConfig) {
  auto config = ParseLlavaConfigJson(kOriginalConfig);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->layout, CheckpointLayout::kOriginalLlava);
  EXPECT_EQ(config->text.hidden_size, 4096);
  EXPECT_EQ(config->text.num_hidden_layers, 32);
  EXPECT_EQ(config->text.intermediate_size, 11008);
  EXPECT_EQ(config->text.vocab_size, 32000);
  EXPECT_EQ(config->text.pad_token_id, 0);
  EXPECT_EQ(config->image_token_id, -200);
  EXPECT_EQ(config->vision_feature_layer, -2);
  EXPECT_EQ(config->vision_feature_select, "patch");
  EXPECT_EQ(config->image_aspect_ratio, "pad");
  // Provisional tower from mm_vision_tower's name.
  EXPECT_EQ(config->vision.hidden_size, 1024);
  EXPECT_EQ(config->vision.image_size, 336);
  EXPECT_EQ(config->vision.patch_size, 14);
  EXPECT_EQ(config->num_image_tokens(), 576);
  EXPECT_TRUE(config->vision_dir.empty());
}

TEST(ModelConfigTest, FlexattnConfigWithExtraDictIsAccepted) {
  std::string text = kOriginalConfig;
  text.insert(text.rfind('}'), R"(, "extra": {"attn_impl": "flex", "block_size": "128"})");
  auto config = ParseLlavaConfigJson(text);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->layout, CheckpointLayout::kOriginalLlava);
}

TEST(ModelConfigTest, HfDefaultsWhenSubConfigsAbsent) {
  auto config = ParseLlavaConfigJson(
      R"({"architectures": ["LlavaForConditionalGeneration"], "image_token_id": 32100,
          "text_config": {"num_attention_heads": 8, "hidden_size": 512}})");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->image_token_id, 32100);
  EXPECT_EQ(config->text.num_key_value_heads, 8);  // Follows num_attention_heads.
  EXPECT_EQ(config->text.vocab_size, 32000);
  EXPECT_EQ(config->vision.hidden_size, 1024);  // LlavaConfig's CLIP ViT-L/14-336.
  EXPECT_EQ(config->vision.image_size, 336);
}

TEST(ModelConfigTest, RejectsBadConfigs) {
  struct Case {
    std::string json;
    StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"[1, 2]", StatusCode::kInvalidArgument, "JSON object"},
      {"{\"architectures\": ", StatusCode::kInvalidArgument, "not valid JSON"},
      {R"({"architectures": ["LlamaForCausalLM"]})", StatusCode::kInvalidArgument,
       "LlamaForCausalLM"},
      {OriginalWith("mm_projector_type", "\"linear\""), StatusCode::kInvalidArgument,
       "only mlp2x_gelu"},
      {OriginalWith("num_attention_heads", "30"), StatusCode::kInvalidArgument, "not divisible"},
      {OriginalWith("hidden_size", "0"), StatusCode::kInvalidArgument, "must be positive"},
      {OriginalWith("num_hidden_layers", "-3"), StatusCode::kInvalidArgument, "must be positive"},
      {OriginalWith("mm_vision_select_layer", "-26"), StatusCode::kInvalidArgument,
       "vision_feature_layer -26 is out of range"},
      {OriginalWith("mm_vision_select_layer", "25"), StatusCode::kInvalidArgument, "out of range"},
      {OriginalWith("rope_scaling", R"({"type": "linear", "factor": 2.0})"),
       StatusCode::kUnimplemented, "rope_scaling"},
      {OriginalWith("hidden_size", "\"big\""), StatusCode::kInvalidArgument, "'hidden_size'"},
      {OriginalWith("mm_use_im_start_end", "true"), StatusCode::kUnimplemented,
       "mm_use_im_start_end"},
  };
  for (const Case& c : cases) {
    auto config = ParseLlavaConfigJson(c.json);
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_EQ(config.status().code(), c.code) << config.status().ToString();
    EXPECT_THAT(config.status().message(), HasSubstr(c.message));
  }
  // The extreme in-range layer indices are fine: -25 is the embeddings, 24 the last layer.
  EXPECT_TRUE(ParseLlavaConfigJson(OriginalWith("mm_vision_select_layer", "-25")).ok());
  EXPECT_TRUE(ParseLlavaConfigJson(OriginalWith("mm_vision_select_layer", "24")).ok());
}

TEST_F(ModelConfigDirTest, LoadsHfWithPreprocessorConfig) {
  WriteFile(dir_ + "/config.json", kHfConfig);
  WriteFile(dir_ + "/preprocessor_config.json", R"({
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
    "image_mean": [0.5, 0.25, 0.125], "image_std": [0.2, 0.3, 0.4],
    "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 352}})");
  auto config = LoadLlavaConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->model_dir, dir_);
  EXPECT_EQ(config->vision_dir, dir_);
  EXPECT_EQ(config->crop_size, 336);
  EXPECT_EQ(config->resize_shortest_edge, 352);
  EXPECT_FLOAT_EQ(config->image_mean[1], 0.25f);
  EXPECT_FLOAT_EQ(config->image_std[2], 0.4f);
  EXPECT_EQ(config->image_aspect_ratio, "square");  // CLIPImageProcessor: resize and centre crop.

  WriteFile(dir_ + "/preprocessor_config.json",
            R"({"crop_size": 224, "size": 224, "do_pad": true})");
  config = LoadLlavaConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->crop_size, 224);
  EXPECT_EQ(config->image_aspect_ratio, "pad");
  EXPECT_FLOAT_EQ(config->image_mean[0], 0.48145466f);  // Defaults kept.

  // An explicit image_aspect_ratio in config.json wins over the processor.
  std::string explicit_pad = kHfConfig;
  explicit_pad.insert(explicit_pad.rfind('}'), R"(, "image_aspect_ratio": "pad")");
  WriteFile(dir_ + "/config.json", explicit_pad);
  WriteFile(dir_ + "/preprocessor_config.json", R"({"crop_size": 336})");
  config = LoadLlavaConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->image_aspect_ratio, "pad");

  WriteFile(dir_ + "/preprocessor_config.json", R"({"crop_size": {"height": 336, "width": 224}})");
  EXPECT_EQ(LoadLlavaConfig(dir_).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(ModelConfigDirTest, ResolvesClipDirFromMmVisionTower) {
  WriteFile(dir_ + "/config.json", kOriginalConfig);
  WriteFile(dir_ + "/openai/clip-vit-large-patch14-336/config.json", kClipConfig);
  WriteFile(dir_ + "/openai/clip-vit-large-patch14-336/preprocessor_config.json",
            R"({"crop_size": 336, "image_mean": [0.1, 0.2, 0.3]})");
  auto config = LoadLlavaConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->vision_dir, dir_ + "/openai/clip-vit-large-patch14-336");
  EXPECT_EQ(config->vision.hidden_size, 1024);
  EXPECT_EQ(config->vision.num_hidden_layers, 24);
  EXPECT_EQ(config->vision.image_size, 336);
  EXPECT_FLOAT_EQ(config->image_mean[0], 0.1f);  // From the CLIP directory.
}

TEST_F(ModelConfigDirTest, ResolvesClipDirFallbackAndOverride) {
  WriteFile(dir_ + "/model/config.json", OriginalWith("mm_hidden_size", "32"));
  WriteFile(dir_ + "/model/vision_tower/config.json", kTinyClipVisionConfig);
  auto config = LoadLlavaConfig(dir_ + "/model");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->vision_dir, dir_ + "/model/vision_tower");
  EXPECT_EQ(config->vision.hidden_size, 32);
  EXPECT_EQ(config->vision.num_hidden_layers, 3);
  EXPECT_EQ(config->vision.hidden_act, "gelu");
  EXPECT_EQ(config->crop_size, 28);
  EXPECT_EQ(config->num_image_tokens(), 4);

  WriteFile(dir_ + "/elsewhere/config.json", kTinyClipVisionConfig);
  config = LoadLlavaConfig(dir_ + "/model", dir_ + "/elsewhere");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->vision_dir, dir_ + "/elsewhere");

  // An absolute mm_vision_tower.
  std::string abs = OriginalWith("mm_vision_tower", "\"" + dir_ + "/elsewhere\"");
  WriteFile(dir_ + "/abs/config.json",
            abs.replace(abs.find("\"mm_hidden_size\": 1024"), 22, "\"mm_hidden_size\": 32"));
  config = LoadLlavaConfig(dir_ + "/abs");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->vision_dir, dir_ + "/elsewhere");
}

TEST_F(ModelConfigDirTest, LoadErrorsNameThePaths) {
  auto missing = LoadLlavaConfig(dir_);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir_ + "/config.json"));

  WriteFile(dir_ + "/config.json", "{\"architectures\": [");
  auto bad = LoadLlavaConfig(dir_);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr(dir_ + "/config.json"));

  WriteFile(dir_ + "/config.json", kOriginalConfig);
  auto no_tower = LoadLlavaConfig(dir_);
  EXPECT_EQ(no_tower.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(no_tower.status().message(), HasSubstr(dir_ + "/vision_tower"));
  EXPECT_THAT(no_tower.status().message(), HasSubstr("openai/clip-vit-large-patch14-336"));

  WriteFile(dir_ + "/vision_tower/config.json", kTinyClipVisionConfig);
  auto mismatch = LoadLlavaConfig(dir_);  // mm_hidden_size 1024 vs a 32-wide tower.
  EXPECT_EQ(mismatch.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.status().message(), HasSubstr("mm_hidden_size 1024"));

  WriteFile(dir_ + "/vision_tower/config.json", R"({"model_type": "siglip_vision_model"})");
  EXPECT_EQ(LoadLlavaConfig(dir_).status().code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace flexvqa

namespace flexvqa {
namespace {

// The FlexAttention checkpoint's "extra" dict: string values, zoom_ratio enables flex.
TEST(ModelConfigFlexTest, ReadsExtraStrings) {
  const std::string base = R"({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
      "mm_vision_tower": "openai/clip-vit-large-patch14-336", "num_hidden_layers": 32, "extra": )";
  auto c = ParseLlavaConfigJson(base + R"({"zoom_ratio": "3", "highres_size": "1008",
      "lowres_size": "336", "threshold": "48", "warmup": "10"}})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->mode.attention, AttentionMode::kFlex);
  EXPECT_EQ(c->flex.threshold, 48);
  EXPECT_EQ(c->flex.num_sa_layers, 9);
  EXPECT_EQ(c->flex.highres_size, 1008);
  auto plain = ParseLlavaConfigJson(base + R"({}})");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->mode.attention, AttentionMode::kFull);
  EXPECT_EQ(ParseLlavaConfigJson(base + R"({"zoom_ratio": "three"}})").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseLlavaConfigJson(base + R"({"zoom_ratio": "3", "highres_size": "1000"}})")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(
      ParseLlavaConfigJson(base + R"({"zoom_ratio": "3", "num_sa_layers": "40"}})").status().code(),
      StatusCode::kInvalidArgument);
}

// kOriginalConfig plus one top-level key (value as JSON text; may carry more keys after it).
std::string WithKeys(const std::string& key, const std::string& value) {
  std::string text = kOriginalConfig;
  text.insert(text.rfind('}'), ", \"" + key + "\": " + value);
  return text;
}

TEST(ModelConfigModeTest, ReadsAttentionModeKeys) {
  EXPECT_EQ(ParseLlavaConfigJson(kOriginalConfig)->mode.attention, AttentionMode::kFull);
  auto hd = ParseLlavaConfigJson(WithKeys("attention_mode", "\"hd\""));
  ASSERT_TRUE(hd.ok()) << hd.status().ToString();
  EXPECT_EQ(hd->mode.attention, AttentionMode::kHd);
  EXPECT_EQ(hd->mode.hd_zoom, 2);
  EXPECT_EQ(hd->num_image_tokens(), 576);  // The LR view; hd's own count is its Mode's.
  auto xattn = ParseLlavaConfigJson(WithKeys("attention_mode", "\"xattn\""));
  ASSERT_TRUE(xattn.ok());
  EXPECT_EQ(xattn->mode.attention, AttentionMode::kXattn);
  EXPECT_EQ(xattn->mode.xattn_zoom, 3);
  EXPECT_TRUE(xattn->mode.cross_attends(31));
  EXPECT_FALSE(hd->mode.cross_attends(0));
  auto composite = ParseLlavaConfigJson(WithKeys("attention_mode", "\"composite\""));
  ASSERT_TRUE(composite.ok());
  EXPECT_EQ(composite->mode.attention, AttentionMode::kComposite);
  // flex is the "extra" dict's, never a name in attention_mode.
  EXPECT_EQ(ParseLlavaConfigJson(WithKeys("attention_mode", "\"flex\"")).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseLlavaConfigJson(WithKeys("attention_mode", "\"sparse\"")).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(
      ParseLlavaConfigJson(WithKeys("attention_mode", "\"hd\", \"hd_zoom\": 1")).status().code(),
      StatusCode::kInvalidArgument);
  std::string both = WithKeys("attention_mode", "\"hd\"");
  both.insert(both.rfind('}'), R"(, "extra": {"zoom_ratio": "3"})");
  EXPECT_EQ(ParseLlavaConfigJson(both).status().code(), StatusCode::kInvalidArgument);
}

TEST(ModelConfigModeTest, ModeNamesRoundTrip) {
  for (AttentionMode m :
       {AttentionMode::kFull, AttentionMode::kHd, AttentionMode::kXattn, AttentionMode::kFlex,
        AttentionMode::kComposite, AttentionMode::kPooled}) {
    auto parsed = ParseAttentionMode(AttentionModeName(m));
    ASSERT_TRUE(parsed.ok()) << AttentionModeName(m);
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(ParseAttentionMode("Full").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseAttentionMode("").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flexvqa
