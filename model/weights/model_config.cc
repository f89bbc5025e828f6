// config.json parsing for both public LLaVA-1.5 layouts. Published files omit every field equal to
// the Hugging Face default, so each reader below starts from the struct defaults and overrides what
// is present.
#include "model/weights/model_config.h"

#include <sys/stat.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace flexvqa {
namespace {

using json = nlohmann::json;

// LLaVA's IMAGE_TOKEN_INDEX (llava/constants.py): a negative id that marks the image in input_ids.
constexpr int kOriginalImageTokenSentinel = -200;

bool IsDirectory(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return InternalError("error reading " + path);
  return buffer.str();
}

StatusOr<json> ParseJsonObject(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    return InvalidArgumentError(what + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) return InvalidArgumentError(what + ": expected a JSON object");
  return j;
}

// Typed field readers: absent or null keeps the default; a value of the wrong type is an error
// naming the field, rather than nlohmann's type_error escaping.
Status ReadInt(const json& j, const char* key, int* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_integer())
    return InvalidArgumentError(std::string("'") + key + "' must be an integer");
  const int64_t v = it->get<int64_t>();
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
    return InvalidArgumentError(std::string("'") + key + "' is out of range");
  }
  *out = static_cast<int>(v);
  return Status::Ok();
}

// Token ids may be an int or a list of ints (the first one is used); null means none.
Status ReadTokenId(const json& j, const char* key, int* out) {
  auto it = j.find(key);
  if (it == j.end()) return Status::Ok();
  if (it->is_null()) {
    *out = -1;
    return Status::Ok();
  }
  if (it->is_array()) {
    if (it->empty()) return Status::Ok();
    json first = json::object({{key, (*it)[0]}});
    return ReadInt(first, key, out);
  }
  return ReadInt(j, key, out);
}

Status ReadDouble(const json& j, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number()) return InvalidArgumentError(std::string("'") + key + "' must be a number");
  *out = it->get<double>();
  return Status::Ok();
}

Status ReadString(const json& j, const char* key, std::string* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) return InvalidArgumentError(std::string("'") + key + "' must be a string");
  *out = it->get<std::string>();
  return Status::Ok();
}

Status ReadBool(const json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean())
    return InvalidArgumentError(std::string("'") + key + "' must be a boolean");
  *out = it->get<bool>();
  return Status::Ok();
}

// Scaled RoPE variants (linear, dynamic, llama3, yarn) change the frequencies; we only implement
// plain RoPE.
Status CheckRope(const json& j, TextConfig* text) {
  auto it = j.find("rope_scaling");
  if (it != j.end() && !it->is_null()) {
    return UnimplementedError("rope_scaling " + it->dump() + " is not supported (only plain RoPE)");
  }
  // transformers >= 5 folds rope_theta into rope_parameters.
  it = j.find("rope_parameters");
  if (it != j.end() && it->is_object()) {
    std::string type = "default";
    FLEXVQA_RETURN_IF_ERROR(ReadString(*it, "rope_type", &type));
    if (type != "default") {
      return UnimplementedError("rope_parameters " + it->dump() +
                                " is not supported (only plain RoPE)");
    }
    FLEXVQA_RETURN_IF_ERROR(ReadDouble(*it, "rope_theta", &text->rope_theta));
  }
  return Status::Ok();
}

