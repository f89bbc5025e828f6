// flex's decode-row attention (model/modes/flex_decode.h) against the reference's arithmetic
// written out per row (modeling_llama.py:444-572): one fp32 softmax over the row's causal keys and
// its selected HR keys, values through v_proj_hd per head of the raw features, and the next
// layer's selection from the causal-only probabilities of the LR image columns with the padding
// bands zeroed. Ragged lengths, grouped-query heads, a padded bucket, a row with nothing selected
// and a row that selects nothing.
#include "model/modes/flex_decode.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "model/modes/block_selection.h"
#include "model/modes/highres_attention.h"
#include "model/nn/batched_attention.h"
#include "model/nn/kv_cache.h"

namespace flexvqa {
namespace {

constexpr int64_t kHeads = 4, kKvHeads = 2, kDh = 8, kD = 16, kContext = 192;
constexpr int kLrSide = 12, kHrSide = 18;  // n = 144 image cells, T = 324 HR tokens (2x2 blocks).
constexpr int64_t kN = kLrSide * kLrSide, kT = kHrSide * kHrSide;

TEST(FlexDecodeTest, OneSoftmaxOverCausalAndSelectedHighResKeysAndTheNextSelection) {
  auto created = KvCache::Create({1, 4, kContext, kKvHeads, kDh}, at::kFloat, at::kCPU);
  ASSERT_TRUE(created.ok());
  KvCache cache = std::move(*created);
  at::manual_seed(11);
  const at::Tensor& pool = cache.pool(0);
  const int64_t pool_rows = pool.size(1) * pool.size(2);
  cache.Write(0, at::randn({pool_rows, 2, kKvHeads, kDh}), at::arange(pool_rows, at::kLong));
  const std::vector<int> slots = {2, 0, 3};
  const std::vector<int64_t> lengths = {150, 170, 160};  // Keys before this step's row.
  const std::vector<int64_t> begins = {3, 20, 9};        // First LR image key.
  for (size_t i = 0; i < slots.size(); ++i) cache.set_length(slots[i], lengths[i]);
  DecoderBatch batch = PlanDecode({1, 2, 3}, slots, /*vocab=*/100, cache);  // Bucket of 4.
  batch.cache = &cache;
  batch.heads = kHeads;
  batch.scale = 1.0 / std::sqrt(static_cast<double>(kDh));
  const int64_t c = batch.sequences();
  ASSERT_EQ(c, 4);

  const at::Tensor q = at::randn({c, kHeads, kDh});
  const at::Tensor hr_keys = at::randn({c, kKvHeads, kT, kDh});
  const at::Tensor features = at::randn({c, kT, kD});
  const at::Tensor v_weights = at::randn({kHeads, kDh, kD}) * 0.3;
  at::Tensor active = at::rand({c, 81}) < 0.3;
  active[1].fill_(false);  // Row 1 attends to no HR key: its causal attention alone.
  at::Tensor band = at::zeros({c, kN}, at::kBool);
  band[0].narrow(0, 0, 2 * kLrSide).fill_(true);  // Two padding rows at the top of image 0.
  const std::vector<float> thresholds = {48, 64, 255, 48};  // Row 2 selects nothing.

  FlexDecodeInputs inputs;
  std::vector<int64_t> all_begins = begins;
  all_begins.push_back(0);  // The padding row.
  const at::Tensor columns =
      at::tensor(all_begins, at::kLong).view({c, 1}) + at::arange(kN, at::kLong);
  inputs.image_columns = at::where(band, at::full({1}, kContext, at::kLong), columns)
                             .view({c, 1, 1, kN})
                             .expand({c, kKvHeads, kHeads / kKvHeads, kN});
  inputs.threshold = at::tensor(thresholds);
  inputs.neg_inf = at::full({1, 1, 1, 1}, -std::numeric_limits<float>::infinity());
  inputs.token_blocks = TokenBlocks(kHrSide, at::kCPU);
  inputs.lr_side = kLrSide;
  FlexDecodeLayer hr{hr_keys, features, v_weights, active};
  const FlexDecodeRows rows = FlexDecodeAttention(0, q, batch, inputs, hr, /*selects=*/true);
  ASSERT_EQ(rows.out.sizes(), (std::vector<int64_t>{c, kHeads, kDh}));
  ASSERT_EQ(rows.next.sizes(), (std::vector<int64_t>{c, 81}));

  const at::Tensor valid = active.index_select(1, inputs.token_blocks);  // [C, T]
  std::vector<at::Tensor> image_attention;
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t keys = lengths[b] + 1;  // This step's row wrote its key at position lengths[b].
    const at::Tensor k =
        cache.Keys(0, slots[b], keys).repeat_interleave(kHeads / kKvHeads, 0);  // [H, keys, Dh]
    const at::Tensor v = cache.Values(0, slots[b], keys).repeat_interleave(kHeads / kKvHeads, 0);
    const at::Tensor hk = hr_keys[b].repeat_interleave(kHeads / kKvHeads, 0);  // [H, T, Dh]
    const at::Tensor causal = at::matmul(k, q[b].unsqueeze(-1)).squeeze(-1) * batch.scale;
    const at::Tensor high = (at::matmul(hk, q[b].unsqueeze(-1)).squeeze(-1) * batch.scale)
                                .masked_fill(valid[b].logical_not(), -INFINITY);  // [H, T]
    const at::Tensor p = at::softmax(at::cat({causal, high}, -1), -1);
    const at::Tensor mixed = at::matmul(p.narrow(1, keys, kT), features[b]);  // [H, D]
    const at::Tensor expected = at::matmul(p.narrow(1, 0, keys).unsqueeze(1), v).squeeze(1) +
                                at::matmul(v_weights, mixed.unsqueeze(-1)).squeeze(-1);  // [H, Dh]
    EXPECT_TRUE(at::allclose(rows.out[b], expected, 1e-4, 1e-5)) << "row " << b;
    // The selection's softmax leaves the HR keys out (modeling_llama.py:455-470).
    image_attention.push_back(at::softmax(causal, -1).narrow(1, begins[b], kN).sum(0));  // [n]
  }
  // Row 1 selected nothing: exactly its causal attention.
  EXPECT_TRUE(at::allclose(rows.out[1], CausalAttention(0, q, batch)[1], 1e-5, 1e-6));
  const at::Tensor expected_next = SelectBlocksBatched(
      at::stack(image_attention), band.narrow(0, 0, 3), inputs.threshold.narrow(0, 0, 3), kLrSide);
  EXPECT_TRUE(at::equal(rows.next.narrow(0, 0, 3), expected_next));
  EXPECT_GT(expected_next[0].sum().item<int64_t>(), 0);
  EXPECT_GT(expected_next[1].sum().item<int64_t>(), 0);
  EXPECT_EQ(rows.next[2].sum().item<int64_t>(), 0);  // Threshold 255.
  // The bands matter for image 0 here (min-max over the other cells differs), so the equality
  // above checks that the gather reads them as zeros.
  const at::Tensor unbanded =
      SelectBlocksBatched(at::stack(image_attention), at::zeros({3, kN}, at::kBool),
                          inputs.threshold.narrow(0, 0, 3), kLrSide);
  EXPECT_FALSE(at::equal(unbanded[0], expected_next[0]));
}

}  // namespace
}  // namespace flexvqa
