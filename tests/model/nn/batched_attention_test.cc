// The batched attention (model/nn/batched_attention.h) against per-sequence attention written out
// from its definition: ragged chunks, chunks that start after cached keys, grouped-query heads,
// padded decode buckets; its log-sum-exp and the exact merge of two disjoint key sets.
#include "model/nn/batched_attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "model/nn/decoder_batch.h"
#include "model/nn/kv_cache.h"

namespace flexvqa {
namespace {

constexpr int64_t kHeads = 4, kKvHeads = 2, kDh = 8, kContext = 32;

class BatchedAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cache = KvCache::Create({1, 4, kContext, kKvHeads, kDh}, at::kFloat, at::kCPU);
    ASSERT_TRUE(cache.ok());
    cache_ = std::make_unique<KvCache>(std::move(*cache));
    at::manual_seed(7);
    // Random keys/values in every position of every slot (the scratch one too): masked positions
    // must not leak into the result.
    const at::Tensor& pool = cache_->pool(0);
    const int64_t rows = pool.size(1) * pool.size(2);
    cache_->Write(0, at::randn({rows, 2, kKvHeads, kDh}), at::arange(rows, at::kLong));
  }

  void Prepare(DecoderBatch* batch) {
    batch->cache = cache_.get();
    batch->heads = kHeads;
    batch->scale = 1.0 / std::sqrt(static_cast<double>(kDh));
  }

  // softmax(q K^T * scale) V of one row at `position` of `slot` over keys 0..position, each query
  // head reading KV head h / (H / KV). Also returns the log-sum-exp per head.
  std::pair<at::Tensor, at::Tensor> Reference(const at::Tensor& q, int slot, int64_t position) {
    const at::Tensor keys =
        cache_->Keys(0, slot, position + 1).repeat_interleave(kHeads / kKvHeads, 0);  // [H, T, Dh]
    const at::Tensor values =
        cache_->Values(0, slot, position + 1).repeat_interleave(kHeads / kKvHeads, 0);
    const at::Tensor scores =
        at::matmul(q.unsqueeze(1), keys.transpose(1, 2)).squeeze(1) / std::sqrt(kDh);  // [H, T]
    return {at::matmul(at::softmax(scores, -1).unsqueeze(1), values).squeeze(1),
            at::logsumexp(scores, -1)};
  }

  std::unique_ptr<KvCache> cache_;
};

TEST_F(BatchedAttentionTest, RaggedChunksStartingAnywhereMatchPerRowAttention) {
  // Three chunks: 5 rows from 0, 3 rows after 7 cached keys, 1 row after 12.
  const std::vector<ChunkSpan> chunks = {{0, 0, 0, 5}, {2, 7, 5, 3}, {1, 12, 8, 1}};
  DecoderBatch batch = PlanChunks(chunks, *cache_, at::kCPU);
  Prepare(&batch);
  EXPECT_EQ(batch.query_len, 5);
  EXPECT_EQ(batch.key_len, 13);
  const at::Tensor q = at::randn({9, kHeads, kDh});
  at::Tensor lse;
  const at::Tensor out = CausalAttention(0, q, batch, &lse);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{9, kHeads, kDh}));
  ASSERT_EQ(lse.sizes(), (std::vector<int64_t>{9, kHeads}));
  for (const ChunkSpan& c : chunks) {
    for (int64_t i = 0; i < c.length; ++i) {
      const int64_t row = c.row_begin + i;
      const auto [expected, expected_lse] = Reference(q[row], c.slot, c.start + i);
      EXPECT_TRUE(at::allclose(out[row], expected, 1e-5, 1e-6)) << "row " << row;
      EXPECT_TRUE(at::allclose(lse[row], expected_lse, 1e-5, 1e-6)) << "row " << row;
    }
  }
}

TEST_F(BatchedAttentionTest, DecodeBucketPadsWithScratchRowsAndReadsEveryPositionMasked) {
  cache_->set_length(0, 9);
  cache_->set_length(3, 20);
  cache_->set_length(1, 0);
  DecoderBatch batch = PlanDecode({5, 6, -3}, {0, 3, 1}, /*vocab=*/100, *cache_);
  Prepare(&batch);
  EXPECT_EQ(batch.rows, 4);  // 3 sequences -> the bucket of 4.
  EXPECT_EQ(batch.real_rows, 3);
  EXPECT_EQ(batch.key_len, kContext);  // Whatever the lengths: a shape that never follows them.
  EXPECT_EQ(batch.ids[2].item<int64_t>(), 0);  // Out of the vocabulary: clamped on the host.
  EXPECT_EQ(batch.slots[3].item<int64_t>(), cache_->scratch_slot());
  EXPECT_EQ(batch.write_rows[1].item<int64_t>(), 3 * kContext + 20);
  const at::Tensor q = at::randn({4, kHeads, kDh});
  const at::Tensor out = CausalAttention(0, q, batch);
  const int slots[] = {0, 3, 1};
  const int64_t positions[] = {9, 20, 0};
  for (int b = 0; b < 3; ++b) {
    const at::Tensor expected = Reference(q[b], slots[b], positions[b]).first;
    EXPECT_TRUE(at::allclose(out[b], expected, 1e-5, 1e-6)) << "row " << b;
  }
  // The bucket's buffers are the same memory at every step (what a CUDA graph replays).
  const void* ids = batch.ids.data_ptr();
  const DecoderBatch again = PlanDecode({1, 2, 3, 4}, {0, 3, 1, 2}, 100, *cache_);
  EXPECT_EQ(again.ids.data_ptr(), ids);
}

}  // namespace
}  // namespace flexvqa