// Reads LlamaConfig fields from `j` (the text_config, or the top level of an original-LLaVA
// config).
Status ReadTextConfig(const json& j, TextConfig* text) {
  std::string model_type = "llama";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "model_type", &model_type));
  // The original layout's top level says "llava"; its LLaMA fields sit beside it.
  if (model_type != "llama" && model_type != "llava" && model_type != "llava_llama") {
    return UnimplementedError("text model_type '" + model_type + "' is not supported (only llama)");
  }
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "hidden_size", &text->hidden_size));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "intermediate_size", &text->intermediate_size));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "num_hidden_layers", &text->num_hidden_layers));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "num_attention_heads", &text->num_attention_heads));
  text->num_key_value_heads = text->num_attention_heads;
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "num_key_value_heads", &text->num_key_value_heads));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "vocab_size", &text->vocab_size));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "max_position_embeddings", &text->max_position_embeddings));
  FLEXVQA_RETURN_IF_ERROR(ReadDouble(j, "rms_norm_eps", &text->rms_norm_eps));
  FLEXVQA_RETURN_IF_ERROR(ReadDouble(j, "rope_theta", &text->rope_theta));
  FLEXVQA_RETURN_IF_ERROR(ReadTokenId(j, "bos_token_id", &text->bos_token_id));
  FLEXVQA_RETURN_IF_ERROR(ReadTokenId(j, "eos_token_id", &text->eos_token_id));
  FLEXVQA_RETURN_IF_ERROR(ReadTokenId(j, "pad_token_id", &text->pad_token_id));
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "hidden_act", &text->hidden_act));
  FLEXVQA_RETURN_IF_ERROR(ReadBool(j, "tie_word_embeddings", &text->tie_word_embeddings));
  FLEXVQA_RETURN_IF_ERROR(CheckRope(j, text));
  int head_dim = 0;
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "head_dim", &head_dim));
  if (head_dim != 0 && text->num_attention_heads > 0 &&
      head_dim * text->num_attention_heads != text->hidden_size) {
    return UnimplementedError("head_dim " + std::to_string(head_dim) +
                              " != hidden_size / num_attention_heads is not supported");
  }
  return Status::Ok();
}

Status ReadVisionConfig(const json& j, VisionConfig* vision) {
  std::string model_type = "clip_vision_model";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "model_type", &model_type));
  if (model_type != "clip_vision_model") {
    return UnimplementedError("vision model_type '" + model_type +
                              "' is not supported (only CLIP)");
  }
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "hidden_size", &vision->hidden_size));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "intermediate_size", &vision->intermediate_size));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "num_hidden_layers", &vision->num_hidden_layers));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "num_attention_heads", &vision->num_attention_heads));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "num_channels", &vision->num_channels));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "image_size", &vision->image_size));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "patch_size", &vision->patch_size));
  FLEXVQA_RETURN_IF_ERROR(ReadDouble(j, "layer_norm_eps", &vision->layer_norm_eps));
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "hidden_act", &vision->hidden_act));
  return Status::Ok();
}

// CLIP ViT-L/14 at 336 px: what LlavaConfig builds when vision_config is absent, and what the
// original layout's mm_vision_tower names (before the CLIP directory's own config.json confirms
// it).
VisionConfig ClipVitLarge(int image_size) {
  VisionConfig v;
  v.hidden_size = 1024;
  v.intermediate_size = 4096;
  v.num_hidden_layers = 24;
  v.num_attention_heads = 16;
  v.image_size = image_size;
  v.patch_size = 14;
  return v;
}

// Reads a CLIP directory's config.json: a full CLIPConfig (vision part nested) or a
// CLIPVisionConfig.
Status ReadClipConfig(const json& j, VisionConfig* vision) {
  std::string model_type;
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "model_type", &model_type));
  if (model_type == "clip_vision_model") return ReadVisionConfig(j, vision);
  if (!model_type.empty() && model_type != "clip") {
    return UnimplementedError("vision tower model_type '" + model_type +
                              "' is not supported (only CLIP)");
  }
  *vision = VisionConfig();
  for (const char* key : {"vision_config", "vision_config_dict"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_object()) {
      json nested = *it;
      nested.erase("model_type");  // Older CLIPConfig files repeat "clip" here.
      return ReadVisionConfig(nested, vision);
    }
  }
  if (model_type == "clip") return Status::Ok();  // CLIPConfig() defaults.
  return ReadVisionConfig(j, vision);
}

Status CheckPositive(int value, const char* name) {
  if (value <= 0)
    return InvalidArgumentError(std::string(name) + " must be positive, got " +
                                std::to_string(value));
  return Status::Ok();
}

