#include "model/modes/attention_merge.h"

#include <ATen/ATen.h>

#include <limits>

namespace flexvqa {

PartSoftmax SoftmaxOneRow(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& valid,
                          double scale) {
  const int64_t b = q.size(0), h = q.size(1), dh = q.size(2);
  const int64_t kv = keys.size(1), m = keys.size(2);
  // Grouped-query attention without copying keys: the G = H / KV query heads of one KV head as
  // G rows of that head's matrix product.
  const at::Tensor qg = q.view({b, kv, h / kv, dh});  // [B, KV, G, Dh]
  at::Tensor scores = at::matmul(qg, keys.transpose(2, 3)).to(at::kFloat) * scale;  // [B, KV, G, M]
  scores = at::where(valid.view({b, 1, 1, m}), scores, -std::numeric_limits<double>::infinity());
  // With no valid key the row maximum is -inf; the lowest finite float keeps exp() at 0 instead of
  // exp(-inf + inf) = NaN.
  const at::Tensor max =
      std::get<0>(scores.max(-1, /*keepdim=*/true)).clamp_min(std::numeric_limits<float>::lowest());
  const at::Tensor p = (scores - max).exp();           // [B, KV, G, M]
  const at::Tensor sum = p.sum(-1, /*keepdim=*/true);  // [B, KV, G, 1]: >= 1 unless empty
  // Empty rows: 0 / tiny = 0 rather than 0 / 0; their lse is log(0) = -inf.
  return {p / sum.clamp_min(std::numeric_limits<float>::min()), (max + sum.log()).view({b, h})};
}

AttentionPart AttendOneRow(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           const at::Tensor& valid, double scale) {
  const PartSoftmax part = SoftmaxOneRow(q, keys, valid, scale);
  // Probabilities cast to the values' dtype before the product, as HF's eager attention.
  const at::Tensor out = at::matmul(part.probs.to(values.scalar_type()), values);  // [B, KV, G, Dh]
  return {out.to(at::kFloat).view({q.size(0), q.size(1), q.size(2)}), part.lse};
}

at::Tensor MergeAttentionParts(const AttentionPart& a, const AttentionPart& b) {
  // Weight of part b in the union: e^lse_b / (e^lse_a + e^lse_b) = sigmoid(lse_b - lse_a), which
  // is exactly 0 for an empty part b; lerp(out_a, out_b, 0) returns out_a unchanged.
  const at::Tensor weight = (b.lse - a.lse).sigmoid().unsqueeze(-1);  // [B, H, 1]
  return at::lerp(a.out, b.out, weight);                              // [B, H, Dh]
}

}  // namespace flexvqa
