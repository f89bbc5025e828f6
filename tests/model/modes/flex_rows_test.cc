// The newest rows' selection from the causal log-sum-exp (flex_rows.h) against flex.cc's
// per-sequence host path (softmax of the row over its causal keys, image columns summed over heads
// on the host, SelectHighResBlocks): ragged causal lengths and image positions in one padded
// batch, images of several aspects, a text-only row; and the hierarchical rows against the
// concatenated softmax with the selection they use.
#include "model/modes/flex_rows.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/modes/block_selection.h"
#include "model/modes/highres_selection.h"

namespace flexvqa {
namespace {

constexpr int kSide = 24;
constexpr int64_t kN = kSide * kSide;
constexpr int64_t kH = 4, kKv = 2, kDh = 16, kMax = 700;

struct Seq {
  int64_t length, image_begin;
  int width, height;
  bool image;
};

TEST(FlexRowsTest, SelectionFromTheCausalLseMatchesTheHostPath) {
  at::manual_seed(29);
  const std::vector<Seq> seqs = {{600, 5, 64, 64, true},
                                 {kMax, 100, 90, 26, true},
                                 {590, 10, 26, 90, true},
                                 {650, 35, 640, 480, true},
                                 {kMax, 120, 100, 100, false}};
  const int64_t c = static_cast<int64_t>(seqs.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDh));
  // Peaked keys: a few image keys align with the query, as real attention maps have.
  const at::Tensor q = at::randn({c, kH, kDh});
  at::Tensor keys = at::randn({c, kKv, kMax, kDh});
  std::vector<int64_t> length_data;
  std::vector<at::Tensor> bands;
  for (int64_t b = 0; b < c; ++b) {
    for (int j = 0; j < 6; ++j) {
      const int64_t cell = (b * 97 + j * 131) % kN;
      keys[b].select(1, seqs[b].image_begin + cell) +=
          q[b].view({kKv, kH / kKv, kDh}).mean(1) * 1.5;
    }
    length_data.push_back(seqs[b].length);
    bands.push_back(PaddingBandMask(kSide, seqs[b].width, seqs[b].height, at::Device(at::kCPU)));
  }
  const at::Tensor valid = at::arange(kMax).view({1, kMax}) < at::tensor(length_data).view({c, 1});
  const at::Tensor lse = SoftmaxOneRow(q, keys, valid, scale).lse;  // [C, H]
  std::vector<int64_t> begins;
  for (const Seq& s : seqs) begins.push_back(s.image_begin);
  // Each row's image keys, gathered as the decoder's pool gives them.
  const at::Tensor columns = at::tensor(begins).view({c, 1}) + at::arange(kN);  // [C, n]
  const at::Tensor image_keys =
      keys.gather(2, columns.view({c, 1, kN, 1}).expand({c, kKv, kN, kDh}));
  FlexRowInputs rows;
  rows.band = at::stack(bands);
  std::vector<float> thresholds;
  for (const Seq& s : seqs) thresholds.push_back(s.image ? 48.0f : 255.0f);
  rows.threshold = at::tensor(thresholds);
  const at::Tensor selected = SelectForNextLayer(q, image_keys, lse, rows, scale);
  const at::Tensor attention = ImageAttentionFromLse(q, image_keys, lse, scale);
  int blocks = 0;
  for (int64_t b = 0; b < c; ++b) {
    // flex.cc's host path for one sequence: its own keys only, softmax, narrow, head sum.
    const at::Tensor k = keys[b].narrow(1, 0, seqs[b].length).repeat_interleave(kH / kKv, 0);
    const at::Tensor probs =
        at::softmax(at::matmul(q[b].unsqueeze(1), k.transpose(1, 2)) * scale, -1, at::kFloat);
    const at::Tensor host =
        probs.narrow(2, seqs[b].image_begin, kN).sum(0).reshape({kN}).contiguous();
    EXPECT_LT((attention[b] - host).abs().max().item<double>(), 1e-6) << "sequence " << b;
    BlockMask expected(81, 0);
    if (seqs[b].image) {
      expected =
          SelectHighResBlocks(host.data_ptr<float>(), kSide, seqs[b].width, seqs[b].height, 48);
    }
    blocks += CountBlocks(expected);
    const at::Tensor ours = selected[b].to(at::kByte).contiguous();
    EXPECT_EQ(BlockMask(ours.data_ptr<uint8_t>(), ours.data_ptr<uint8_t>() + 81), expected)
        << "sequence " << b;
  }
  EXPECT_GT(blocks, 0);
  EXPECT_FALSE(selected[4].any().item<bool>());  // Text-only row.
}

}  // namespace
}  // namespace flexvqa
