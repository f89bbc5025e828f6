// One decoder Forward's batch, described once on the host and once on the device: the packed rows
// of every sequence's chunk, where each row's keys/values go in the KV pool, the positions, the
// per-sequence lengths and the causal key mask, all as device tensors built with ONE host-to-device
// copy. What the decoder, the batched attention (model/nn/batched_attention.h) and the modes'
// LayerHooks read. A decode batch is padded to a bucket (1, 2, 4, ... rows) with rows that write to
// the cache's scratch slot, and its tensors have shapes that depend only on the bucket and the
// cache's max_context, never on the data: the same step dispatches the same ops with the same
// shapes at every context length (the condition for CUDA graph replay). Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "model/nn/kv_cache.h"

namespace flexvqa {

// One sequence's chunk in a packed batch: rows [row_begin, row_begin + length) of the input go to
// positions [start, start + length) of `slot`.
struct ChunkSpan {
  int slot = 0;
  int64_t start = 0;
  int64_t row_begin = 0;
  int64_t length = 0;
};

// Shapes: C = sequences() (the bucket in decode), N = rows, Tq = query_len, Tk = key_len, H query
// heads, KV key/value heads, Dh head width. Every tensor is int64 on the model's device unless
// said otherwise. Rows [real_rows, rows) and sequences [chunks.size(), sequences()) are padding:
// they compute garbage that nobody reads, into the scratch slot.
struct DecoderBatch {
  // Host side.
  std::vector<ChunkSpan> chunks;  // The caller's chunks only (no padding), in row order.
  int64_t real_rows = 0;          // Rows of the caller's chunks.
  int64_t rows = 0;               // N: packed rows, padding included.
  int64_t query_len = 1;          // Tq: the longest chunk (1 in decode).
  // Tk: key positions attention reads per sequence (decode: the cache's max_context, whatever the
  // lengths; prefill: the longest start + length).
  int64_t key_len = 0;
  int64_t sequences() const { return slots.defined() ? slots.size(0) : 0; }

  // Device side.
  at::Tensor ids;          // [N] token ids, clamped into the vocabulary (decode only).
  at::Tensor positions;    // [N] each row's position in its sequence.
  at::Tensor write_rows;   // [N] slot * max_context + position: its flat row in the KV pool.
  at::Tensor slots;        // [C] each sequence's slot.
  at::Tensor seq_lengths;  // [C] keys each sequence holds once this Forward wrote its rows.
  // [C, 1, 1, Tq, Tk] bool, true where a query row may NOT see a key: key j is visible to the
  // row at position p iff j <= p (bottom-right aligned causal, right for chunks that start late).
  at::Tensor key_mask;
  // Prefill with Tq > 1 only (undefined in decode, where rows and sequences coincide):
  at::Tensor pad_rows;    // [C Tq] the packed row each padded query row takes.
  at::Tensor unpad_rows;  // [N] each packed row's index in the padded [C Tq] layout.

  // Set by LlamaDecoder::Forward before the first layer.
  at::Tensor rope;  // [N, 2, Dh] cos and sin rows of the positions (model dtype).
  const KvCache* cache = nullptr;
  int64_t heads = 0;   // H.
  double scale = 1.0;  // 1 / sqrt(Dh).
};

// Decode rounds a batch of B sequences up to the next power of two: a bounded set of shapes.
int64_t DecodeBucket(int64_t sequences);

// A prefill (or any ragged) batch of `chunks`, packed as given, no bucket padding.
DecoderBatch PlanChunks(const std::vector<ChunkSpan>& chunks, const KvCache& cache,
                        at::Device device);

// One decode step: row b appends tokens[b] to slots[b] at position cache.length(slots[b]),
// padded to DecodeBucket(B) rows, through the cache's fixed buffers of that bucket. Ids outside
// [0, vocab) become 0 (the host guard that keeps device asserts away).
DecoderBatch PlanDecode(const std::vector<int32_t>& tokens, const std::vector<int>& slots,
                        int64_t vocab, KvCache& cache);

}  // namespace flexvqa