// FlexAttention's geometry must be the paper's shape: LR image = the tower's native size, HR image
// = zoom_ratio tiles of it per side, and an LR grid whose 9x9 pooling (modeling_llama.py:566) is
// whole.
Status ValidateMode(const LlavaConfig& c) {
  const ModeConfig& x = c.mode;
  const AttentionMode m = x.attention;
  if (m == AttentionMode::kXattn &&
      (x.xattn_zoom < 1 || x.xattn_zoom > 8 || x.xattn_every < 1 || x.xattn_hidden < 1 ||
       x.xattn_heads < 1 || x.xattn_hidden % x.xattn_heads != 0)) {
    return InvalidArgumentError(
        "xattn needs xattn_zoom in [1, 8], xattn_every >= 1 and xattn_hidden a "
        "positive multiple of xattn_heads");
  }
  if (m == AttentionMode::kHd && (x.hd_zoom < 2 || x.hd_zoom > 8)) {
    return InvalidArgumentError("hd_zoom must be between 2 and 8, got " +
                                std::to_string(x.hd_zoom));
  }
  const bool two_views = m == AttentionMode::kHd || m == AttentionMode::kXattn;
  if (two_views && c.vision_feature_select != "default" && c.vision_feature_select != "patch") {
    return InvalidArgumentError(std::string("attention_mode ") + AttentionModeName(m) +
                                " needs patch features (no CLS token)");
  }
  return Status::Ok();
}

Status ValidateFlex(const LlavaConfig& c) {
  const FlexAttentionConfig& f = c.flex;
  if (c.mode.attention != AttentionMode::kFlex) return Status::Ok();
  if (f.zoom_ratio < 1 || f.lowres_size != c.vision.image_size ||
      f.highres_size != f.zoom_ratio * f.lowres_size) {
    return InvalidArgumentError(
        "FlexAttention needs extra.lowres_size == the vision tower's image_size (" +
        std::to_string(c.vision.image_size) +
        ") and extra.highres_size == zoom_ratio * lowres_size; got " +
        std::to_string(f.lowres_size) + ", " + std::to_string(f.highres_size) + ", zoom " +
        std::to_string(f.zoom_ratio));
  }
  const int side = c.vision.image_size / c.vision.patch_size;
  if (side < 9 || (side * f.zoom_ratio) % 9 != 0) {
    return InvalidArgumentError("FlexAttention needs an LR grid of at least 9 and an HR grid (" +
                                std::to_string(side * f.zoom_ratio) + ") divisible by 9");
  }
  if (f.num_sa_layers < 1 || f.num_sa_layers > c.text.num_hidden_layers) {
    return InvalidArgumentError("extra.num_sa_layers must be in [1, " +
                                std::to_string(c.text.num_hidden_layers) + "], got " +
                                std::to_string(f.num_sa_layers));
  }
  if (c.vision_feature_select != "default" && c.vision_feature_select != "patch") {
    return InvalidArgumentError("FlexAttention needs patch features (no CLS token)");
  }
  return Status::Ok();
}

