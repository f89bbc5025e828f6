// FlexAttention's hierarchical attention for the newest row (flexattention.md §4;
// modeling_llama.py:444-499) as two parts merged exactly: the row's attention over its causal keys
// and over its selected high-resolution keys, each with its log-sum-exp, combined as one softmax
// over both key sets would be, without concatenating them. Fixed shapes: keys that do not take part
// are masked, not removed. Pure functions; any thread, any device. Shapes: B rows (one per
// sequence), H query heads, KV key/value heads (H a multiple of KV), M keys, Dh head width.
#pragma once

#include <ATen/core/Tensor.h>

namespace flexvqa {

// One part of a row's attention: its output normalised over the part's own keys, and the log of
// the part's softmax denominator, log sum_j exp(score_j). A part with no valid key has out 0 and
// lse -inf, so that merging it changes nothing.
struct AttentionPart {
  at::Tensor out;  // [B, H, Dh] fp32
  at::Tensor lse;  // [B, H] fp32
};

// A part's softmax before the values: probabilities over its own valid keys (0 for the others, all
// 0 in a row without one) and the log-sum-exp.
struct PartSoftmax {
  at::Tensor probs;  // [B, KV, G, M] fp32, G = H / KV: query head h = kv G + g.
  at::Tensor lse;    // [B, H] fp32
};

// q [B, H, Dh] against keys [B, KV, M, Dh] (query head h reads KV head h / (H / KV), as
// repeat_interleave), valid [B, M] bool (false: the key takes no part). Scores q k * scale and the
// softmax in fp32.
PartSoftmax SoftmaxOneRow(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& valid,
                          double scale);

// SoftmaxOneRow times values [B, KV, M, Dh].
AttentionPart AttendOneRow(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           const at::Tensor& valid, double scale);

// The output of one softmax over the union of both parts' keys, [B, H, Dh] fp32:
// out_a + sigmoid(lse_b - lse_a) (out_b - out_a), i.e. weights e^lse_a and e^lse_b normalised.
// Where part b has no valid key (lse_b = -inf) the result is out_a bit for bit. Part a must have
// at least one valid key per row (the causal part always has the row's own key).
at::Tensor MergeAttentionParts(const AttentionPart& a, const AttentionPart& b);

}  // namespace flexvqa
