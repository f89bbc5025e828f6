// Writes a tiny random LLaVA-1.5 checkpoint in a public layout, for tests and the demo:
// config.json, model.safetensors, tokenizer.model (SentencePiece trained on
// tools/tiny/data/tiny_corpus.txt) and preprocessor_config.json; for the original-LLaVA layout also
// the separate CLIP directory ("clip/"). The same seed gives the same weights in either layout, so
// the two layouts must produce the same numbers. Runs in about a second. Modes hd and composite
// write the same weights as full, with the mode in config.json; xattn adds
// model.layers.{i}.cross_attn.{q,k,v,o}_proj.weight and cross_attn_norm.weight. mode "flex" writes
// a FlexAttention checkpoint as senfu/llava-v1.5-7b-flexattn lays it out (original layout,
// k_proj_hd / v_proj_hd in every layer, the "extra" dict with string values);
// TinyFlexLlavaOptions() gives it the paper's image geometry.
#pragma once

#include <string>

#include "model/status.h"
#include "model/weights/model_config.h"

namespace flexvqa {

struct TinyLlavaOptions {
  CheckpointLayout layout = CheckpointLayout::kHfLlava;
  uint64_t seed = 0;
  int tokenizer_vocab = 512;  // SentencePiece pieces; the hf layout adds <image> and pads to 64.
  int hidden_size = 64;
  int intermediate_size = 160;
  int num_layers = 2;
  int num_heads = 4;
  int num_kv_heads = 4;
  int max_positions = 512;
  int vision_hidden = 32;
  int vision_intermediate = 64;
  int vision_layers = 3;  // The tower runs vision_layers - 1 of them (LLaVA's layer -2).
  int vision_heads = 2;
  int image_size = 56;  // 4x4 patches of 14 px: 16 image tokens.
  int patch_size = 14;
  std::string dtype = "float32";  // float32 | float16 | bfloat16 (stored dtype)
  std::string corpus_path;        // Default: FLEXVQA_DATA_DIR/tiny_corpus.txt.
  std::string trainer_path;  // flexvqa_train_tokenizer. Default: the one built with this library.
  // full | flex (flex implies the original layout) | hd | composite (either layout: the plain
  // weights plus config.json "attention_mode"; docs/modes.md) | xattn (the plain weights plus
  // cross_attn.* weights).
  std::string mode = "full";
  int hd_zoom = 2;             // hd: config.json "hd_zoom".
  int xattn_zoom = 3;          // xattn: "xattn_zoom" (168 px at a 56 px tower: 12x12 HR tokens).
  int xattn_every = 2;         // xattn: "xattn_every" (layers 0, 2, ...: both paths run).
  int xattn_hidden = 32;       // xattn: "xattn_hidden".
  int xattn_heads = 2;         // xattn: "xattn_heads".
  int flex_num_sa_layers = 2;  // flex: extra.num_sa_layers (N_SA).
  int flex_threshold = 48;     // flex: extra.threshold (the released checkpoint's value).
};

// flex at the real geometry: CLIP 336 px / patch 14 (24x24 LR tokens, 72x72 HR tokens at 1008 px,
// so the 9x9 / 8x8-block steps are exactly the paper's) with tiny widths: vision 32 wide, 3 layers;
// LLM 64 wide, 4 layers, N_SA = 2.
TinyLlavaOptions TinyFlexLlavaOptions(uint64_t seed = 0);

// Creates `dir` (and parents) and writes the checkpoint into it.
Status WriteTinyLlava(const std::string& dir, const TinyLlavaOptions& options);

}  // namespace flexvqa