Status Validate(const LlavaConfig& c) {
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  const std::pair<int, const char*> sizes[] = {
      {t.hidden_size, "text hidden_size"},
      {t.intermediate_size, "text intermediate_size"},
      {t.num_hidden_layers, "text num_hidden_layers"},
      {t.num_attention_heads, "text num_attention_heads"},
      {t.num_key_value_heads, "text num_key_value_heads"},
      {t.vocab_size, "text vocab_size"},
      {t.max_position_embeddings, "text max_position_embeddings"},
      {v.hidden_size, "vision hidden_size"},
      {v.intermediate_size, "vision intermediate_size"},
      {v.num_hidden_layers, "vision num_hidden_layers"},
      {v.num_attention_heads, "vision num_attention_heads"},
      {v.num_channels, "vision num_channels"},
      {v.image_size, "vision image_size"},
      {v.patch_size, "vision patch_size"},
  };
  for (const auto& [value, name] : sizes) FLEXVQA_RETURN_IF_ERROR(CheckPositive(value, name));
  if (t.hidden_size % t.num_attention_heads != 0) {
    return InvalidArgumentError("text hidden_size " + std::to_string(t.hidden_size) +
                                " is not divisible by num_attention_heads " +
                                std::to_string(t.num_attention_heads));
  }
  if (t.num_attention_heads % t.num_key_value_heads != 0) {
    return InvalidArgumentError(
        "text num_attention_heads " + std::to_string(t.num_attention_heads) +
        " is not divisible by num_key_value_heads " + std::to_string(t.num_key_value_heads));
  }
  if (v.hidden_size % v.num_attention_heads != 0) {
    return InvalidArgumentError("vision hidden_size " + std::to_string(v.hidden_size) +
                                " is not divisible by num_attention_heads " +
                                std::to_string(v.num_attention_heads));
  }
  if (v.image_size % v.patch_size != 0) {
    return InvalidArgumentError("vision image_size " + std::to_string(v.image_size) +
                                " is not a multiple of patch_size " + std::to_string(v.patch_size));
  }
  if (t.rms_norm_eps <= 0 || v.layer_norm_eps <= 0) {
    return InvalidArgumentError("normalization epsilons must be positive");
  }
  if (t.hidden_act != "silu") {
    return UnimplementedError("text hidden_act '" + t.hidden_act +
                              "' is not supported (only silu)");
  }
  if (v.hidden_act != "quick_gelu" && v.hidden_act != "gelu") {
    return UnimplementedError("vision hidden_act '" + v.hidden_act +
                              "' is not supported (quick_gelu or gelu)");
  }
  // hidden_states has num_hidden_layers + 1 entries (the embeddings first); Python indexing rules.
  const int n = v.num_hidden_layers + 1;
  if (c.vision_feature_layer < -n || c.vision_feature_layer >= n) {
    return InvalidArgumentError("vision_feature_layer " + std::to_string(c.vision_feature_layer) +
                                " is out of range for a vision tower with " +
                                std::to_string(v.num_hidden_layers) + " layers");
  }
  const std::string& sel = c.vision_feature_select;
  if (sel != "default" && sel != "patch" && sel != "full" && sel != "cls_patch") {
    return InvalidArgumentError("vision feature select strategy '" + sel +
                                "' is not one of default, full, patch, cls_patch");
  }
  if (c.projector_type != "mlp2x_gelu") {
    return InvalidArgumentError("projector type '" + c.projector_type +
                                "' is not supported (only mlp2x_gelu)");
  }
  if (c.image_aspect_ratio != "pad" && c.image_aspect_ratio != "square") {
    return UnimplementedError("image_aspect_ratio '" + c.image_aspect_ratio +
                              "' is not supported (pad or square)");
  }
  if (c.crop_size < 0 || c.resize_shortest_edge < 0) {
    return InvalidArgumentError("crop_size and size must be positive");
  }
  FLEXVQA_RETURN_IF_ERROR(ValidateMode(c));
  return ValidateFlex(c);
}

Status ParseHfLayout(const json& j, LlavaConfig* c) {
  c->layout = CheckpointLayout::kHfLlava;
  // Top-level fields stand in for those the text_config leaves out (LlavaConfig forwards them).
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "vocab_size", &c->text.vocab_size));
  FLEXVQA_RETURN_IF_ERROR(ReadTokenId(j, "pad_token_id", &c->text.pad_token_id));
  FLEXVQA_RETURN_IF_ERROR(ReadBool(j, "tie_word_embeddings", &c->text.tie_word_embeddings));
  auto text_it = j.find("text_config");
  if (text_it != j.end() && !text_it->is_null()) {
    if (!text_it->is_object()) return InvalidArgumentError("'text_config' must be an object");
    FLEXVQA_RETURN_IF_ERROR(ReadTextConfig(*text_it, &c->text).WithContext("text_config"));
    FLEXVQA_RETURN_IF_ERROR(ReadString(*text_it, "torch_dtype", &c->torch_dtype));
  }
  c->vision = ClipVitLarge(336);
  auto vision_it = j.find("vision_config");
  if (vision_it != j.end() && !vision_it->is_null()) {
    if (!vision_it->is_object()) return InvalidArgumentError("'vision_config' must be an object");
    c->vision = VisionConfig();
    FLEXVQA_RETURN_IF_ERROR(ReadVisionConfig(*vision_it, &c->vision).WithContext("vision_config"));
  }
  // Newer transformers call it image_token_id; both mean the same.
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "image_token_index", &c->image_token_id));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "image_token_id", &c->image_token_id));
  auto layer_it = j.find("vision_feature_layer");
  if (layer_it != j.end() && layer_it->is_array()) {
    return UnimplementedError("a list of vision_feature_layer values is not supported");
  }
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "vision_feature_layer", &c->vision_feature_layer));
  FLEXVQA_RETURN_IF_ERROR(
      ReadString(j, "vision_feature_select_strategy", &c->vision_feature_select));
  std::string act = "gelu";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "projector_hidden_act", &act));
  c->projector_type = act == "gelu" ? "mlp2x_gelu" : "mlp2x_" + act;
  // transformers' CLIPImageProcessor resizes and centre-crops; LlavaImageProcessor (do_pad) pads
  // first. Overridden by preprocessor_config.json.
  c->image_aspect_ratio = "square";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "image_aspect_ratio", &c->image_aspect_ratio));
  return Status::Ok();
}

