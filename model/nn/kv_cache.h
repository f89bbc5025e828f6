// Key/value cache for many sequences of different lengths: a fixed pool of slots, each holding up
// to `max_context` positions of every layer's keys and values, laid out [slot, kv_head, position,
// Dh] per layer so that one sequence's keys are contiguous per head (what attention reads). A
// sequence takes a slot at admission and gives it back at release; its length is tracked per slot
// on the host. Allocated once at load: no allocation per request or per step. Not thread-safe
// (worker thread only).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "model/status.h"

namespace flexvqa {

struct KvCacheShape {
  int num_layers = 0;
  int num_slots = 0;
  int max_context = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

class KvCache {
 public:
  static StatusOr<KvCache> Create(const KvCacheShape& shape, at::ScalarType dtype,
                                  at::Device device);

  const KvCacheShape& shape() const { return shape_; }
  int64_t bytes() const;  // Device memory held by the cache.

  // Slot bookkeeping. Allocate returns -1 when every slot is taken.
  int Allocate();
  void Free(int slot);
  int free_slots() const { return static_cast<int>(free_.size()); }
  int length(int slot) const { return lengths_[slot]; }
  // Sets the valid length of a slot (after a forward pass wrote positions [old, new_length)).
  void set_length(int slot, int new_length) { lengths_[slot] = new_length; }

  // Writes k/v [kv_heads, T, Dh] of one layer at positions [start, start + T) of a slot.
  void Write(int layer, int slot, int64_t start, const at::Tensor& k, const at::Tensor& v);
  // Views of a slot's first `length` positions of one layer: [kv_heads, length, Dh] (no copy).
  at::Tensor Keys(int layer, int slot, int64_t length) const;
  at::Tensor Values(int layer, int slot, int64_t length) const;

 private:
  KvCacheShape shape_;
  std::vector<at::Tensor> keys_;    // Per layer: [slots, kv_heads, max_context, Dh]
  std::vector<at::Tensor> values_;  // Per layer: [slots, kv_heads, max_context, Dh]
  std::vector<int> lengths_;        // Per slot.
  std::vector<int> free_;           // Free slots, used as a stack.
};

}  // namespace flexvqa
