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
  cache.device_ = device;
  try {
    const auto options = at::TensorOptions().dtype(dtype).device(device);
    for (int l = 0; l < shape.num_layers; ++l) {
      // Zeros, not empty: attention reads masked positions too, and 0 * garbage may be NaN.
      cache.pools_.push_back(
          at::zeros({shape.num_slots + 1, shape.max_context, 2, shape.num_kv_heads, shape.head_dim},
                    options));
    }
    cache.key_positions_ =
        at::arange(shape.max_context, at::TensorOptions().dtype(at::kLong).device(device));
  } catch (const std::exception& e) {
    return StatusFromTorchError(e, "allocating the KV cache (" + std::to_string(shape.num_slots) +
                                       " slots x " + std::to_string(shape.max_context) +
                                       " positions)");
  }
  cache.lengths_.assign(shape.num_slots + 1, 0);
  for (int s = shape.num_slots - 1; s >= 0; --s) cache.free_.push_back(s);
  return cache;
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : pools_) total += t.numel() * t.element_size();
  return total;
}

int64_t KvCache::bytes_per_position() const {
  return bytes() / ((static_cast<int64_t>(shape_.num_slots) + 1) * shape_.max_context);
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

void KvCache::Write(int layer, const at::Tensor& rows, const at::Tensor& index) {
  at::Tensor& pool = pools_[layer];
  // [slots + 1, ctx, 2, KV, Dh] -> [(slots + 1) ctx, 2, KV, Dh]: a view, so the copy lands in it.
  pool.view({-1, 2, shape_.num_kv_heads, shape_.head_dim}).index_copy_(0, index, rows);
}

at::Tensor KvCache::Keys(int layer, int slot, int64_t length) const {
  return pools_[layer].select(0, slot).narrow(0, 0, length).select(1, 0).transpose(0, 1);
}

at::Tensor KvCache::Values(int layer, int slot, int64_t length) const {
  return pools_[layer].select(0, slot).narrow(0, 0, length).select(1, 1).transpose(0, 1);
}

std::pair<at::Tensor, at::Tensor> KvCache::StepBuffers(int64_t rows, int64_t bucket) {
  auto it = step_buffers_.find(bucket);
  if (it == step_buffers_.end() || it->second.first.size(0) != rows) {
    const auto host = at::TensorOptions().dtype(at::kLong).pinned_memory(device_.is_cuda());
    at::Tensor h = at::zeros({rows, bucket}, host);
    at::Tensor d = device_.is_cpu() ? at::zeros({rows, bucket}, host) : h.to(device_);
    it = step_buffers_.insert_or_assign(bucket, std::make_pair(h, d)).first;
  }
  return it->second;
}

}  // namespace flexvqa
