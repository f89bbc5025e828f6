// flops_table: the FLOP counter's formulas (model/flop_counter.h) applied to LLaVA-1.5-7B for a request like
// the paper's MagnifierBench setting (prompt text tokens, generated tokens, 1008 px, selected fraction), for
// the modes the engine implements; prints the Markdown table of docs/flops.md.
//   flops_table [--text 50] [--generated 63] [--selected-blocks 8]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "model/flop_counter.h"

namespace {

using flexvqa::FlopCount;

double Phase(const FlopCount& f, int phase) {
  double s = 0;
  for (double x : f.flops[phase]) s += x;
  return s;
}

void Row(const char* name, const FlopCount& f) {
  std::printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", name, Phase(f, FlopCount::kVision) / 1e12,
              Phase(f, FlopCount::kProjector) / 1e12, Phase(f, FlopCount::kPrefill) / 1e12,
              Phase(f, FlopCount::kDecode) / 1e12,
              (f.flops[FlopCount::kPrefill][FlopCount::kHighResProjections] +
               f.flops[FlopCount::kDecode][FlopCount::kHighResProjections]) / 1e12,
              f.Total() / 1e12);
}

}  // namespace

int main(int argc, char** argv) {
  int text = 50, generated = 63, blocks = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--text") text = v;
    else if (a == "--generated") generated = v;
    else if (a == "--selected-blocks") blocks = v;
  }
  flexvqa::LlavaConfig c;  // LlamaConfig defaults are LLaVA-1.5-7B's.
  c.vision.hidden_size = 1024;
  c.vision.intermediate_size = 4096;
  c.vision.num_hidden_layers = 24;
  c.vision.num_attention_heads = 16;
  c.vision.image_size = 336;
  c.vision.patch_size = 14;
  const flexvqa::TextConfig& t = c.text;
  const int64_t lr = 576, hr_blocks = 81, block = 64, n_sa = 9, layers = t.num_hidden_layers;
  const int64_t n_fa = layers - n_sa, prompt = text + lr, steps = generated;  // forwards: 1 + (steps - 1)
  const int64_t m = blocks * block;
  std::printf("7B, %d text + 576 image prompt tokens, %d generated, flex: %d of 81 blocks (%lld HR "
              "tokens, %.1f%%) per FA layer and step\n\n",
              text, generated, blocks, static_cast<long long>(m), 100.0 * blocks / hr_blocks);
  std::printf("| mode | vision | projector | prefill | decode | of which HR proj. | total (TFLOPs) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  auto base = [&](int64_t images) {
    FlopCount f;
    flexvqa::AddVisionFlops(c, images, &f);
    flexvqa::AddDecoderChunkFlops(t, 0, prompt, FlopCount::kPrefill, &f);
    for (int64_t s = 1; s < steps; ++s) flexvqa::AddDecoderChunkFlops(t, prompt + s - 1, 1, FlopCount::kDecode, &f);
    return f;
  };
  Row("full (336 px)", base(1));
  // flex: selection rescoring in layers N_SA-1..L-1 (24 layers), M HR keys in each FA layer.
  auto flex = [&](int64_t rows_prefill, int64_t rows_per_decode) {
    FlopCount f = base(1 + 9);
    flexvqa::AddFlexFlops(t, (n_fa + 1) * prompt, n_fa * m, rows_prefill, FlopCount::kPrefill, &f);
    for (int64_t s = 1; s < steps; ++s) {
      flexvqa::AddFlexFlops(t, (n_fa + 1) * (prompt + s), n_fa * m, rows_per_decode, FlopCount::kDecode, &f);
    }
    return f;
  };
  Row("flex, lazy blocks, selection never moves (lower bound)", flex(n_fa * m, 0));
  Row("flex, every block of every FA layer computed once (upper bound)", flex(n_fa * hr_blocks * block, 0));
  Row("flex, HR K/V recomputed every step (the reference)", flex(n_fa * m, n_fa * m));
  return 0;
}
