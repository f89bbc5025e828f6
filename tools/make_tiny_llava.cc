// make_tiny_llava: writes a tiny random LLaVA-1.5 checkpoint (tools/tiny/tiny_llava.h) for tests
// and the demo.
//   make_tiny_llava --out DIR [--mode full|flex|hd|composite|xattn] [--layout hf|original] [--seed
//   N]
//                   [--dtype float32|float16|bfloat16]
// --mode flex: a FlexAttention checkpoint (original layout, 336 px CLIP, 1008 px high resolution).
// --mode hd|composite: the full-mode weights with config.json's attention_mode (docs/modes.md);
// --mode xattn adds the cross-attention weights.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tools/tiny/tiny_llava.h"

int main(int argc, char** argv) {
  flexvqa::TinyLlavaOptions options;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--out") {
      out = value("--out");
    } else if (arg == "--layout") {
      const std::string layout = value("--layout");
      if (layout == "hf") {
        options.layout = flexvqa::CheckpointLayout::kHfLlava;
      } else if (layout == "original") {
        options.layout = flexvqa::CheckpointLayout::kOriginalLlava;
      } else {
        std::fprintf(stderr, "--layout must be hf or original\n");
        return 2;
      }
    } else if (arg == "--mode") {
      const std::string mode = value("--mode");
      if (mode == "flex") {
        const flexvqa::TinyLlavaOptions flex = flexvqa::TinyFlexLlavaOptions(options.seed);
        options.mode = flex.mode;
        options.layout = flex.layout;
        options.image_size = flex.image_size;
        options.patch_size = flex.patch_size;
        options.num_layers = flex.num_layers;
        options.max_positions = flex.max_positions;
        options.flex_num_sa_layers = flex.flex_num_sa_layers;
      } else if (mode == "hd" || mode == "composite" || mode == "xattn") {
        options.mode = mode;
      } else if (mode != "full") {
        std::fprintf(stderr, "--mode must be full, flex, hd, composite or xattn\n");
        return 2;
      }
    } else if (arg == "--seed") {
      options.seed = std::strtoull(value("--seed"), nullptr, 10);
    } else if (arg == "--dtype") {
      options.dtype = value("--dtype");
    } else {
      std::fprintf(stderr,
                   "usage: make_tiny_llava --out DIR [--mode full|flex|hd|composite|xattn] "
                   "[--layout hf|original] [--seed N] "
                   "[--dtype float32|float16|bfloat16]\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  if (out.empty()) {
    std::fprintf(stderr, "--out DIR is required\n");
    return 2;
  }
  const flexvqa::Status status = flexvqa::WriteTinyLlava(out, options);
  if (!status.ok()) {
    std::fprintf(stderr, "make_tiny_llava: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("wrote a tiny %s-layout LLaVA checkpoint to %s\n",
              flexvqa::CheckpointLayoutName(options.layout), out.c_str());
  return 0;
}
