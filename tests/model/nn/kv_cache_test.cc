// KV-cache equivalence: decoding token by token (and in ragged batches) gives the logits of one
// full forward pass over the same tokens; slots are reused cleanly.
#include "model/nn/kv_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model/nn/llama.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"
#include "tests/support/tiny_model.h"

namespace flexvqa {
namespace {

class KvCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = LoadLlavaConfig(testing::TinyModelDir());
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    config_ = *config;
    auto weights = WeightLoader::Open(config_);
    ASSERT_TRUE(weights.ok()) << weights.status().ToString();
    auto decoder =
        LlamaDecoder::Load(**weights, config_.text, at::kFloat, at::Device(at::kCPU), 128);
    ASSERT_TRUE(decoder.ok()) << decoder.status().ToString();
    decoder_ = std::move(*decoder);
    KvCacheShape shape{config_.text.num_hidden_layers, 4, 128, config_.text.num_key_value_heads,
                       config_.text.head_dim()};
    auto cache = KvCache::Create(shape, at::kFloat, at::Device(at::kCPU));
    ASSERT_TRUE(cache.ok());
    cache_ = std::make_unique<KvCache>(std::move(*cache));
  }

  DecoderBatch Plan(const std::vector<ChunkSpan>& chunks) {
    return PlanChunks(chunks, *cache_, at::Device(at::kCPU));
  }

  at::Tensor Tokens(int64_t n, int64_t seed) {
    at::manual_seed(seed);
    return at::randint(3, 500, {n}, at::TensorOptions().dtype(at::kLong));
  }

  // Logits of every position from one forward pass over all tokens in a fresh slot.
  at::Tensor FullLogits(const at::Tensor& tokens) {
    const int slot = cache_->Allocate();
    const at::Tensor h =
        decoder_->Forward(decoder_->Embed(tokens), Plan({{slot, 0, 0, tokens.size(0)}}), *cache_);
    cache_->Free(slot);
    return decoder_->Logits(h);
  }

  LlavaConfig config_;
  std::unique_ptr<LlamaDecoder> decoder_;
  std::unique_ptr<KvCache> cache_;
};

TEST_F(KvCacheTest, IncrementalDecodingMatchesFullForward) {
  const at::Tensor tokens = Tokens(20, 1);
  const at::Tensor full = FullLogits(tokens);
  const int slot = cache_->Allocate();
  const int64_t prompt = 7;
  at::Tensor h = decoder_->Forward(decoder_->Embed(tokens.narrow(0, 0, prompt)),
                                   Plan({{slot, 0, 0, prompt}}), *cache_);
  EXPECT_EQ(cache_->length(slot), prompt);
  std::vector<at::Tensor> logits = {decoder_->Logits(h)};
  for (int64_t i = prompt; i < 20; ++i) {
    h = decoder_->Forward(decoder_->Embed(tokens.narrow(0, i, 1)), Plan({{slot, i, 0, 1}}),
                          *cache_);
    logits.push_back(decoder_->Logits(h));
  }
  const at::Tensor incremental = at::cat(logits, 0);
  EXPECT_EQ(cache_->length(slot), 20);
  const double diff = (incremental - full).abs().max().item<double>();
  EXPECT_LT(diff, 1e-4) << "max abs logit difference " << diff;
  // The test is only meaningful if positions differ from each other.
  EXPECT_GT((full[0] - full[19]).abs().max().item<double>(), 1e-2);
}

TEST_F(KvCacheTest, ChunkedPrefillMatchesFullForward) {
  const at::Tensor tokens = Tokens(16, 2);
  const at::Tensor full = FullLogits(tokens);
  const int slot = cache_->Allocate();
  decoder_->Forward(decoder_->Embed(tokens.narrow(0, 0, 9)), Plan({{slot, 0, 0, 9}}), *cache_);
  const at::Tensor h =
      decoder_->Forward(decoder_->Embed(tokens.narrow(0, 9, 7)), Plan({{slot, 9, 0, 7}}), *cache_);
  EXPECT_LT((decoder_->Logits(h) - full.narrow(0, 9, 7)).abs().max().item<double>(), 1e-4);
}

TEST_F(KvCacheTest, RaggedBatchMatchesSequencesAlone) {
  const at::Tensor a = Tokens(11, 3), b = Tokens(5, 4), c = Tokens(8, 5);
  const at::Tensor fa = FullLogits(a), fb = FullLogits(b), fc = FullLogits(c);
  // Prefill the three prompts minus their last token as one packed batch...
  const int sa = cache_->Allocate(), sb = cache_->Allocate(), sc = cache_->Allocate();
  const at::Tensor packed = at::cat({a.narrow(0, 0, 10), b.narrow(0, 0, 4), c.narrow(0, 0, 7)});
  decoder_->Forward(decoder_->Embed(packed), Plan({{sa, 0, 0, 10}, {sb, 0, 10, 4}, {sc, 0, 14, 7}}),
                    *cache_);
  // ...then decode their last tokens together, each at its own position.
  const at::Tensor last = at::stack({a[10], b[4], c[7]});
  const at::Tensor h = decoder_->Forward(
      decoder_->Embed(last), Plan({{sa, 10, 0, 1}, {sb, 4, 1, 1}, {sc, 7, 2, 1}}), *cache_);
  const at::Tensor logits = decoder_->Logits(h);
  EXPECT_LT((logits[0] - fa[10]).abs().max().item<double>(), 1e-4);
  EXPECT_LT((logits[1] - fb[4]).abs().max().item<double>(), 1e-4);
  EXPECT_LT((logits[2] - fc[7]).abs().max().item<double>(), 1e-4);
}

TEST_F(KvCacheTest, FreedSlotIsReusedWithoutStaleKeys) {
  const at::Tensor a = Tokens(12, 6), b = Tokens(6, 7);
  const at::Tensor fb = FullLogits(b);
  const int slot = cache_->Allocate();
  decoder_->Forward(decoder_->Embed(a), Plan({{slot, 0, 0, 12}}), *cache_);
  cache_->Free(slot);
  const int again = cache_->Allocate();
  EXPECT_EQ(cache_->length(again), 0);
  const at::Tensor h = decoder_->Forward(decoder_->Embed(b), Plan({{again, 0, 0, 6}}), *cache_);
  EXPECT_LT((decoder_->Logits(h) - fb).abs().max().item<double>(), 1e-5);
}

TEST(KvCacheSlotsTest, AllocateFreeAndDoubleFree) {
  auto cache = KvCache::Create({1, 2, 4, 1, 2}, at::kFloat, at::Device(at::kCPU));
  ASSERT_TRUE(cache.ok());
  // 2 slots and the scratch one x 4 positions x K and V x 1 head x 2 Dh x 4 bytes.
  EXPECT_EQ(cache->bytes(), 3 * 4 * 2 * 2 * 4);
  EXPECT_EQ(cache->bytes_per_position(), 2 * 2 * 4);
  EXPECT_EQ(cache->scratch_slot(), 2);
  const int a = cache->Allocate(), b = cache->Allocate();
  EXPECT_NE(a, b);
  EXPECT_EQ(cache->Allocate(), -1);
  cache->Free(a);
  cache->Free(a);  // Twice: must not hand the slot out twice.
  EXPECT_EQ(cache->free_slots(), 1);
  EXPECT_EQ(cache->Allocate(), a);
  EXPECT_EQ(cache->Allocate(), -1);
  EXPECT_EQ(KvCache::Create({1, 0, 4, 1, 2}, at::kFloat, at::Device(at::kCPU)).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flexvqa
