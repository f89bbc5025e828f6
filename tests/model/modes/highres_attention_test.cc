// The fixed-shape high-resolution part (highres_attention.h) merged with the causal part against
// the reference's hierarchical attention (modeling_llama.py:436-499, as
// tests/parity/flex_reference.py writes it): the selected HR tokens' keys and values recomputed
// from the raw features, concatenated after the causal keys under one fp32 softmax. Ragged
// selections in one batch, grouped-query heads, a sequence with no block selected.
#include "model/modes/highres_attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/modes/highres_selection.h"
#include "model/nn/layers.h"

namespace flexvqa {
namespace {

constexpr int kHrSide = 18;  // Blocks of 2x2 tokens.
constexpr int64_t kTokens = kHrSide * kHrSide;
constexpr int64_t kB = 4, kH = 4, kKv = 2, kDh = 8, kD = 32, kCausal = 20;

TEST(HighResAttentionTest, TokenBlocksInvertBlockTokenIndices) {
  const at::Tensor blocks = TokenBlocks(72, at::Device(at::kCPU));
  ASSERT_EQ(blocks.numel(), 72 * 72);
  for (int b : {0, 11, 40, 80}) {
    for (int64_t token : BlockTokenIndices(b, 72)) EXPECT_EQ(blocks[token].item<int64_t>(), b);
  }
  EXPECT_EQ(at::bincount(blocks).min().item<int64_t>(), 64);  // Every block has 8x8 tokens.
}

TEST(HighResAttentionTest, MergedPartsEqualTheReferencesConcatenatedSoftmax) {
  at::manual_seed(17);
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDh));
  const at::Tensor k_weight = at::randn({kKv * kDh, kD}) * 0.3;
  const at::Tensor v_weight = at::randn({kKv * kDh, kD}) * 0.3;
  const at::Tensor v_weights = ValueWeightsPerQueryHead(v_weight, kH, kKv);
  const at::Tensor token_blocks = TokenBlocks(kHrSide, at::Device(at::kCPU));
  const at::Tensor q = at::randn({kB, kH, kDh});
  const at::Tensor causal_k = at::randn({kB, kKv, kCausal, kDh});
  const at::Tensor causal_v = at::randn({kB, kKv, kCausal, kDh});
  const at::Tensor causal_valid = at::ones({kB, kCausal}, at::kBool);
  const at::Tensor features = at::randn({kB, kTokens, kD});
  const at::Tensor cos = at::rand({kTokens, kDh}), sin = at::rand({kTokens, kDh});
  // Ragged selections: 1, 9, 30 blocks and none.
  at::Tensor blocks = at::zeros({kB, 81}, at::kBool);
  blocks[0][40] = true;
  blocks[1].narrow(0, 0, 9).fill_(true);
  blocks[2].narrow(0, 20, 30).fill_(true);
  std::vector<at::Tensor> keys;
  for (int64_t b = 0; b < kB; ++b)
    keys.push_back(HighResKeys(features[b], k_weight, cos, sin, kKv));
  const at::Tensor merged = MergeAttentionParts(
      AttendOneRow(q, causal_k, causal_v, causal_valid, scale),
      HighResPart(q, at::stack(keys), features, blocks, token_blocks, v_weights, scale));
  ASSERT_EQ(merged.sizes(), (std::vector<int64_t>{kB, kH, kDh}));
  for (int64_t b = 0; b < kB; ++b) {
    // The reference: the selected tokens, their keys and values from the raw features.
    std::vector<int64_t> tokens;
    for (int block = 0; block < 81; ++block) {
      if (!blocks[b][block].item<bool>()) continue;
      for (int64_t t : BlockTokenIndices(block, kHrSide)) tokens.push_back(t);
    }
    at::Tensor keys_b = causal_k[b].repeat_interleave(kH / kKv, 0);    // [H, T, Dh]
    at::Tensor values_b = causal_v[b].repeat_interleave(kH / kKv, 0);  // [H, T, Dh]
    if (!tokens.empty()) {
      const at::Tensor sel = at::tensor(tokens);
      const at::Tensor x = features[b].index_select(0, sel);
      const int64_t m = sel.numel();
      const at::Tensor kh = ApplyRotary(Linear(x, k_weight).view({m, kKv, kDh}).transpose(0, 1),
                                        cos.index_select(0, sel), sin.index_select(0, sel));
      const at::Tensor vh = Linear(x, v_weight).view({m, kKv, kDh}).transpose(0, 1);
      keys_b = at::cat({keys_b, kh.repeat_interleave(kH / kKv, 0)}, 1);
      values_b = at::cat({values_b, vh.repeat_interleave(kH / kKv, 0)}, 1);
    }
    const at::Tensor s = at::matmul(q[b].unsqueeze(1), keys_b.transpose(1, 2)) * scale;
    const at::Tensor expected = at::matmul(at::softmax(s, -1, at::kFloat), values_b).squeeze(1);
    EXPECT_LT((merged[b] - expected).abs().max().item<double>(), 1e-5) << "sequence " << b;
  }
  // No block selected: the causal output bit for bit.
  EXPECT_TRUE(
      at::equal(merged[3], AttendOneRow(q, causal_k, causal_v, causal_valid, scale).out[3]));
}

}  // namespace
}  // namespace flexvqa
