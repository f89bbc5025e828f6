// Analytic FLOP counts (a multiply-add counts 2) of the work the engine runs, by phase and
// component of FlopCount (model/engine.h). Pure functions of configs and the shapes actually run:
// the engine calls them with its real batch shapes (images and tiles encoded, chunk starts and
// lengths, high-resolution keys attended, HR key/value rows computed), so the count follows what
// ran, not a second model. Attention is counted as the eager kernels compute it: the full [queries
// x keys] rectangle of each chunk. Norms, activations, softmax and RoPE (O(T D)) are left out.
// Torch-free and thread-safe.
#pragma once

#include <cstdint>

#include "model/engine.h"
#include "model/weights/model_config.h"

namespace flexvqa {

// 2 * rows * in * out.
double LinearFlops(int64_t rows, int64_t in, int64_t out);
// Scores and weighted values: 2 * 2 * heads * queries * keys * head_dim.
double AttentionFlops(int64_t heads, int64_t queries, int64_t keys, int64_t head_dim);

// `images` passes of the CLIP tower at its native size (blocks run: up to the selected hidden
// state) into FlopCount::kVision, and the projector over their patch tokens into kProjector.
void AddVisionFlops(const LlavaConfig& config, int64_t images, FlopCount* count);

// One chunk of the decoder: `length` new rows after `start` cached ones, in phase kPrefill or
// kDecode; projections (q, k, v, o), attention over start + length keys, SwiGLU MLP, and lm_head
// for one row.
void AddDecoderChunkFlops(const TextConfig& config, int64_t start, int64_t length,
                          FlopCount::Phase phase, FlopCount* count);

// composite (docs/modes.md): as above, but the rows [skip_begin, skip_begin + skip) of the chunk
// (relative to it; clamped to it) run no attention: the rows before them attend to start +
// skip_begin keys, the rows after them to start + length keys, each as its own rectangle.
// Projections and MLP run on every row.
void AddDecoderChunkFlops(const TextConfig& config, int64_t start, int64_t length,
                          int64_t skip_begin, int64_t skip, FlopCount::Phase phase,
                          FlopCount* count);

// xattn (model/modes/xattn.cc), one chunk in every cross-attending layer: q and o
// projections of its `rows` (computed for every row of a batch), attention of those rows to
// `hr_keys` HR tokens (0 for a chunk without an image), and `hr_rows_computed` HR tokens through
// the k/v projections (once, at prefill).
void AddCrossAttentionFlops(const LlavaConfig& config, int64_t rows, int64_t hr_keys,
                            int64_t hr_rows_computed, FlopCount::Phase phase, FlopCount* count);

// flex: the extra work of last rows (model/modes/flex.cc). `rescored_keys`: ordinary keys
// whose scores the hook recomputed for the last row (summed over layers; selection and hierarchical
// softmax); `hr_keys_attended`: HR keys that joined the last row's attention (summed over FA
// layers); `hr_rows_computed`: HR tokens that went through k_proj_hd / v_proj_hd.
void AddFlexFlops(const TextConfig& config, int64_t rescored_keys, int64_t hr_keys_attended,
                  int64_t hr_rows_computed, FlopCount::Phase phase, FlopCount* count);

}  // namespace flexvqa
