// The log-sum-exp merge of two attention parts (attention_merge.h) against what the reference
// computes (modeling_llama.py:444-499, tests/parity/flex_reference.py): one fp32 softmax over the
// concatenated scores of both key sets times the concatenated values. Grouped-query heads, masked
// keys, an empty high-resolution part (bit-exact: the causal output unchanged) and large scores.
#include "model/modes/attention_merge.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace flexvqa {
namespace {

constexpr int64_t kB = 5, kH = 4, kKv = 2, kDh = 16;

// Keys/values [B, KV, M, Dh] -> [B, H, M, Dh], as the reference's repeat_interleave.
at::Tensor PerQueryHead(const at::Tensor& t) { return t.repeat_interleave(kH / kKv, 1); }

// The reference: for each row, softmax over the valid keys of both parts together.
at::Tensor Concatenated(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& v1,
                        const at::Tensor& valid1, const at::Tensor& k2, const at::Tensor& v2,
                        const at::Tensor& valid2, double scale) {
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < q.size(0); ++b) {
    const at::Tensor i1 = valid1[b].nonzero().view({-1}), i2 = valid2[b].nonzero().view({-1});
    const at::Tensor keys =
        at::cat({PerQueryHead(k1)[b].index_select(1, i1), PerQueryHead(k2)[b].index_select(1, i2)},
                1);  // [H, M', Dh]
    const at::Tensor values = at::cat(
        {PerQueryHead(v1)[b].index_select(1, i1), PerQueryHead(v2)[b].index_select(1, i2)}, 1);
    const at::Tensor s = at::matmul(q[b].unsqueeze(1), keys.transpose(1, 2)) * scale;  // [H, 1, M']
    rows.push_back(at::matmul(at::softmax(s, -1, at::kFloat), values).squeeze(1));
  }
  return at::stack(rows);  // [B, H, Dh]
}

struct Parts {
  at::Tensor q, k1, v1, valid1, k2, v2, valid2;
};

Parts RandomParts(int64_t m1, int64_t m2, double magnitude) {
  Parts p;
  p.q = at::randn({kB, kH, kDh}) * magnitude;
  p.k1 = at::randn({kB, kKv, m1, kDh});
  p.v1 = at::randn({kB, kKv, m1, kDh});
  p.k2 = at::randn({kB, kKv, m2, kDh});
  p.v2 = at::randn({kB, kKv, m2, kDh});
  // Causal part: row b sees its first 3 + 4 b keys (ragged lengths in one padded tensor).
  p.valid1 = at::arange(m1).view({1, m1}) < (at::arange(kB) * 4 + 3).view({kB, 1});
  // HR part: a random subset, and row 2 with none selected.
  p.valid2 = at::rand({kB, m2}) < 0.3;
  p.valid2[2].fill_(false);
  return p;
}

TEST(AttentionMergeTest, MergeEqualsOneSoftmaxOverBothKeySets) {
  at::manual_seed(11);
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDh));
  for (double magnitude : {1.0, 8.0}) {
    const Parts p = RandomParts(24, 64, magnitude);
    const at::Tensor merged = MergeAttentionParts(AttendOneRow(p.q, p.k1, p.v1, p.valid1, scale),
                                                  AttendOneRow(p.q, p.k2, p.v2, p.valid2, scale));
    const at::Tensor expected =
        Concatenated(p.q, p.k1, p.v1, p.valid1, p.k2, p.v2, p.valid2, scale);
    ASSERT_EQ(merged.sizes(), expected.sizes());
    EXPECT_LT((merged - expected).abs().max().item<double>(), 1e-5) << "magnitude " << magnitude;
    // The HR part matters: without it the rows with selected keys differ.
    const at::Tensor causal_only = AttendOneRow(p.q, p.k1, p.v1, p.valid1, scale).out;
    EXPECT_GT((causal_only[0] - expected[0]).abs().max().item<double>(), 1e-3);
  }
}

TEST(AttentionMergeTest, EmptyHighResPartLeavesTheCausalOutputBitForBit) {
  at::manual_seed(5);
  const Parts p = RandomParts(24, 64, 1.0);
  const double scale = 0.25;
  const AttentionPart causal = AttendOneRow(p.q, p.k1, p.v1, p.valid1, scale);
  const AttentionPart empty = AttendOneRow(p.q, p.k2, p.v2, at::zeros({kB, 64}, at::kBool), scale);
  EXPECT_TRUE(at::isinf(empty.lse).all().item<bool>());
  EXPECT_EQ(empty.out.abs().max().item<double>(), 0.0);  // Not NaN.
  EXPECT_TRUE(at::equal(MergeAttentionParts(causal, empty), causal.out));
  // Row 2 of the random parts selected nothing: it is the causal output exactly as well.
  const at::Tensor merged =
      MergeAttentionParts(causal, AttendOneRow(p.q, p.k2, p.v2, p.valid2, scale));
  EXPECT_TRUE(at::equal(merged[2], causal.out[2]));
}

TEST(AttentionMergeTest, LogSumExpIsThePartsDenominator) {
  at::manual_seed(2);
  const Parts p = RandomParts(24, 64, 30.0);  // Scores in the hundreds: exp overflows unscaled.
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDh));
  const AttentionPart part = AttendOneRow(p.q, p.k1, p.v1, p.valid1, scale);
  const at::Tensor scores =
      at::matmul(p.q.unsqueeze(2), PerQueryHead(p.k1).transpose(2, 3)).squeeze(2) * scale;
  const at::Tensor expected =
      scores.masked_fill(p.valid1.logical_not().unsqueeze(1), -INFINITY).logsumexp(-1);
  EXPECT_TRUE(at::isfinite(part.lse).all().item<bool>());
  EXPECT_TRUE(at::isfinite(part.out).all().item<bool>());
  EXPECT_LT((part.lse - expected).abs().max().item<double>(), 1e-3);  // Scores ~1e2: relative 1e-5.
}

}  // namespace
}  // namespace flexvqa
