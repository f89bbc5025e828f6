// The high-resolution part of FlexAttention's newest row (flexattention.md §4;
// modeling_llama.py:436-499) for a whole batch with fixed shapes: every sequence's row attends to
// all hr_side^2 HR keys of its image, those outside the selected 8x8 blocks masked, so the shapes
// depend on nothing but the batch. Keys are computed for every HR token once per request
// (HighResKeys); values are never stored: they are linear in the raw features, so
// sum_i p_i (W_v x_i) = W_v (sum_i p_i x_i) per head, and the part's output is v_proj_hd applied
// per head to the probability-weighted raw features. That halves the per-request buffer (the 7B
// model's 23 FA layers of keys alone are 0.91 GiB in bf16; keys and values 1.82 GiB), for H x D
// instead of H x Dh multiply-adds per HR key in the value product. Pure functions; any thread,
// any device. Shapes: B sequences, H query heads, KV key/value heads, T = hr_side^2 HR tokens, D
// model width, Dh head width.
#pragma once

#include <ATen/core/Tensor.h>

#include "model/modes/attention_merge.h"

namespace flexvqa {

// The 9x9 block (row-major) of each HR token (row-major over hr_side x hr_side): [T] int64. The
// inverse of BlockTokenIndices (highres_selection.h).
at::Tensor TokenBlocks(int hr_side, at::Device device);

// One FA layer's keys of every HR token of one image: k_proj_hd of the raw projector features (no
// RMSNorm; modeling_llama.py:436-441) under the tokens' interpolated RoPE rows (:442-443).
// features [T, D], k_weight [KV Dh, D], cos/sin [T, Dh] -> [KV, T, Dh].
at::Tensor HighResKeys(const at::Tensor& features, const at::Tensor& k_weight,
                       const at::Tensor& cos, const at::Tensor& sin, int64_t kv_heads);

// v_proj_hd's rows for each query head: v_weight [KV Dh, D] -> [H, Dh, D] (query head h reads KV
// head h / (H / KV), as the reference's repeat_interleave). Built once at load.
at::Tensor ValueWeightsPerQueryHead(const at::Tensor& v_weight, int64_t heads, int64_t kv_heads);

// q [B, H, Dh] (the newest rows after RoPE), keys [B, KV, T, Dh] (HighResKeys of each sequence's
// image), features [B, T, D] (raw), blocks [B, 81] bool (the selection this layer uses),
// token_blocks [T] (TokenBlocks), v_weights [H, Dh, D] -> the part over the selected HR tokens
// (out 0 and lse -inf for a sequence with none), to merge with the causal part
// (MergeAttentionParts).
AttentionPart HighResPart(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& features,
                          const at::Tensor& blocks, const at::Tensor& token_blocks,
                          const at::Tensor& v_weights, double scale);

}  // namespace flexvqa
