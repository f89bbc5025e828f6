#include "model/nn/decoder_batch.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace flexvqa {
namespace {

// [C] positions (decode) or [C, Tq] (prefill) -> the [C, 1, 1, Tq, Tk] "may not see" mask.
at::Tensor KeyMask(const KvCache& cache, const at::Tensor& query_positions, int64_t c, int64_t tq,
                   int64_t tk) {
  const at::Tensor keys = cache.key_positions().narrow(0, 0, tk).view({1, 1, tk});
  return at::gt(keys, query_positions.view({c, tq, 1})).view({c, 1, 1, tq, tk});
}

}  // namespace

int64_t DecodeBucket(int64_t sequences) {
  int64_t bucket = 1;
  while (bucket < sequences) bucket *= 2;
  return bucket;
}

DecoderBatch PlanChunks(const std::vector<ChunkSpan>& chunks, const KvCache& cache,
                        at::Device device) {
  DecoderBatch batch;
  batch.chunks = chunks;
  const int64_t ctx = cache.shape().max_context;
  const int64_t c = static_cast<int64_t>(chunks.size());
  int64_t n = 0;
  for (const ChunkSpan& s : chunks) {
    n += s.length;
    batch.query_len = std::max(batch.query_len, s.length);
    batch.key_len = std::max(batch.key_len, s.start + s.length);
  }
  batch.real_rows = batch.rows = n;
  const int64_t tq = batch.query_len;
  const bool padded = tq > 1;
  // One host buffer, one upload: positions, write_rows [N]; slots, seq_lengths [C]; and for
  // Tq > 1 the padded layout's positions and rows [C Tq] and the way back [N].
  std::vector<int64_t> host(2 * n + 2 * c + (padded ? 2 * c * tq + n : 0), 0);
  int64_t* positions = host.data();
  int64_t* write_rows = positions + n;
  int64_t* slots = write_rows + n;
  int64_t* seq_lengths = slots + c;
  int64_t* pad_positions = seq_lengths + c;
  int64_t* pad_rows = pad_positions + c * tq;
  int64_t* unpad_rows = pad_rows + c * tq;
  for (int64_t i = 0; i < c; ++i) {
    const ChunkSpan& s = chunks[i];
    slots[i] = s.slot;
    seq_lengths[i] = s.start + s.length;
    for (int64_t j = 0; j < s.length; ++j) {
      const int64_t row = s.row_begin + j;
      positions[row] = s.start + j;
      write_rows[row] = s.slot * ctx + s.start + j;
    }
    if (!padded) continue;
    for (int64_t j = 0; j < tq; ++j) {
      // Rows past the chunk's end repeat its first row: finite numbers, discarded.
      const bool real = j < s.length;
      pad_positions[i * tq + j] = real ? s.start + j : s.start;
      pad_rows[i * tq + j] = real ? s.row_begin + j : s.row_begin;
      if (real) unpad_rows[s.row_begin + j] = i * tq + j;
    }
  }
  const at::Tensor all =
      at::tensor(host, at::TensorOptions().dtype(at::kLong)).to(device);  // The one upload.
  batch.positions = all.narrow(0, 0, n);
  batch.write_rows = all.narrow(0, n, n);
  batch.slots = all.narrow(0, 2 * n, c);
  batch.seq_lengths = all.narrow(0, 2 * n + c, c);
  if (padded) {
    const int64_t at = 2 * n + 2 * c;
    batch.pad_rows = all.narrow(0, at + c * tq, c * tq);
    batch.unpad_rows = all.narrow(0, at + 2 * c * tq, n);
    batch.key_mask = KeyMask(cache, all.narrow(0, at, c * tq), c, tq, batch.key_len);
  } else {
    batch.key_mask = KeyMask(cache, batch.positions, c, 1, batch.key_len);
  }
  return batch;
}

DecoderBatch PlanDecode(const std::vector<int32_t>& tokens, const std::vector<int>& slots,
                        int64_t vocab, KvCache& cache) {
  const int64_t b = static_cast<int64_t>(tokens.size());
  const int64_t bucket = DecodeBucket(b);
  const int64_t ctx = cache.shape().max_context;
  DecoderBatch batch;
  batch.real_rows = b;
  batch.rows = bucket;
  batch.query_len = 1;
  batch.key_len = ctx;  // Every position, masked by length: no shape follows the data.
  // Rows of the bucket's buffers: ids, positions, write_rows, slots, seq_lengths.
  constexpr int64_t kRows = 5;
  auto [host, device] = cache.StepBuffers(kRows, bucket);
  int64_t* h = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < bucket; ++i) {
    const bool real = i < b;
    // Padding rows: distinct positions of the scratch slot, so that no two rows write one place.
    const int64_t slot = real ? slots[i] : cache.scratch_slot();
    const int64_t position = real ? cache.length(slots[i]) : (i - b) % ctx;
    const int64_t id = real ? tokens[i] : 0;
    h[i] = id >= 0 && id < vocab ? id : 0;
    h[bucket + i] = position;
    h[2 * bucket + i] = slot * ctx + position;
    h[3 * bucket + i] = slot;
    h[4 * bucket + i] = position + 1;
    if (real) batch.chunks.push_back({slots[i], position, i, 1});
  }
  // Non-blocking from pinned memory on CUDA: the host buffer is rewritten only at the next step,
  // after this step's token ids were read back (which waits for this copy).
  device.copy_(host, /*non_blocking=*/true);
  batch.ids = device[0];
  batch.positions = device[1];
  batch.write_rows = device[2];
  batch.slots = device[3];
  batch.seq_lengths = device[4];
  batch.key_mask = KeyMask(cache, batch.positions, bucket, 1, ctx);
  return batch;
}

}  // namespace flexvqa