// "extra" values are strings in the released config ("48"); integers are accepted too.
Status ReadExtraInt(const json& extra, const char* key, int* out) {
  auto it = extra.find(key);
  if (it == extra.end() || it->is_null()) return Status::Ok();
  if (it->is_number_integer()) return ReadInt(extra, key, out);
  if (!it->is_string()) {
    return InvalidArgumentError(std::string("'extra.") + key + "' must be an integer or a string");
  }
  const std::string text = it->get<std::string>();
  size_t used = 0;
  long value = 0;
  try {
    value = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < std::numeric_limits<int>::min() ||
      value > std::numeric_limits<int>::max()) {
    return InvalidArgumentError(std::string("'extra.") + key + "' must hold an integer, got '" +
                                text + "'");
  }
  *out = static_cast<int>(value);
  return Status::Ok();
}

// The FlexAttention checkpoint's "extra" dict (senfu/llava-v1.5-7b-flexattn config.json).
// *enabled: whether it makes the checkpoint a FlexAttention one.
Status ParseFlexExtra(const json& j, FlexAttentionConfig* flex, bool* enabled) {
  auto it = j.find("extra");
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_object()) return InvalidArgumentError("'extra' must be an object");
  *enabled = it->contains("zoom_ratio");
  FLEXVQA_RETURN_IF_ERROR(ReadExtraInt(*it, "zoom_ratio", &flex->zoom_ratio));
  FLEXVQA_RETURN_IF_ERROR(ReadExtraInt(*it, "threshold", &flex->threshold));
  FLEXVQA_RETURN_IF_ERROR(ReadExtraInt(*it, "highres_size", &flex->highres_size));
  FLEXVQA_RETURN_IF_ERROR(ReadExtraInt(*it, "lowres_size", &flex->lowres_size));
  FLEXVQA_RETURN_IF_ERROR(ReadExtraInt(*it, "num_sa_layers", &flex->num_sa_layers));
  return Status::Ok();
}

