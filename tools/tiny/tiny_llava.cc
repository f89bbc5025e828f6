#include "tools/tiny/tiny_llava.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/nn/torch_compat.h"
#include "model/weights/safetensors_writer.h"

namespace flexvqa {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return InternalError("cannot write " + path.string());
  return Status::Ok();
}

// Random weights with HF-like names relative to each section, drawn in a fixed order from one
// generator so that both layouts get identical values.
class WeightMaker {
 public:
  WeightMaker(uint64_t seed, at::ScalarType dtype)
      : gen_(at::make_generator<at::CPUGeneratorImpl>(seed)), dtype_(dtype) {}

  // Normal(0, scale / sqrt(fan_in)) matrices keep activations O(1) through the tiny stack, so that
  // outputs depend visibly on the input (the tests need that), unlike HF's 0.02 init at this width.
  at::Tensor Matrix(int64_t rows, int64_t cols, double scale = 1.0) {
    return at::normal(0.0, scale / std::sqrt(static_cast<double>(cols)), {rows, cols}, gen_)
        .to(dtype_);
  }
  at::Tensor Vector(int64_t n, double mean, double stddev) {
    return at::normal(mean, stddev, {n}, gen_).to(dtype_);
  }
  at::Tensor Any(std::vector<int64_t> shape, double stddev) {
    return at::normal(0.0, stddev, shape, gen_).to(dtype_);
  }

 private:
  at::Generator gen_;
  at::ScalarType dtype_;
};

struct Sections {
  NamedTensors text, lm_head, vision, projector;
};

// Each attention mode's part of a tiny checkpoint (docs/modes.md "Adding a mode"): weights drawn
// after every shared one, so that those equal the full-mode checkpoint of the same seed, and the
// config.json keys that select it. The switches have no default: a new AttentionMode must say here
// what its checkpoint adds (-Wswitch).
void AddModeWeights(AttentionMode mode, const TinyLlavaOptions& o, WeightMaker& w, Sections* s) {
  const int64_t d = o.hidden_size, dh = d / o.num_heads;
  switch (mode) {
    case AttentionMode::kFull:
    case AttentionMode::kHd:
    case AttentionMode::kComposite:
    case AttentionMode::kPooled:
      return;  // The plain weights.
    case AttentionMode::kXattn:
      for (int i = 0; i < o.num_layers; i += o.xattn_every) {
        const std::string p = "layers." + std::to_string(i) + ".";
        const int64_t c = o.xattn_hidden;
        s->text.emplace_back(p + "cross_attn.q_proj.weight", w.Matrix(c, d));
        s->text.emplace_back(p + "cross_attn.k_proj.weight", w.Matrix(c, d));
        s->text.emplace_back(p + "cross_attn.v_proj.weight", w.Matrix(c, d));
        s->text.emplace_back(p + "cross_attn.o_proj.weight", w.Matrix(d, c));
        s->text.emplace_back(p + "cross_attn_norm.weight", w.Vector(d, 1.0, 0.1));
      }
      return;
    case AttentionMode::kFlex:
      for (int i = 0; i < o.num_layers; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".self_attn.";
        s->text.emplace_back(p + "k_proj_hd.weight", w.Matrix(o.num_kv_heads * dh, d));
        s->text.emplace_back(p + "v_proj_hd.weight", w.Matrix(o.num_kv_heads * dh, d));
      }
      return;
  }
}

void AddModeConfig(AttentionMode mode, const TinyLlavaOptions& o, json* config) {
  switch (mode) {
    case AttentionMode::kFull:
      return;
    case AttentionMode::kHd:
      (*config)["attention_mode"] = o.mode;
      (*config)["hd_zoom"] = o.hd_zoom;
      return;
    case AttentionMode::kComposite:
    case AttentionMode::kPooled:
      (*config)["attention_mode"] = o.mode;
      return;
    case AttentionMode::kXattn:
      (*config)["attention_mode"] = o.mode;
      (*config)["xattn_zoom"] = o.xattn_zoom;
      (*config)["xattn_every"] = o.xattn_every;
      (*config)["xattn_hidden"] = o.xattn_hidden;
      (*config)["xattn_heads"] = o.xattn_heads;
      return;
    case AttentionMode::kFlex: {
      // senfu/llava-v1.5-7b-flexattn's "extra" dict, values as strings.
      const int lowres = o.image_size;
      (*config)["extra"] = {{"zoom_ratio", "3"},
                            {"highres_size", std::to_string(3 * lowres)},
                            {"lowres_size", std::to_string(lowres)},
                            {"threshold", std::to_string(o.flex_threshold)},
                            {"warmup", "10"},
                            {"num_sa_layers", std::to_string(o.flex_num_sa_layers)}};
      return;
    }
  }
}

