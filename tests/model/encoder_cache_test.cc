// The encoder cache on its own (model/encoder_cache.h): SHA-256 against FIPS 180-2's vectors, keys
// that differ whenever the bytes or anything of the pipeline differ, LRU eviction by bytes, a bound
// of 0 and entries over the bound, and a batch's images through the cache (each distinct miss
// encoded once, in one call; hits never reach the encoder).
#include "model/encoder_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

namespace flexvqa {
namespace {

constexpr int64_t kRowBytes = 4 * 8 * sizeof(float);  // One [4, 8] fp32 entry.

ImageFeatures Filled(float value) { return {at::full({4, 8}, value), at::Tensor()}; }

TEST(EncoderCacheTest, Sha256MatchesTheStandardVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(EncoderCacheTest, KeysDifferWhenTheBytesOrThePipelineDiffer) {
  const PreprocessOptions base;
  std::vector<std::string> pipelines = {
      PipelineId("full", 336, 0, base), PipelineId("pooled", 336, 0, base),
      PipelineId("flex", 336, 0, base), PipelineId("full", 224, 0, base),
      PipelineId("full", 336, 2, base)};
  PreprocessOptions other = base;
  other.crop_size = 224;
  pipelines.push_back(PipelineId("full", 336, 0, other));
  other = base;
  other.resize_shortest_edge = 448;
  pipelines.push_back(PipelineId("full", 336, 0, other));
  other = base;
  other.pad_to_square = false;
  pipelines.push_back(PipelineId("full", 336, 0, other));
  other = base;
  other.mean[2] = 0.5f;
  pipelines.push_back(PipelineId("full", 336, 0, other));
  other = base;
  other.std[0] = std::nextafter(other.std[0], 1.0f);  // One ulp apart is another pipeline.
  pipelines.push_back(PipelineId("full", 336, 0, other));
  EXPECT_EQ(pipelines[0], PipelineId("full", 336, 0, PreprocessOptions()));

  std::set<std::string> keys;
  for (const std::string& pipeline : pipelines) {
    keys.insert(ImageCacheKey("image bytes", pipeline));
    keys.insert(ImageCacheKey("image bytez", pipeline));
  }
  EXPECT_EQ(keys.size(), 2 * pipelines.size());
  EXPECT_EQ(ImageCacheKey("image bytes", pipelines[0]),
            ImageCacheKey(std::string("image bytes"), pipelines[0]));
}

TEST(EncoderCacheTest, EvictsTheLeastRecentlyUsedOnceOverTheBound) {
  EncoderCache cache(3 * kRowBytes);
  cache.Insert("a", Filled(1));
  cache.Insert("b", Filled(2));
  cache.Insert("c", Filled(3));
  EXPECT_EQ(cache.bytes(), 3 * kRowBytes);
  ASSERT_TRUE(cache.Find("a").has_value());  // a is now the most recently used; b the least.
  cache.Insert("d", Filled(4));
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.bytes(), 3 * kRowBytes);
  EXPECT_FALSE(cache.Find("b").has_value());
  for (const char* key : {"a", "c", "d", "a"}) EXPECT_TRUE(cache.Find(key).has_value()) << key;
  // Least recently used first: c, d, a (insertion order would be a, c, d).
  cache.Insert("e", {at::zeros({8, 8}), at::Tensor()});  // Two rows' worth: c and d go.
  EXPECT_FALSE(cache.Find("c").has_value());
  EXPECT_FALSE(cache.Find("d").has_value());
  EXPECT_TRUE(cache.Find("a").has_value());
  EXPECT_TRUE(cache.Find("e").has_value());
  EXPECT_EQ(cache.bytes(), 3 * kRowBytes);
}

TEST(EncoderCacheTest, ReplacingAKeyCountsItsBytesOnce) {
  EncoderCache cache(10 * kRowBytes);
  cache.Insert("a", Filled(1));
  cache.Insert("a", {at::full({4, 8}, 2.0f), at::zeros({4, 8})});
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.bytes(), 2 * kRowBytes);
  EXPECT_EQ(cache.Find("a")->sequence[0][0].item<float>(), 2.0f);
}

TEST(EncoderCacheTest, ABoundOfZeroKeepsNothing) {
  EncoderCache cache(0);
  EXPECT_FALSE(cache.enabled());
  cache.Insert("a", Filled(1));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.bytes(), 0);
  EXPECT_FALSE(cache.Find("a").has_value());
  int calls = 0;
  const BatchFeatures out =
      EncodeThroughCache(cache, {"a", "a"}, [&calls](const std::vector<size_t>& which) {
        ++calls;
        EXPECT_EQ(which, (std::vector<size_t>{0, 1}));  // Off: identical images encode apart.
        return std::make_pair(at::zeros({2, 4, 8}), at::Tensor());
      });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(out.use,
            (std::vector<EncoderCacheUse>{EncoderCacheUse::kNone, EncoderCacheUse::kNone}));
}

