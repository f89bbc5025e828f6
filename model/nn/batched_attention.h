// Causal self-attention of a whole DecoderBatch in one call per layer, reading the layer's KV pool
// (model/nn/kv_cache.h) with one gather for every sequence of the batch, lengths and causality as
// a device mask (model/nn/decoder_batch.h): no host loop over sequences and no shape that follows
// the data in decode. Grouped-query attention natively (query heads grouped under their KV head,
// no repeat). Numbers as HF's eager attention: scores in the model dtype, softmax in fp32, cast
// back; masked keys get exactly zero weight. The math path computes every key position it reads
// (decode: the cache's max_context per row, masked), more than FlopCount reports (the keys each row
// sees, what a varlen kernel reading only seq_lengths computes): on CPU a decode row costs
// max_context / length times its attention FLOPs. On CUDA a flash/varlen kernel with the same
// contract replaces the math (FLEXVQA_CUDA). Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include "model/nn/decoder_batch.h"

namespace flexvqa {

// q [N, H, Dh] (after RoPE; this layer's keys/values of the batch already in the pool) ->
// [N, H, Dh]. lse (optional): receives each row's log-sum-exp of its scaled scores over the keys
// it sees, [N, H] fp32, so that a caller can merge another attention over other keys exactly
// (flex does: MergeAttentionParts in model/modes/attention_merge.h).
at::Tensor CausalAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
                           at::Tensor* lse = nullptr);

// CausalAttention's math path in two halves, for a caller that puts more keys under the same
// softmax (flex's decode rows: model/modes/flex_decode.h). G = H / KV query heads per KV head.
struct CausalScores {
  at::Tensor scores;  // [C, KV, G Tq, Tk] q k * scale in the model dtype, -inf where masked.
  at::Tensor values;  // [C, KV, Tk, Dh] the batch's values, gathered from the pool.
};
CausalScores CausalAttentionScores(int layer, const at::Tensor& q, const DecoderBatch& batch);
// probs [C, KV, G Tq, Tk] over the causal keys (cast to the values' dtype, as HF's eager
// attention) times the values -> [N, H, Dh] in the packed row order.
at::Tensor AttendCausalValues(const at::Tensor& probs, const CausalScores& causal,
                              const DecoderBatch& batch);

}  // namespace flexvqa