// Also accepts the flexattn variant (its "extra" dict, see ParseFlexExtra).
Status ParseOriginalLayout(const json& j, LlavaConfig* c, int* mm_hidden_size) {
  c->layout = CheckpointLayout::kOriginalLlava;
  FLEXVQA_RETURN_IF_ERROR(ReadTextConfig(j, &c->text));
  c->image_token_id = kOriginalImageTokenSentinel;
  std::string tower;
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "mm_vision_tower", &tower));
  if (tower.empty()) FLEXVQA_RETURN_IF_ERROR(ReadString(j, "vision_tower", &tower));
  // Provisional until the CLIP directory's config.json is read (LoadLlavaConfig).
  const std::string base = tower.substr(tower.find_last_of('/') + 1);
  if (base == "clip-vit-large-patch14-336") c->vision = ClipVitLarge(336);
  if (base == "clip-vit-large-patch14") c->vision = ClipVitLarge(224);
  c->vision_dir = tower;  // Resolved against the filesystem by LoadLlavaConfig.
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "mm_projector_type", &c->projector_type));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "mm_vision_select_layer", &c->vision_feature_layer));
  c->vision_feature_select = "patch";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "mm_vision_select_feature", &c->vision_feature_select));
  // LLaVA pads only when the config says "pad"; otherwise its CLIP processor resizes and crops.
  c->image_aspect_ratio = "square";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "image_aspect_ratio", &c->image_aspect_ratio));
  *mm_hidden_size = 0;
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "mm_hidden_size", mm_hidden_size));
  bool im_start_end = false;
  FLEXVQA_RETURN_IF_ERROR(ReadBool(j, "mm_use_im_start_end", &im_start_end));
  if (im_start_end) return UnimplementedError("mm_use_im_start_end=true is not supported");
  std::string merge = "flat";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "mm_patch_merge_type", &merge));
  if (merge != "flat") {
    return UnimplementedError("mm_patch_merge_type '" + merge + "' is not supported (only flat)");
  }
  bool flex = false;
  FLEXVQA_RETURN_IF_ERROR(ParseFlexExtra(j, &c->flex, &flex));
  if (flex) c->mode.attention = AttentionMode::kFlex;
  return Status::Ok();
}

Status ParseConfig(const json& j, LlavaConfig* c, int* mm_hidden_size) {
  bool hf = false;
  bool original = false;
  auto arch_it = j.find("architectures");
  if (arch_it != j.end() && !arch_it->is_null()) {
    if (!arch_it->is_array()) return InvalidArgumentError("'architectures' must be a list");
    for (const json& a : *arch_it) {
      if (a == "LlavaForConditionalGeneration") hf = true;
      if (a == "LlavaLlamaForCausalLM") original = true;
    }
    if (!hf && !original) {
      return InvalidArgumentError(
          "unsupported architectures " + arch_it->dump() +
          " (supported: LlavaForConditionalGeneration, LlavaLlamaForCausalLM)");
    }
  } else {
    std::string model_type;
    FLEXVQA_RETURN_IF_ERROR(ReadString(j, "model_type", &model_type));
    if (model_type != "llava" && model_type != "llava_llama") {
      return InvalidArgumentError("config has no 'architectures' and model_type '" + model_type +
                                  "' is not llava");
    }
    original = j.contains("mm_vision_tower");
    hf = !original;
  }
  Status s = hf ? ParseHfLayout(j, c) : ParseOriginalLayout(j, c, mm_hidden_size);
  FLEXVQA_RETURN_IF_ERROR(s);
  // Our keys (docs/modes.md): the attention mode and hd's zoom.
  // The mode, parsed once here (docs/modes.md): flex comes from the original layout's "extra".
  std::string mode = "full";
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "attention_mode", &mode));
  FLEXVQA_ASSIGN_OR_RETURN(const AttentionMode named, ParseAttentionMode(mode));
  if (named == AttentionMode::kFlex) {
    return InvalidArgumentError("attention_mode cannot be 'flex': flex is set by 'extra'");
  }
  if (named != AttentionMode::kFull && c->mode.attention == AttentionMode::kFlex) {
    return InvalidArgumentError("attention_mode '" + mode +
                                "' cannot be combined with FlexAttention's 'extra'");
  }
  if (named != AttentionMode::kFull) c->mode.attention = named;
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "hd_zoom", &c->mode.hd_zoom));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "xattn_zoom", &c->mode.xattn_zoom));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "xattn_every", &c->mode.xattn_every));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "xattn_hidden", &c->mode.xattn_hidden));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(j, "xattn_heads", &c->mode.xattn_heads));
  // The dtype the checkpoint was saved in: "dtype" (transformers >= 4.56) or "torch_dtype".
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "torch_dtype", &c->torch_dtype));
  FLEXVQA_RETURN_IF_ERROR(ReadString(j, "dtype", &c->torch_dtype));
  return Status::Ok();
}

void FillImageDefaults(LlavaConfig* c) {
  if (c->crop_size == 0) c->crop_size = c->vision.image_size;
  if (c->resize_shortest_edge == 0) c->resize_shortest_edge = c->crop_size;
}