Sections MakeWeights(const TinyLlavaOptions& o, AttentionMode mode, int vocab,
                     at::ScalarType dtype) {
  WeightMaker w(o.seed, dtype);
  Sections s;
  const int64_t d = o.hidden_size, dh = d / o.num_heads;
  s.text.emplace_back("embed_tokens.weight", w.Any({vocab, d}, 1.0));
  for (int i = 0; i < o.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    s.text.emplace_back(p + "self_attn.q_proj.weight", w.Matrix(o.num_heads * dh, d));
    s.text.emplace_back(p + "self_attn.k_proj.weight", w.Matrix(o.num_kv_heads * dh, d));
    s.text.emplace_back(p + "self_attn.v_proj.weight", w.Matrix(o.num_kv_heads * dh, d));
    s.text.emplace_back(p + "self_attn.o_proj.weight", w.Matrix(d, o.num_heads * dh));
    s.text.emplace_back(p + "mlp.gate_proj.weight", w.Matrix(o.intermediate_size, d));
    s.text.emplace_back(p + "mlp.up_proj.weight", w.Matrix(o.intermediate_size, d));
    s.text.emplace_back(p + "mlp.down_proj.weight", w.Matrix(d, o.intermediate_size));
    s.text.emplace_back(p + "input_layernorm.weight", w.Vector(d, 1.0, 0.1));
    s.text.emplace_back(p + "post_attention_layernorm.weight", w.Vector(d, 1.0, 0.1));
  }
  s.text.emplace_back("norm.weight", w.Vector(d, 1.0, 0.1));
  s.lm_head.emplace_back("weight", w.Matrix(vocab, d, 4.0));

  const int64_t dv = o.vision_hidden, p = o.patch_size, side = o.image_size / o.patch_size;
  s.vision.emplace_back("embeddings.class_embedding", w.Any({dv}, 0.5));
  s.vision.emplace_back("embeddings.patch_embedding.weight", w.Any({dv, 3, p, p}, 1.0 / (p * 3)));
  s.vision.emplace_back("embeddings.position_embedding.weight", w.Any({1 + side * side, dv}, 0.5));
  s.vision.emplace_back("pre_layrnorm.weight", w.Vector(dv, 1.0, 0.1));
  s.vision.emplace_back("pre_layrnorm.bias", w.Vector(dv, 0.0, 0.1));
  for (int i = 0; i < o.vision_layers; ++i) {
    const std::string q = "encoder.layers." + std::to_string(i) + ".";
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      s.vision.emplace_back(q + "self_attn." + proj + ".weight", w.Matrix(dv, dv));
      s.vision.emplace_back(q + "self_attn." + proj + ".bias", w.Vector(dv, 0.0, 0.1));
    }
    s.vision.emplace_back(q + "layer_norm1.weight", w.Vector(dv, 1.0, 0.1));
    s.vision.emplace_back(q + "layer_norm1.bias", w.Vector(dv, 0.0, 0.1));
    s.vision.emplace_back(q + "mlp.fc1.weight", w.Matrix(o.vision_intermediate, dv));
    s.vision.emplace_back(q + "mlp.fc1.bias", w.Vector(o.vision_intermediate, 0.0, 0.1));
    s.vision.emplace_back(q + "mlp.fc2.weight", w.Matrix(dv, o.vision_intermediate));
    s.vision.emplace_back(q + "mlp.fc2.bias", w.Vector(dv, 0.0, 0.1));
    s.vision.emplace_back(q + "layer_norm2.weight", w.Vector(dv, 1.0, 0.1));
    s.vision.emplace_back(q + "layer_norm2.bias", w.Vector(dv, 0.0, 0.1));
  }
  s.vision.emplace_back("post_layernorm.weight", w.Vector(dv, 1.0, 0.1));
  s.vision.emplace_back("post_layernorm.bias", w.Vector(dv, 0.0, 0.1));
  s.projector.emplace_back("linear_1.weight", w.Matrix(d, dv));
  s.projector.emplace_back("linear_1.bias", w.Vector(d, 0.0, 0.1));
  s.projector.emplace_back("linear_2.weight", w.Matrix(d, d));
  s.projector.emplace_back("linear_2.bias", w.Vector(d, 0.0, 0.1));
  AddModeWeights(mode, o, w, &s);
  return s;
}

