#include "model/modes/highres_attention.h"

#include <ATen/ATen.h>

#include "model/modes/highres_selection.h"
#include "model/nn/layers.h"

namespace flexvqa {

at::Tensor TokenBlocks(int hr_side, at::Device device) {
  // Token (r, c) lies in block (r / b, c / b), b = hr_side / 9 (the nearest upsampling of
  // modeling_llama.py:567).
  const int64_t b = hr_side / kSelectionGrid;
  const at::Tensor r = at::arange(hr_side, at::TensorOptions().dtype(at::kLong)).div(b, "floor");
  return (r.view({hr_side, 1}) * kSelectionGrid + r.view({1, hr_side})).reshape({-1}).to(device);
}

at::Tensor HighResKeys(const at::Tensor& features, const at::Tensor& k_weight,
                       const at::Tensor& cos, const at::Tensor& sin, int64_t kv_heads) {
  const int64_t t = features.size(0), dh = k_weight.size(0) / kv_heads;
  const at::Tensor k = Linear(features, k_weight).view({t, kv_heads, dh}).transpose(0, 1);
  return ApplyRotary(k, cos, sin).contiguous();  // [KV, T, Dh]
}

at::Tensor ValueWeightsPerQueryHead(const at::Tensor& v_weight, int64_t heads, int64_t kv_heads) {
  const int64_t dh = v_weight.size(0) / kv_heads, d = v_weight.size(1);
  return v_weight.view({kv_heads, dh, d}).repeat_interleave(heads / kv_heads, 0).contiguous();
}

AttentionPart HighResPart(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& features,
                          const at::Tensor& blocks, const at::Tensor& token_blocks,
                          const at::Tensor& v_weights, double scale) {
  const int64_t b = q.size(0), h = q.size(1), t = keys.size(2);
  const at::Tensor valid = blocks.index_select(1, token_blocks);  // [B, T]
  const PartSoftmax part = SoftmaxOneRow(q, keys, valid, scale);
  // sum_i p_i x_i per head: [B, H, T] x [B, T, D] -> [B, H, D]; then v_proj_hd per head:
  // [H, B, D] x [H, D, Dh] -> [H, B, Dh].
  const at::Tensor mixed =
      at::matmul(part.probs.view({b, h, t}).to(features.scalar_type()), features);
  const at::Tensor out = at::matmul(mixed.transpose(0, 1), v_weights.transpose(1, 2));
  return {out.transpose(0, 1).to(at::kFloat), part.lse};  // [B, H, Dh], [B, H]
}

}  // namespace flexvqa