// "crop_size": 336 or {"height": 336, "width": 336}; "size": 336 or {"shortest_edge": 336}.
Status ReadImageSide(const json& j, const char* key, int* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (it->is_number_integer()) return ReadInt(j, key, out);
  if (!it->is_object())
    return InvalidArgumentError(std::string("'") + key + "' must be an int or object");
  if (it->contains("shortest_edge")) return ReadInt(*it, "shortest_edge", out);
  int h = 0, w = 0;
  FLEXVQA_RETURN_IF_ERROR(ReadInt(*it, "height", &h));
  FLEXVQA_RETURN_IF_ERROR(ReadInt(*it, "width", &w));
  if (h != w || h <= 0) {
    return InvalidArgumentError(std::string("'") + key + "' must be square and positive, got " +
                                it->dump());
  }
  *out = h;
  return Status::Ok();
}

Status ReadTriple(const json& j, const char* key, std::array<float, 3>* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_array() || it->size() != 3) {
    return InvalidArgumentError(std::string("'") + key + "' must be a list of 3 numbers");
  }
  for (size_t i = 0; i < 3; ++i) {
    if (!(*it)[i].is_number()) {
      return InvalidArgumentError(std::string("'") + key + "' must be a list of 3 numbers");
    }
    (*out)[i] = (*it)[i].get<float>();
  }
  return Status::Ok();
}

// `infer_aspect_ratio`: llava-hf without an explicit image_aspect_ratio pads only when the
// processor says do_pad (LlavaImageProcessor); CLIPImageProcessor, as published, resizes and crops.
Status ReadPreprocessorConfig(const std::string& path, bool infer_aspect_ratio, LlavaConfig* c) {
  FLEXVQA_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  FLEXVQA_ASSIGN_OR_RETURN(json j, ParseJsonObject(text, path));
  FLEXVQA_RETURN_IF_ERROR(ReadTriple(j, "image_mean", &c->image_mean));
  FLEXVQA_RETURN_IF_ERROR(ReadTriple(j, "image_std", &c->image_std));
  FLEXVQA_RETURN_IF_ERROR(ReadImageSide(j, "crop_size", &c->crop_size));
  FLEXVQA_RETURN_IF_ERROR(ReadImageSide(j, "size", &c->resize_shortest_edge));
  if (infer_aspect_ratio) {
    bool do_pad = false;
    FLEXVQA_RETURN_IF_ERROR(ReadBool(j, "do_pad", &do_pad));
    c->image_aspect_ratio = do_pad ? "pad" : "square";
  }
  for (float s : c->image_std) {
    if (!(s > 0)) return InvalidArgumentError(path + ": image_std must be positive");
  }
  return Status::Ok();
}

StatusOr<std::string> ResolveVisionDir(const std::string& model_dir, const std::string& tower,
                                       const std::string& override_dir) {
  if (!override_dir.empty()) {
    if (!IsDirectory(override_dir))
      return NotFoundError("vision tower directory " + override_dir + " does not exist");
    return override_dir;
  }
  std::string tried;
  if (!tower.empty()) {
    if (tower.front() == '/') {
      if (IsDirectory(tower)) return tower;
      tried = tower + ", ";
    } else {
      const std::string relative = JoinPath(model_dir, tower);
      if (IsDirectory(relative)) return relative;
      tried = relative + ", ";
    }
  }
  const std::string fallback = JoinPath(model_dir, "vision_tower");
  if (IsDirectory(fallback)) return fallback;
  return NotFoundError("vision tower '" + tower + "' not found; tried " + tried + fallback +
                       " (pass the CLIP directory explicitly)");
}

}  // namespace

namespace {
// One row per AttentionMode; the names config.json and ModelInfo use.
constexpr std::pair<AttentionMode, const char*> kModeNames[] = {
    {AttentionMode::kFull, "full"},           {AttentionMode::kHd, "hd"},
    {AttentionMode::kXattn, "xattn"},         {AttentionMode::kFlex, "flex"},
    {AttentionMode::kComposite, "composite"}, {AttentionMode::kPooled, "pooled"},
};
}  // namespace

