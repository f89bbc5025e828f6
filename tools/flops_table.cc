// flops_table: the FLOP counter's formulas (model/nn/flop_counter.h) applied to LLaVA-1.5-7B for a
// request like the paper's MagnifierBench setting (prompt text tokens, generated tokens, 1008 px,
// selected fraction), for the modes the engine implements; prints the Markdown table of
// docs/flops.md. Modes hd, composite and xattn as docs/modes.md defines them (composite: the image
// after --text-before of the text tokens, LLaVA's system prompt).
//   flops_table [--text 50] [--text-before 35] [--generated 63] [--selected-blocks 8]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "model/nn/flop_counter.h"

namespace {

using flexvqa::FlopCount;

double Phase(const FlopCount& f, int phase) {
  double s = 0;
  for (double x : f.flops[phase]) s += x;
  return s;
}

void Row(const char* name, const FlopCount& f) {
  std::printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", name,
              Phase(f, FlopCount::kVision) / 1e12, Phase(f, FlopCount::kProjector) / 1e12,
              Phase(f, FlopCount::kPrefill) / 1e12, Phase(f, FlopCount::kDecode) / 1e12,
              (f.flops[FlopCount::kPrefill][FlopCount::kHighResProjections] +
               f.flops[FlopCount::kDecode][FlopCount::kHighResProjections]) /
                  1e12,
              f.Total() / 1e12);
}

}  // namespace

int main(int argc, char** argv) {
  int text = 50, text_before = 35, generated = 63, blocks = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--text")
      text = v;
    else if (a == "--generated")
      generated = v;
    else if (a == "--text-before")
      text_before = v;
    else if (a == "--selected-blocks")
      blocks = v;
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
  const int64_t n_fa = layers - n_sa, prompt = text + lr,
                steps = generated;  // forwards: 1 + (steps - 1)
  const int64_t m = blocks * block;
  std::printf(
      "7B, %d text + 576 image prompt tokens, %d generated, flex: %d of 81 blocks (%lld HR "
      "tokens, %.1f%%) per FA layer and step\n\n",
      text, generated, blocks, static_cast<long long>(m), 100.0 * blocks / hr_blocks);
  std::printf(
      "| mode | vision | projector | prefill | decode | of which HR proj. | total (TFLOPs) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  // images through the tower; a prompt of `tokens` rows whose `skip` rows from `skip_begin` run no
  // attention.
  auto run = [&](int64_t images, int64_t tokens, int64_t skip_begin, int64_t skip) {
    FlopCount f;
    flexvqa::AddVisionFlops(c, images, &f);
    flexvqa::AddDecoderChunkFlops(t, 0, tokens, skip_begin, skip, FlopCount::kPrefill, &f);
    for (int64_t s = 1; s < steps; ++s)
      flexvqa::AddDecoderChunkFlops(t, tokens + s - 1, 1, FlopCount::kDecode, &f);
    return f;
  };
  auto base = [&](int64_t images) { return run(images, prompt, 0, 0); };
  Row("full (336 px)", base(1));
  // flex: selection rescoring in layers N_SA-1..L-1 (24 layers), M HR keys in each FA layer.
  auto flex = [&](int64_t rows_prefill, int64_t rows_per_decode) {
    FlopCount f = base(1 + 9);
    flexvqa::AddFlexFlops(t, (n_fa + 1) * prompt, n_fa * m, rows_prefill, FlopCount::kPrefill, &f);
    for (int64_t s = 1; s < steps; ++s) {
      flexvqa::AddFlexFlops(t, (n_fa + 1) * (prompt + s), n_fa * m, rows_per_decode,
                            FlopCount::kDecode, &f);
    }
    return f;
  };
  Row("flex, lazy blocks, selection never moves (lower bound)", flex(n_fa * m, 0));
  Row("flex, every block of every FA layer computed once (upper bound)",
      flex(n_fa * hr_blocks * block, 0));
  Row("flex, HR K/V recomputed every step (the reference)", flex(n_fa * m, n_fa * m));
  // hd: 1 + Z^2 images; the prompt holds the LR tokens and the (24 Z)^2 HR tokens.
  Row("hd, 672 px (Z = 2: 576 + 2304 image tokens)", run(1 + 4, text + lr + 48 * 48, 0, 0));
  Row("hd, 1008 px (Z = 3: 576 + 5184 image tokens; beyond the 4096 context)",
      run(1 + 9, text + lr + 72 * 72, 0, 0));
  Row("composite (336 px, 576 image rows skip attention)", run(1, prompt, text_before, lr));
  // xattn: LLaVA's prompt, 10 images through the tower, cross-attention to 5184 HR tokens in every
  // layer.
  flexvqa::LlavaConfig x = c;
  x.mode.attention = flexvqa::AttentionMode::kXattn;
  FlopCount xf = base(1 + 9);
  flexvqa::AddCrossAttentionFlops(x, prompt, 72 * 72, 72 * 72, FlopCount::kPrefill, &xf);
  for (int64_t s = 1; s < steps; ++s)
    flexvqa::AddCrossAttentionFlops(x, 1, 72 * 72, 0, FlopCount::kDecode, &xf);
  Row("xattn (1008 px, every layer, C = 1024, 32 heads)", xf);
  x.mode.xattn_hidden = 4096;  // Full-width cross-attention, for comparison with the paper.
  FlopCount wide = base(1 + 9);
  flexvqa::AddCrossAttentionFlops(x, prompt, 72 * 72, 72 * 72, FlopCount::kPrefill, &wide);
  for (int64_t s = 1; s < steps; ++s)
    flexvqa::AddCrossAttentionFlops(x, 1, 72 * 72, 0, FlopCount::kDecode, &wide);
  Row("xattn, C = D = 4096 (not our default)", wide);
  // The paper's HD ran at 448 px: 32 x 32 = 1024 HR tokens after the 576 LR ones. We do not run a
  // 448 tower; vision here counts the LR image only.
  Row("hd at the paper's 448 px (576 + 1024 image tokens; 448 tower not counted)",
      run(1, text + lr + 32 * 32, 0, 0));
  return 0;
}
