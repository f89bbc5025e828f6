#include "model/nn/kv_cache.h"

#include <ATen/ATen.h>

#include "model/nn/torch_compat.h"

namespace flexvqa {

StatusOr<KvCache> KvCache::Create(const KvCacheShape& shape, at::ScalarType dtype,
                                  at::Device device) {
  if (shape.num_layers <= 0 || shape.num_slots <= 0 || shape.max_context <= 0 ||
      shape.num_kv_heads <= 0 || shape.head_dim <= 0) {
    return InvalidArgumentError(
        "KV cache needs positive layers, slots, context, heads and head width");
  }
  KvCache cache;
  cache.shape_ = shape;
  try {
    const auto options = at::TensorOptions().dtype(dtype).device(device);
    for (int l = 0; l < shape.num_layers; ++l) {
      cache.keys_.push_back(at::zeros(
          {shape.num_slots, shape.num_kv_heads, shape.max_context, shape.head_dim}, options));
      cache.values_.push_back(at::zeros_like(cache.keys_.back()));
    }
  } catch (const std::exception& e) {
    return StatusFromTorchError(e, "allocating the KV cache (" + std::to_string(shape.num_slots) +
                                       " slots x " + std::to_string(shape.max_context) +
                                       " positions)");
  }
  cache.lengths_.assign(shape.num_slots, 0);
  for (int s = shape.num_slots - 1; s >= 0; --s) cache.free_.push_back(s);
  return cache;
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : keys_) total += t.numel() * t.element_size();
  return 2 * total;
}

int KvCache::Allocate() {
  if (free_.empty()) return -1;
  const int slot = free_.back();
  free_.pop_back();
  lengths_[slot] = 0;
  return slot;
}

void KvCache::Free(int slot) {
  if (slot < 0 || slot >= shape_.num_slots) return;
  for (int s : free_) {
    if (s == slot) return;  // Already free: releasing twice must not hand the slot out twice.
  }
  lengths_[slot] = 0;
  free_.push_back(slot);
}

void KvCache::Write(int layer, int slot, int64_t start, const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = k.size(1);
  keys_[layer].select(0, slot).narrow(1, start, t).copy_(k);
  values_[layer].select(0, slot).narrow(1, start, t).copy_(v);
}

at::Tensor KvCache::Keys(int layer, int slot, int64_t length) const {
  return keys_[layer].select(0, slot).narrow(1, 0, length);
}

at::Tensor KvCache::Values(int layer, int slot, int64_t length) const {
  return values_[layer].select(0, slot).narrow(1, 0, length);
}

}  // namespace flexvqa
