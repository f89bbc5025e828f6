// Key/value cache for many sequences of different lengths: a fixed pool of slots, each holding up
// to `max_context` positions of every layer's keys and values, laid out per layer as
// [slot, position, k|v, kv_head, Dh] so that the whole pool is one varlen tensor (a flash/varlen
// kernel reads slot s's keys at rows s * max_context ...) and one indexed copy per layer writes a
// step's keys and values for the whole batch. One slot beyond `num_slots` is scratch: the rows
// that pad a batch to its bucket write there, and it is never handed out. A sequence takes a slot
// at admission and gives it back at release; its length is tracked per slot on the host. The
// pool and the decode step's per-bucket input buffers are allocated once (the buffers at a
// bucket's first use): no allocation per request or per step. Not thread-safe (worker thread).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <vector>

#include "model/status.h"

namespace flexvqa {

struct KvCacheShape {
  int num_layers = 0;
  int num_slots = 0;  // Slots for sequences; the scratch slot comes on top.
  int max_context = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

class KvCache {
 public:
  static StatusOr<KvCache> Create(const KvCacheShape& shape, at::ScalarType dtype,
                                  at::Device device);

  const KvCacheShape& shape() const { return shape_; }
  int64_t bytes() const;  // Device memory held by the pool, the scratch slot included.
  // Bytes one position of one slot holds (every layer's keys and values).
  int64_t bytes_per_position() const;

  // Slot bookkeeping. Allocate returns -1 when every slot is taken.
  int Allocate();
  void Free(int slot);
  int free_slots() const { return static_cast<int>(free_.size()); }
  int length(int slot) const { return lengths_[slot]; }
  // Sets the valid length of a slot (after a forward pass wrote positions [old, new_length)).
  void set_length(int slot, int new_length) { lengths_[slot] = new_length; }
  // The slot padding rows write to (== shape().num_slots).
  int scratch_slot() const { return shape_.num_slots; }
  // [max_context] int64 0, 1, 2, ...: the key positions attention masks against (built once).
  const at::Tensor& key_positions() const { return key_positions_; }

  // Layer `layer`'s pool: [num_slots + 1, max_context, 2, kv_heads, Dh] (index 0 of the third
  // dimension: keys after RoPE; 1: values).
  const at::Tensor& pool(int layer) const { return pools_[layer]; }
  // Writes rows [N, 2, kv_heads, Dh] (keys and values of N positions) of one layer at flat pool
  // rows `index` [N] int64 (slot * max_context + position), in one indexed copy.
  void Write(int layer, const at::Tensor& rows, const at::Tensor& index);
  // Views of a slot's first `length` positions of one layer: [kv_heads, length, Dh] (no copy).
  at::Tensor Keys(int layer, int slot, int64_t length) const;
  at::Tensor Values(int layer, int slot, int64_t length) const;

  // The decode step's fixed input buffers for batch bucket `bucket`: {host, device}, each
  // [rows, bucket] int64 (the host one pinned on CUDA). Allocated at first use and kept, so a
  // bucket's step always reads the same device addresses (what a CUDA graph replays).
  std::pair<at::Tensor, at::Tensor> StepBuffers(int64_t rows, int64_t bucket);

 private:
  KvCacheShape shape_;
  at::Device device_ = at::Device(at::kCPU);
  std::vector<at::Tensor> pools_;  // Per layer, see pool().
  at::Tensor key_positions_;
  std::vector<int> lengths_;  // Per slot.
  std::vector<int> free_;     // Free slots, used as a stack.
  std::map<int64_t, std::pair<at::Tensor, at::Tensor>> step_buffers_;  // By bucket.
};

}  // namespace flexvqa
