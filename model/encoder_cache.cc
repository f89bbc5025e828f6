#include "model/encoder_cache.h"

#include <ATen/ATen.h>
#include <openssl/evp.h>

#include <cstdio>

namespace flexvqa {

std::string PipelineId(std::string_view mode, int tower_size, int zoom,
                       const PreprocessOptions& preprocess) {
  std::string id = "mode=" + std::string(mode) + ";tower=" + std::to_string(tower_size) +
                   ";zoom=" + std::to_string(zoom) +
                   ";resize=" + std::to_string(preprocess.resize_shortest_edge) +
                   ";crop=" + std::to_string(preprocess.crop_size) +
                   ";pad=" + (preprocess.pad_to_square ? "1" : "0");
  char value[32];
  // %.9g round-trips a float: two pipelines share an id only when their constants are equal.
  for (const auto* stats : {&preprocess.mean, &preprocess.std}) {
    id += stats == &preprocess.mean ? ";mean=" : ";std=";
    for (float v : *stats) {
      std::snprintf(value, sizeof(value), "%.9g,", v);
      id += value;
    }
  }
  return id;
}

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  // EVP_Digest fails only when OpenSSL cannot allocate: the image then goes uncached.
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    return {};
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

std::string ImageCacheKey(std::string_view encoded_bytes, std::string_view pipeline) {
  const std::string digest = Sha256Hex(encoded_bytes);
  return digest.empty() ? std::string() : digest + "|" + std::string(pipeline);
}

int64_t ImageFeatures::bytes() const {
  return (sequence.defined() ? static_cast<int64_t>(sequence.nbytes()) : 0) +
         (highres.defined() ? static_cast<int64_t>(highres.nbytes()) : 0);
}

std::optional<ImageFeatures> EncoderCache::Find(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  entries_.splice(entries_.begin(), entries_, it->second);
  return it->second->second;
}

void EncoderCache::Insert(const std::string& key, const ImageFeatures& features) {
  if (!enabled()) return;
  auto old = index_.find(key);
  if (old != index_.end()) Erase(old->second);
  ImageFeatures own;
  own.sequence = features.sequence.clone();
  if (features.highres.defined()) own.highres = features.highres.clone();
  const int64_t size = own.bytes();
  if (size > max_bytes_) return;
  entries_.emplace_front(key, std::move(own));
  index_[key] = entries_.begin();
  bytes_ += size;
  while (bytes_ > max_bytes_) Erase(std::prev(entries_.end()));
}

void EncoderCache::Erase(Lru::iterator it) {
  bytes_ -= it->second.bytes();
  index_.erase(it->first);
  entries_.erase(it);
}

BatchFeatures EncodeThroughCache(EncoderCache& cache, const std::vector<std::string>& keys,
                                 const BatchEncoder& encode) {
  BatchFeatures out;
  out.images.resize(keys.size());
  out.use.assign(keys.size(), EncoderCacheUse::kNone);
  std::vector<size_t> run;                               // Images the tower encodes, in order.
  std::unordered_map<std::string, size_t> first_of_key;  // Key -> the image that encodes it.
  std::vector<std::pair<size_t, size_t>> copies;         // (image, the image it shares rows with)
  for (size_t i = 0; i < keys.size(); ++i) {
    const bool cacheable = cache.enabled() && !keys[i].empty();
    if (!cacheable) {
      run.push_back(i);
      continue;
    }
    if (auto found = cache.Find(keys[i])) {
      out.images[i] = std::move(*found);
      out.use[i] = EncoderCacheUse::kHit;
    } else if (auto first = first_of_key.find(keys[i]); first != first_of_key.end()) {
      copies.emplace_back(i, first->second);
      out.use[i] = EncoderCacheUse::kHit;
    } else {
      first_of_key.emplace(keys[i], i);
      run.push_back(i);
      out.use[i] = EncoderCacheUse::kMiss;
    }
  }
  if (run.empty()) return out;
  const auto [sequence, highres] = encode(run);  // [K, T, D], [K, M, D] or undefined
  for (size_t k = 0; k < run.size(); ++k) {
    ImageFeatures& features = out.images[run[k]];
    features.sequence = sequence[static_cast<int64_t>(k)];
    if (highres.defined()) features.highres = highres[static_cast<int64_t>(k)];
    if (out.use[run[k]] == EncoderCacheUse::kMiss) cache.Insert(keys[run[k]], features);
  }
  for (const auto& [image, source] : copies) out.images[image] = out.images[source];
  return out;
}

}  // namespace flexvqa
