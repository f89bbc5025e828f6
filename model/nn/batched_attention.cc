#include "model/nn/batched_attention.h"

#include <ATen/ATen.h>

#include <limits>

namespace flexvqa {

at::Tensor CausalAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
                           at::Tensor* lse) {
  const at::Tensor& pool = batch.cache->pool(layer);  // [S + 1, ctx, 2, KV, Dh]
  const int64_t c = batch.sequences(), tq = batch.query_len, tk = batch.key_len;
  const int64_t kv = pool.size(3), dh = pool.size(4), h = q.size(1), g = h / kv;
  // One gather each for the batch's keys and values, into [C, KV, Tk, Dh] (head-major, so that
  // the batched matmuls below fold C and KV into one batch dimension without a copy).
  auto gather = [&](int64_t which) {
    return pool.narrow(1, 0, tk)
        .select(2, which)
        .permute({0, 2, 1, 3})
        .index_select(0, batch.slots);
  };
  const at::Tensor k = gather(0), v = gather(1);
  // [N, H, Dh] -> padded [C, Tq, KV, G, Dh] -> [C, KV, G Tq, Dh]: each KV head's query rows.
  const at::Tensor padded = tq == 1 ? q : q.index_select(0, batch.pad_rows);
  const at::Tensor qg =
      padded.view({c, tq, kv, g, dh}).permute({0, 2, 3, 1, 4}).reshape({c, kv, g * tq, dh});
  const at::Tensor scores =
      (at::matmul(qg, k.transpose(-1, -2)) * batch.scale)
          .view({c, kv, g, tq, tk})
          .masked_fill(batch.key_mask, -std::numeric_limits<float>::infinity())
          .view({c, kv, g * tq, tk});  // [C, KV, G Tq, Tk]
  const at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  // [C, KV, G Tq, Dh] -> [C, Tq, KV, G, Dh] -> [C Tq, H, Dh]
  auto packed = [&](const at::Tensor& t, int64_t width) {
    at::Tensor out =
        t.view({c, kv, g, tq, width}).permute({0, 3, 1, 2, 4}).reshape({c * tq, h, width});
    return tq == 1 ? out : out.index_select(0, batch.unpad_rows);
  };
  if (lse != nullptr) {
    *lse = packed(at::logsumexp(scores.to(at::kFloat), -1, /*keepdim=*/true), 1).squeeze(-1);
  }
  return packed(at::matmul(probs, v), dh);  // [N, H, Dh]
}

at::Tensor MergeAttention(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b,
                          const at::Tensor& lse_b) {
  // softmax over A u B = w_a softmax_A + w_b softmax_B with w = exp(lse - lse_union).
  const at::Tensor total = at::logaddexp(lse_a, lse_b);
  const at::Tensor wa = at::exp(lse_a - total).unsqueeze(-1);
  const at::Tensor wb = at::exp(lse_b - total).unsqueeze(-1);
  return (out_a.to(at::kFloat) * wa + out_b.to(at::kFloat) * wb).to(out_a.scalar_type());
}

}  // namespace flexvqa
