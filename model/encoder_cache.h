// The encoder cache: the vision tower + projector rows of images already seen, so that a second
// question about one picture skips the tower (as vLLM's, SGLang's and TensorRT-LLM's encoder
// caches). Keyed by the SHA-256 of the image's encoded bytes plus the pipeline that turns them into
// the tower's input (mode, tower size, zoom, preprocessing); least recently used entries go first
// once the bytes held (device memory, the rows' own storage) pass the bound; a bound of 0 disables
// it. ImageCacheKey and PipelineId are pure and thread-safe (Engine::Prepare calls them on its
// pool); EncoderCache and EncodeThroughCache are not: the worker thread only, like the engine.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/engine.h"
#include "model/image/image_preprocess.h"

namespace flexvqa {

// Everything that changes the pixels the tower sees, or how its output is placed, as one string:
// "mode=flex;tower=336;zoom=3;resize=1008;crop=1008;pad=1;mean=...;std=...".
std::string PipelineId(std::string_view mode, int tower_size, int zoom,
                       const PreprocessOptions& preprocess);

// Lower-case hex SHA-256 of `bytes` (OpenSSL's libcrypto); empty if OpenSSL fails.
std::string Sha256Hex(std::string_view bytes);

// The cache key of an encoded image through `pipeline`: Sha256Hex(bytes) + "|" + pipeline; empty
// (not cacheable) when the digest failed.
std::string ImageCacheKey(std::string_view encoded_bytes, std::string_view pipeline);

// One image's rows as the mode's Encode produced them, detached from its batch.
struct ImageFeatures {
  at::Tensor sequence;  // [image_tokens, D]: the rows that replace the placeholders.
  at::Tensor highres;   // [M, D]: raw HR features beside the sequence, or undefined.
  int64_t bytes() const;
};

class EncoderCache {
 public:
  // max_bytes <= 0: disabled (Find always misses, Insert keeps nothing).
  explicit EncoderCache(int64_t max_bytes) : max_bytes_(max_bytes) {}
  EncoderCache(const EncoderCache&) = delete;
  EncoderCache& operator=(const EncoderCache&) = delete;

  bool enabled() const { return max_bytes_ > 0; }
  int64_t max_bytes() const { return max_bytes_; }
  int64_t bytes() const { return bytes_; }  // Held now: <= max_bytes().
  size_t size() const { return entries_.size(); }

  // The entry under `key`, which becomes the most recently used; nullopt on a miss. The tensors
  // are shared handles: an eviction later does not invalidate them.
  std::optional<ImageFeatures> Find(const std::string& key);
  // Keeps `features` (copied into storage of their own, so that a batch's tensor is not held by one
  // row) as the most recently used entry, replacing one under the same key, then evicts from the
  // least recently used end until bytes() <= max_bytes(). An entry larger than the bound is not
  // kept.
  void Insert(const std::string& key, const ImageFeatures& features);

 private:
  using Lru = std::list<std::pair<std::string, ImageFeatures>>;  // Front: most recently used.
  void Erase(Lru::iterator it);

  const int64_t max_bytes_;
  int64_t bytes_ = 0;
  Lru entries_;
  std::unordered_map<std::string, Lru::iterator> index_;
};

// A prefill batch's images through the cache: images[i] is the i-th image's key (empty: not
// cacheable, encoded every time). `encode(which)` runs the tower once over the images whose
// indices it gets and returns their rows in that order ([K, ...] batches, as Mode::Encode).
struct BatchFeatures {
  std::vector<ImageFeatures> images;  // Per image, in order.
  // Per image: kHit when its rows came from the cache or from an earlier image of this batch with
  // the same key, kMiss when the tower ran for it, kNone when it is not cacheable (or the cache is
  // off).
  std::vector<EncoderCacheUse> use;
};
using BatchEncoder =
    std::function<std::pair<at::Tensor, at::Tensor>(const std::vector<size_t>& which)>;
// Each distinct missing key is encoded once, in one call of `encode` (none when all hit), and
// inserted after the call.
BatchFeatures EncodeThroughCache(EncoderCache& cache, const std::vector<std::string>& keys,
                                 const BatchEncoder& encode);

}  // namespace flexvqa