TEST(EncoderCacheTest, AnEntryOverTheBoundIsNotKeptAndEvictsNothing) {
  EncoderCache cache(2 * kRowBytes);
  cache.Insert("small", Filled(1));
  cache.Insert("large", {at::zeros({4, 24}), at::Tensor()});  // Three rows' worth.
  EXPECT_FALSE(cache.Find("large").has_value());
  EXPECT_TRUE(cache.Find("small").has_value());
  EXPECT_EQ(cache.bytes(), kRowBytes);
}

TEST(EncoderCacheTest, EntriesOwnTheirStorage) {
  EncoderCache cache(10 * kRowBytes);
  at::Tensor batch = at::zeros({5, 4, 8});
  cache.Insert("row", {batch[1], at::Tensor()});
  EXPECT_EQ(cache.bytes(), kRowBytes);  // Not the batch's five rows.
  batch.fill_(7.0f);
  EXPECT_EQ(cache.Find("row")->sequence.sum().item<float>(), 0.0f);
}

// Encodes image i of the batch as rows filled with 10 * i + 1 (sequence) and -(10 * i + 1)
// (highres).
std::pair<at::Tensor, at::Tensor> Encode(const std::vector<size_t>& which) {
  std::vector<at::Tensor> rows, highres;
  for (size_t i : which) {
    rows.push_back(at::full({4, 8}, 10.0f * i + 1));
    highres.push_back(at::full({2, 8}, -10.0f * i - 1));
  }
  return {at::stack(rows), at::stack(highres)};
}

TEST(EncoderCacheTest, ABatchEncodesEachDistinctMissOnceAndHitsSkipTheEncoder) {
  EncoderCache cache(100 * kRowBytes);
  std::vector<std::vector<size_t>> calls;
  auto encoder = [&calls](const std::vector<size_t>& which) {
    calls.push_back(which);
    return Encode(which);
  };
  using Use = EncoderCacheUse;
  // Images 0 and 2 are one picture; image 3 is not cacheable (no bytes to hash).
  const BatchFeatures first = EncodeThroughCache(cache, {"x", "y", "x", ""}, encoder);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (std::vector<size_t>{0, 1, 3}));
  EXPECT_EQ(first.use, (std::vector<Use>{Use::kMiss, Use::kMiss, Use::kHit, Use::kNone}));
  EXPECT_EQ(first.images[0].sequence[0][0].item<float>(), 1.0f);
  EXPECT_EQ(first.images[1].sequence[0][0].item<float>(), 11.0f);
  EXPECT_TRUE(at::equal(first.images[2].sequence, first.images[0].sequence));
  EXPECT_TRUE(at::equal(first.images[2].highres, first.images[0].highres));
  EXPECT_EQ(first.images[3].sequence[0][0].item<float>(), 31.0f);
  EXPECT_EQ(cache.size(), 2u);  // x and y; the uncacheable image is not kept.

  const BatchFeatures second = EncodeThroughCache(cache, {"y", "x"}, encoder);
  EXPECT_EQ(calls.size(), 1u) << "every image hit: the encoder must not run";
  EXPECT_EQ(second.use, (std::vector<Use>{Use::kHit, Use::kHit}));
  EXPECT_TRUE(at::equal(second.images[0].sequence, first.images[1].sequence));
  EXPECT_TRUE(at::equal(second.images[1].highres, first.images[0].highres));

  const BatchFeatures third = EncodeThroughCache(cache, {"x", "z"}, encoder);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1], (std::vector<size_t>{1}));  // Only the miss.
  EXPECT_EQ(third.use, (std::vector<Use>{Use::kHit, Use::kMiss}));
  EXPECT_EQ(third.images[1].sequence[0][0].item<float>(), 11.0f);  // Image 1 of this batch.
}

}  // namespace
}  // namespace flexvqa