const char* AttentionModeName(AttentionMode mode) {
  for (const auto& [m, name] : kModeNames) {
    if (m == mode) return name;
  }
  return "unknown";
}

StatusOr<AttentionMode> ParseAttentionMode(const std::string& name) {
  std::string names;
  for (const auto& [m, n] : kModeNames) {
    if (name == n) return m;
    if (m != AttentionMode::kFlex) names += std::string(names.empty() ? "" : ", ") + n;
  }
  return InvalidArgumentError("attention_mode must be one of " + names +
                              " (flex is set by 'extra'), got '" + name + "'");
}

const char* CheckpointLayoutName(CheckpointLayout layout) {
  switch (layout) {
    case CheckpointLayout::kHfLlava:
      return "llava-hf";
    case CheckpointLayout::kOriginalLlava:
      return "original-llava";
  }
  return "unknown";
}

StatusOr<LlavaConfig> ParseLlavaConfigJson(const std::string& json_text) {
  try {
    FLEXVQA_ASSIGN_OR_RETURN(json j, ParseJsonObject(json_text, "config.json"));
    LlavaConfig config;
    int mm_hidden_size = 0;
    FLEXVQA_RETURN_IF_ERROR(ParseConfig(j, &config, &mm_hidden_size));
    if (config.layout == CheckpointLayout::kOriginalLlava) config.vision_dir.clear();
    FillImageDefaults(&config);
    FLEXVQA_RETURN_IF_ERROR(Validate(config));
    return config;
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("config.json: ") + e.what());
  }
}

StatusOr<LlavaConfig> LoadLlavaConfig(const std::string& model_dir,
                                      const std::string& vision_dir_override) {
  const std::string config_path = JoinPath(model_dir, "config.json");
  try {
    FLEXVQA_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
    FLEXVQA_ASSIGN_OR_RETURN(json j, ParseJsonObject(text, config_path));
    LlavaConfig config;
    int mm_hidden_size = 0;
    FLEXVQA_RETURN_IF_ERROR(ParseConfig(j, &config, &mm_hidden_size).WithContext(config_path));
    config.model_dir = model_dir;
    std::string preprocessor = JoinPath(model_dir, "preprocessor_config.json");
    if (config.layout == CheckpointLayout::kHfLlava) {
      config.vision_dir = model_dir;
    } else {
      FLEXVQA_ASSIGN_OR_RETURN(config.vision_dir,
                               ResolveVisionDir(model_dir, config.vision_dir, vision_dir_override));
      const std::string clip_path = JoinPath(config.vision_dir, "config.json");
      FLEXVQA_ASSIGN_OR_RETURN(std::string clip_text, ReadFile(clip_path));
      FLEXVQA_ASSIGN_OR_RETURN(json clip, ParseJsonObject(clip_text, clip_path));
      FLEXVQA_RETURN_IF_ERROR(ReadClipConfig(clip, &config.vision).WithContext(clip_path));
      if (mm_hidden_size != 0 && mm_hidden_size != config.vision.hidden_size) {
        return InvalidArgumentError(config_path + ": mm_hidden_size " +
                                    std::to_string(mm_hidden_size) +
                                    " does not match the vision tower's hidden_size " +
                                    std::to_string(config.vision.hidden_size) + " in " + clip_path);
      }
      // LLaVA builds its image processor from the CLIP directory.
      if (!IsRegularFile(preprocessor))
        preprocessor = JoinPath(config.vision_dir, "preprocessor_config.json");
    }
    if (IsRegularFile(preprocessor)) {
      const bool infer_aspect_ratio =
          config.layout == CheckpointLayout::kHfLlava && !j.contains("image_aspect_ratio");
      FLEXVQA_RETURN_IF_ERROR(ReadPreprocessorConfig(preprocessor, infer_aspect_ratio, &config)
                                  .WithContext(preprocessor));
    }
    FillImageDefaults(&config);
    FLEXVQA_RETURN_IF_ERROR(Validate(config).WithContext(config_path));
    return config;
  } catch (const json::exception& e) {
    return InvalidArgumentError(config_path + ": " + e.what());
  }
}

}  // namespace flexvqa
