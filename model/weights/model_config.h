// Model configuration as read from a checkpoint directory's config.json (and, for the original
// LLaVA layout, the separate CLIP directory's config.json). Torch-free plain structs; defaults are
// those of the Hugging Face config classes, because published config.json files omit fields equal
// to the defaults. LoadLlavaConfig never throws: a missing file, bad JSON or an unsupported value
// is a Status naming it.
#pragma once

#include <array>
#include <string>

#include "model/status.h"

namespace flexvqa {

// Defaults: transformers' CLIPVisionConfig.
struct VisionConfig {
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int num_channels = 3;
  int image_size = 224;
  int patch_size = 32;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  // quick_gelu | gelu
};

// Defaults: transformers' LlamaConfig.
struct TextConfig {
  int hidden_size = 4096;
  int intermediate_size = 11008;
  int num_hidden_layers = 32;
  int num_attention_heads = 32;
  int num_key_value_heads = 32;  // Default: num_attention_heads when absent.
  int vocab_size = 32000;
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int bos_token_id = 1;
  int eos_token_id = 2;
  int pad_token_id = -1;  // -1: none.
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  int head_dim() const { return hidden_size / num_attention_heads; }
};

enum class CheckpointLayout {
  // llava-hf/*: LlavaForConditionalGeneration; tensors language_model.*, vision_tower.*,
  // multi_modal_projector.*.
  kHfLlava,
  // liuhaotian/*: LlavaLlamaForCausalLM; tensors model.layers.*, model.mm_projector.*, lm_head.*;
  // the CLIP tower lives in its own directory (mm_vision_tower).
  kOriginalLlava,
};

const char* CheckpointLayoutName(CheckpointLayout layout);

// The attention mode (docs/modes.md), parsed once from config.json: the top-level "attention_mode"
// key (ours) names full, hd, composite or xattn; FlexAttention checkpoints are recognised by their
// "extra" dict instead, as the authors' code decides (modeling_llama.py:326-329). Below the parser
// the mode is only ever this enum; AttentionModeName gives the string for display
// (ModelInfo::mode). Each value has one implementation in model/modes/<name>.cc.
enum class AttentionMode {
  kFull,       // LLaVA-1.5: the image's s^2 tokens in the sequence, plain causal attention.
  kHd,         // LLaVA-1.5-HD as the FlexAttention paper re-implemented it.
  kXattn,      // CogAgent-style cross-attention to high-resolution features.
  kFlex,       // FlexAttention (arXiv 2407.20228).
  kComposite,  // EE-MLLM-F as we read it: image tokens skip self-attention.
  kPooled,     // full with the image's patch grid 2x2 average-pooled (model/modes/pooled.cc).
};

// "full", "hd", "xattn", "flex", "composite".
const char* AttentionModeName(AttentionMode mode);
// The inverse of AttentionModeName; INVALID_ARGUMENT for other names.
StatusOr<AttentionMode> ParseAttentionMode(const std::string& name);

// FlexAttention (arXiv 2407.20228; ../shared/flexattention.md), read from the checkpoint's "extra"
// dict, whose values are strings ("threshold": "48"). Used when mode is kFlex.
struct FlexAttentionConfig {
  int threshold = 64;       // extra.threshold; the code's default is 64 (modeling_llama.py:523).
  int highres_size = 1008;  // extra.highres_size: side of the high-resolution image.
  int lowres_size = 336;    // extra.lowres_size: side of the image whose tokens enter the sequence.
  int zoom_ratio = 3;       // extra.zoom_ratio: HR tiles per side (highres_size / lowres_size).
  // extra.num_sa_layers (ours; the authors hard-code 9 at modeling_llama.py:424-426): layers before
  // it are plain self-attention, layers from it on are FlexAttention layers. Default: 9.
  int num_sa_layers = 9;
};

// The mode and the parameters of the modes besides flex, from config.json's top-level keys (ours;
// docs/modes.md has each mode's equations):
//   hd:        the image at hd_zoom x the tower's size, cut into hd_zoom^2 tiles through CLIP and
//              the projector; their (hd_zoom s)^2 tokens follow the s^2 low-resolution tokens in
//              the sequence.
//   composite: image tokens skip self-attention in every layer (MLP only); text attends causally
//              to them and to earlier text.
//   xattn:     the sequence is LLaVA-1.5's (LR tokens); every xattn_every-th layer adds a
//              cross-attention sub-block (after self-attention, residual) from the hidden states
//              to the xattn_zoom^2 tiles' HR features, with its own weights
//              (model.layers.{i}.cross_attn.*).
struct ModeConfig {
  // config.json "attention_mode" (full | hd | composite | xattn), or kFlex when "extra"
  // has "zoom_ratio" (the two exclude each other). Default: kFull.
  AttentionMode attention = AttentionMode::kFull;
  int hd_zoom = 2;          // "hd_zoom": tiles per side in hd. Default: 2 (672 px for CLIP-336).
  int xattn_zoom = 3;       // "xattn_zoom": HR tiles per side in xattn. Default: 3 (1008 px).
  int xattn_every = 1;      // "xattn_every": layers i with i % every == 0 cross-attend. Default: 1.
  int xattn_hidden = 1024;  // "xattn_hidden": cross-attention width C. Default: 1024 (CogAgent's).
  int xattn_heads = 32;     // "xattn_heads": cross-attention heads (C / heads wide). Default: 32.
  // xattn: whether decoder layer `layer` has a cross-attention sub-block.
  bool cross_attends(int layer) const {
    return attention == AttentionMode::kXattn && layer % xattn_every == 0;
  }
};

struct LlavaConfig {
  CheckpointLayout layout = CheckpointLayout::kHfLlava;
  std::string model_dir;
  // Directory whose safetensors hold the CLIP tower: model_dir for kHfLlava, the resolved
  // mm_vision_tower directory for kOriginalLlava.
  std::string vision_dir;
  TextConfig text;
  VisionConfig vision;
  // Token id of the <image> placeholder in the prompt. kHfLlava: image_token_index (32000 for 7B).
  // For kOriginalLlava the reference uses the sentinel -200, which never reaches the embedding
  // table; we keep it as the in-prompt marker.
  int image_token_id = 32000;
  int vision_feature_layer = -2;  // Hidden state taken from the CLIP tower.
  // default/patch: drop CLS; full/cls_patch: keep it.
  std::string vision_feature_select = "default";
  std::string projector_type = "mlp2x_gelu";  // Linear -> GELU -> Linear.
  // pad: expand to square with the mean colour, then resize (LLaVA's expand2square). square: CLIP's
  // own resize of the shortest side then centre crop (what llava-hf's CLIPImageProcessor does).
  std::string image_aspect_ratio = "pad";
  // Image preprocessing (CLIP defaults; preprocessor_config.json overrides when present).
  std::array<float, 3> image_mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> image_std = {0.26862954f, 0.26130258f, 0.27577711f};
  int crop_size = 0;             // Default: vision.image_size (filled in by LoadLlavaConfig).
  int resize_shortest_edge = 0;  // preprocessor "size"; Default: crop_size (filled in likewise).
  std::string torch_dtype = "float32";  // As stored in the checkpoint; informational.
  FlexAttentionConfig flex;             // mode kFlex (original layout only).
  ModeConfig mode;                      // Either layout.

  // Tokens of one image's low-resolution view (the tower's patch grid, plus CLS when kept). What an
  // image adds to the sequence depends on the mode: Mode::image_tokens() (model/modes/mode.h).
  int num_image_tokens() const {
    const int side = vision.image_size / vision.patch_size;
    return side * side +
           (vision_feature_select == "default" || vision_feature_select == "patch" ? 0 : 1);
  }
};

// Reads model_dir/config.json (and preprocessor_config.json when present). For kOriginalLlava the
// vision tower is taken from vision_dir_override when non-empty, else from mm_vision_tower when it
// names an existing directory (absolute, or relative to model_dir), else from
// model_dir/vision_tower.
StatusOr<LlavaConfig> LoadLlavaConfig(const std::string& model_dir,
                                      const std::string& vision_dir_override = "");

// Parses config.json text as found in model_dir (exposed for tests).
StatusOr<LlavaConfig> ParseLlavaConfigJson(const std::string& json_text);

}  // namespace flexvqa
