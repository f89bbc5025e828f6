#include "model/nn/batched_attention.h"

#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "model/nn/cuda/varlen_attention.h"

namespace flexvqa {
namespace {

// The CUDA path: FlashAttention-2 varlen over the pool itself, each sequence reading only its
// seq_lengths keys (no gather, no mask). Where its contract holds: a CUDA build with the entry
// point, half or bf16, Dh % 8 == 0, no log-sum-exp asked for. Not yet run on a GPU (issue 9).
bool UseVarlen(const at::Tensor& q, const at::Tensor& pool, const at::Tensor* lse) {
  return VarlenAttentionCudaBuilt() && q.is_cuda() && lse == nullptr &&
         (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16) &&
         pool.size(4) % 8 == 0 && pool.size(4) <= 256;
}

at::Tensor Varlen(const at::Tensor& q, const at::Tensor& pool, const DecoderBatch& batch) {
  const int64_t c = batch.sequences(), slots = pool.size(1), ctx = pool.size(2);
  const auto i32 = at::TensorOptions().dtype(at::kInt).device(q.device());
  VarlenBatch varlen;
  if (batch.query_len == 1) {
    varlen.cu_seqlens_q = at::arange(c + 1, i32);  // One row per sequence.
  } else {
    std::vector<int32_t> starts;  // Prefill chunks are packed in row order, no padding.
    for (const ChunkSpan& chunk : batch.chunks) starts.push_back(chunk.row_begin);
    starts.push_back(static_cast<int32_t>(batch.rows));
    varlen.cu_seqlens_q = at::tensor(starts, at::TensorOptions().dtype(at::kInt)).to(q.device());
  }
  varlen.k_start =
      (at::cat({batch.slots, at::full({1}, slots, batch.slots.options())}) * ctx).to(at::kInt);
  varlen.seqused_k = batch.seq_lengths.to(at::kInt);
  varlen.max_q = batch.query_len;
  varlen.max_k = ctx;
  return VarlenAttentionCuda(q.contiguous(), pool[0], pool[1], varlen, batch.scale,
                             /*causal=*/true);
}

}  // namespace

CausalScores CausalAttentionScores(int layer, const at::Tensor& q, const DecoderBatch& batch) {
  const at::Tensor& pool = batch.cache->pool(layer);  // [2, S + 1, ctx, KV, Dh]
  const int64_t c = batch.sequences(), tq = batch.query_len, tk = batch.key_len;
  const int64_t kv = pool.size(3), dh = pool.size(4), h = q.size(1), g = h / kv;
  // One gather each for the batch's keys and values, into [C, KV, Tk, Dh] (head-major, so that
  // the batched matmuls below fold C and KV into one batch dimension without a copy).
  auto gather = [&](int64_t which) {
    return pool[which].narrow(1, 0, tk).permute({0, 2, 1, 3}).index_select(0, batch.slots);
  };
  const at::Tensor k = gather(0);
  // [N, H, Dh] -> padded [C, Tq, KV, G, Dh] -> [C, KV, G Tq, Dh]: each KV head's query rows.
  const at::Tensor padded = tq == 1 ? q : q.index_select(0, batch.pad_rows);
  const at::Tensor qg =
      padded.view({c, tq, kv, g, dh}).permute({0, 2, 3, 1, 4}).reshape({c, kv, g * tq, dh});
  // Masked in place: the product is this call's own temporary (one kernel, not a copy and a fill).
  const at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)) * batch.scale;
  scores.view({c, kv, g, tq, tk})
      .masked_fill_(batch.key_mask, -std::numeric_limits<float>::infinity());  // [C, KV, G Tq, Tk]
  return {scores, gather(1)};
}

at::Tensor AttendCausalValues(const at::Tensor& probs, const CausalScores& causal,
                              const DecoderBatch& batch) {
  const int64_t c = batch.sequences(), tq = batch.query_len;
  const int64_t kv = causal.values.size(1), dh = causal.values.size(3);
  const int64_t g = probs.size(2) / tq, h = kv * g;
  // [C, KV, G Tq, Dh] -> [C, Tq, KV, G, Dh] -> [C Tq, H, Dh]
  const at::Tensor out = at::matmul(probs.to(causal.values.scalar_type()), causal.values)
                             .view({c, kv, g, tq, dh})
                             .permute({0, 3, 1, 2, 4})
                             .reshape({c * tq, h, dh});
  return tq == 1 ? out : out.index_select(0, batch.unpad_rows);
}

at::Tensor CausalAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
                           at::Tensor* lse) {
  const at::Tensor& pool = batch.cache->pool(layer);  // [2, S + 1, ctx, KV, Dh]
  if (UseVarlen(q, pool, lse)) return Varlen(q, pool, batch);
  const CausalScores causal = CausalAttentionScores(layer, q, batch);
  if (lse != nullptr) {
    const int64_t c = batch.sequences(), tq = batch.query_len, h = q.size(1);
    const int64_t kv = pool.size(3), g = h / kv;
    // [C, KV, G Tq, 1] -> [C Tq, H] in the packed row order.
    at::Tensor rows = at::logsumexp(causal.scores.to(at::kFloat), -1, /*keepdim=*/true)
                          .view({c, kv, g, tq})
                          .permute({0, 3, 1, 2})
                          .reshape({c * tq, h});
    *lse = tq == 1 ? rows : rows.index_select(0, batch.unpad_rows);
  }
  return AttendCausalValues(at::softmax(causal.scores, -1, at::kFloat), causal, batch);
}

}  // namespace flexvqa