void AddPrefixed(NamedTensors* out, const NamedTensors& in, const std::string& prefix) {
  for (const auto& [name, tensor] : in) out->emplace_back(prefix + name, tensor);
}

json VisionConfigJson(const TinyLlavaOptions& o) {
  return {{"hidden_size", o.vision_hidden},       {"intermediate_size", o.vision_intermediate},
          {"num_hidden_layers", o.vision_layers}, {"num_attention_heads", o.vision_heads},
          {"image_size", o.image_size},           {"patch_size", o.patch_size},
          {"hidden_act", "quick_gelu"},           {"layer_norm_eps", 1e-5},
          {"model_type", "clip_vision_model"},    {"projection_dim", o.vision_hidden}};
}

json TextConfigJson(const TinyLlavaOptions& o, int vocab) {
  return {{"hidden_size", o.hidden_size},
          {"intermediate_size", o.intermediate_size},
          {"num_hidden_layers", o.num_layers},
          {"num_attention_heads", o.num_heads},
          {"num_key_value_heads", o.num_kv_heads},
          {"max_position_embeddings", o.max_positions},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"vocab_size", vocab},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"hidden_act", "silu"},
          {"model_type", "llama"},
          {"torch_dtype", o.dtype}};
}

json PreprocessorJson(const TinyLlavaOptions& o) {
  return {{"image_processor_type", "CLIPImageProcessor"},
          {"crop_size", {{"height", o.image_size}, {"width", o.image_size}}},
          {"size", {{"shortest_edge", o.image_size}}},
          {"do_center_crop", true},
          {"do_pad", true},  // LLaVA-1.5's expand2square, for both layouts alike.
          {"do_normalize", true},
          {"do_resize", true},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}},
          {"resample", 3}};
}

// Trains the tokenizer in a child process: libsentencepiece must not be loaded beside LibTorch's
// libprotobuf (see model/CMakeLists.txt).
Status TrainTokenizer(const std::string& trainer, const std::string& corpus,
                      const std::string& prefix, int vocab) {
  const std::string vocab_text = std::to_string(vocab);
  std::vector<char*> argv = {const_cast<char*>(trainer.c_str()), const_cast<char*>(corpus.c_str()),
                             const_cast<char*>(prefix.c_str()),
                             const_cast<char*>(vocab_text.c_str()), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, trainer.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
    return InternalError("cannot run the tokenizer trainer " + trainer);
  }
  int wstatus = 0;
  if (waitpid(pid, &wstatus, 0) < 0 || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return InternalError("the tokenizer trainer " + trainer + " failed on " + corpus);
  }
  return Status::Ok();
}

}  // namespace

TinyLlavaOptions TinyFlexLlavaOptions(uint64_t seed) {
  TinyLlavaOptions o;
  o.mode = "flex";
  o.layout = CheckpointLayout::kOriginalLlava;
  o.seed = seed;
  o.image_size = 336;
  o.patch_size = 14;
  o.num_layers = 4;
  o.max_positions = 1024;  // 576 image tokens + text + generated tokens.
  o.flex_num_sa_layers = 2;
  return o;
}

Status WriteTinyLlava(const std::string& dir_text, const TinyLlavaOptions& o) {
  const StatusOr<AttentionMode> parsed = ParseAttentionMode(o.mode);
  if (!parsed.ok()) return InvalidArgumentError("unknown mode '" + o.mode + "'");
  const AttentionMode mode = *parsed;
  if (mode == AttentionMode::kFlex && o.layout != CheckpointLayout::kOriginalLlava) {
    return InvalidArgumentError("flex checkpoints use the original LLaVA layout");
  }
  const fs::path dir(dir_text);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return InternalError("cannot create " + dir.string() + ": " + ec.message());
  FLEXVQA_ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(o.dtype, at::Device(at::kCPU)));

  const std::string corpus =
      o.corpus_path.empty() ? std::string(FLEXVQA_DATA_DIR) + "/tiny_corpus.txt" : o.corpus_path;
  const std::string trainer =
      o.trainer_path.empty() ? std::string(FLEXVQA_TRAIN_TOKENIZER_BIN) : o.trainer_path;
  FLEXVQA_RETURN_IF_ERROR(
      TrainTokenizer(trainer, corpus, (dir / "tokenizer").string(), o.tokenizer_vocab));
  fs::remove(dir / "tokenizer.vocab", ec);

  const bool hf = o.layout == CheckpointLayout::kHfLlava;
  // llava-hf appends <image> (and <pad>) to the vocabulary and pads the table to a multiple of 64.
  // Both layouts draw the padded tables; the original layout keeps their first rows, so the two
  // layouts share every weight.
  const int padded_vocab = (o.tokenizer_vocab + 1 + 63) / 64 * 64;
  const int vocab = hf ? padded_vocab : o.tokenizer_vocab;
  Sections s;
  try {
    s = MakeWeights(o, mode, padded_vocab, dtype);
    if (!hf) {
      s.text.front().second =
          s.text.front().second.narrow(0, 0, vocab).contiguous();  // embed_tokens
      s.lm_head.front().second = s.lm_head.front().second.narrow(0, 0, vocab).contiguous();
    }
  } catch (const std::exception& e) {
    return StatusFromTorchError(e, "making tiny weights");
  }
  json config;
  if (hf) {
    NamedTensors all;
    AddPrefixed(&all, s.text, "language_model.model.");
    AddPrefixed(&all, s.lm_head, "language_model.lm_head.");
    AddPrefixed(&all, s.vision, "vision_tower.vision_model.");
    AddPrefixed(&all, s.projector, "multi_modal_projector.");
    FLEXVQA_RETURN_IF_ERROR(
        WriteSafetensors((dir / "model.safetensors").string(), all, {{"format", "pt"}}));
    config = {{"architectures", {"LlavaForConditionalGeneration"}},
              {"model_type", "llava"},
              {"image_token_index", o.tokenizer_vocab},
              {"ignore_index", -100},
              {"pad_token_id", o.tokenizer_vocab + 1},
              {"projector_hidden_act", "gelu"},
              {"vision_feature_layer", -2},
              {"vision_feature_select_strategy", "default"},
              {"vocab_size", vocab},
              {"text_config", TextConfigJson(o, vocab)},
              {"vision_config", VisionConfigJson(o)},
              {"torch_dtype", o.dtype}};
  } else {
    NamedTensors all;
    AddPrefixed(&all, s.text, "model.");
    AddPrefixed(&all, s.lm_head, "lm_head.");
    for (const auto& [name, tensor] : s.projector) {
      // LLaVA's mm_projector is an nn.Sequential: Linear (0), GELU (1), Linear (2).
      const std::string index = name.rfind("linear_1", 0) == 0 ? "0" : "2";
      all.emplace_back("model.mm_projector." + index + name.substr(name.find('.')), tensor);
    }
    FLEXVQA_RETURN_IF_ERROR(
        WriteSafetensors((dir / "model.safetensors").string(), all, {{"format", "pt"}}));
    config = TextConfigJson(o, vocab);
    config["architectures"] = {"LlavaLlamaForCausalLM"};
    config["model_type"] = "llava";
    config["mm_vision_tower"] = "clip";
    config["mm_projector_type"] = "mlp2x_gelu";
    config["mm_vision_select_layer"] = -2;
    config["mm_vision_select_feature"] = "patch";
    config["mm_hidden_size"] = o.vision_hidden;
    config["mm_use_im_start_end"] = false;
    config["mm_use_im_patch_token"] = false;
    config["image_aspect_ratio"] = "pad";
    config["pad_token_id"] = 0;
    const fs::path clip = dir / "clip";
    fs::create_directories(clip, ec);
    NamedTensors vision;
    AddPrefixed(&vision, s.vision, "vision_model.");
    FLEXVQA_RETURN_IF_ERROR(
        WriteSafetensors((clip / "model.safetensors").string(), vision, {{"format", "pt"}}));
    json clip_config = {{"architectures", {"CLIPModel"}},
                        {"model_type", "clip"},
                        {"projection_dim", o.vision_hidden},
                        {"vision_config", VisionConfigJson(o)}};
    FLEXVQA_RETURN_IF_ERROR(WriteText(clip / "config.json", clip_config.dump(2)));
    FLEXVQA_RETURN_IF_ERROR(
        WriteText(clip / "preprocessor_config.json", PreprocessorJson(o).dump(2)));
  }
  AddModeConfig(mode, o, &config);
  FLEXVQA_RETURN_IF_ERROR(WriteText(dir / "config.json", config.dump(2)));
  FLEXVQA_RETURN_IF_ERROR(WriteText(dir / "preprocessor_config.json", PreprocessorJson(o).dump(2)));
  return Status::Ok();
}

}  // namespace flexvqa
