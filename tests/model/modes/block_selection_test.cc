// The batched device selection (block_selection.h) against the per-sequence host code it replaces
// (SelectHighResBlocks, the head sum of flex.cc): the same block masks bit for bit for a batch of
// random, peaked, flat and threshold-straddling attention maps over images of every aspect, and the
// same head-summed floats.
#include "model/modes/block_selection.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "model/modes/highres_selection.h"

namespace flexvqa {
namespace {

constexpr int kSide = 24;
constexpr int64_t kCells = kSide * kSide;

struct Image {
  int width, height;
};

// Every image shape the band rule distinguishes: square, landscape and portrait with whole bands,
// a slight aspect with none, an extreme one whose bands cover most of the grid.
const std::vector<Image> kImages = {{100, 100}, {90, 26},    {26, 90},   {41, 39},
                                    {640, 480}, {300, 1000}, {1000, 10}, {7, 5}};

std::vector<int> Blocks(const BlockMask& m) {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(m.size()); ++i) out.push_back(m[i]);
  return out;
}

std::vector<int> Blocks(const at::Tensor& row) {
  const at::Tensor r = row.to(at::kInt).contiguous();
  return std::vector<int>(r.data_ptr<int>(), r.data_ptr<int>() + r.numel());
}

// A row (or column) of the 24-cell side that only pooled window i covers: PyTorch's windows
// [floor(i n / 9), ceil((i + 1) n / 9)) overlap their neighbours by at most one cell.
int ExclusiveCell(int i) {
  auto begin = [](int w) { return w * kSide / 9; };
  auto end = [](int w) { return ((w + 1) * kSide + 8) / 9; };
  for (int r = begin(i); r < end(i); ++r) {
    if ((i == 0 || r >= end(i - 1)) && (i == 8 || r < begin(i + 1))) return r;
  }
  return -1;
}

// Runs the batch through both implementations and compares each row.
void ExpectSameSelections(const at::Tensor& attention, const std::vector<Image>& images,
                          const std::vector<int>& thresholds) {
  const int64_t b = attention.size(0);
  std::vector<at::Tensor> bands;
  for (const Image& im : images) {
    bands.push_back(PaddingBandMask(kSide, im.width, im.height, at::Device(at::kCPU)));
  }
  const at::Tensor threshold = at::tensor(std::vector<float>(thresholds.begin(), thresholds.end()));
  const at::Tensor device = SelectBlocksBatched(attention, at::stack(bands), threshold, kSide);
  ASSERT_EQ(device.sizes(), (std::vector<int64_t>{b, 81}));
  ASSERT_EQ(device.scalar_type(), at::kBool);
  int selected = 0;
  for (int64_t i = 0; i < b; ++i) {
    const at::Tensor row = attention[i].contiguous();
    const BlockMask host = SelectHighResBlocks(row.data_ptr<float>(), kSide, images[i].width,
                                               images[i].height, thresholds[i]);
    selected += CountBlocks(host);
    EXPECT_EQ(Blocks(device[i]), Blocks(host))
        << "row " << i << " (" << images[i].width << "x" << images[i].height << ", threshold "
        << thresholds[i] << ")";
  }
  EXPECT_GT(selected, 0);  // The comparison is not between two empty selections.
}

TEST(BlockSelectionTest, RandomMapsMatchHostSelectionBitForBit) {
  at::manual_seed(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t b = 16;
    // Softmax-like: positive, a few heads' worth of mass, peaks of varying sharpness.
    const at::Tensor attention =
        at::softmax(at::randn({b, kCells}) * (1.0 + trial % 5), 1) * 4.0;  // [B, n]
    std::vector<Image> images;
    std::vector<int> thresholds;
    for (int64_t i = 0; i < b; ++i) {
      images.push_back(kImages[(trial + i) % kImages.size()]);
      thresholds.push_back(static_cast<int>((trial * 37 + i * 53) % 256));
    }
    SCOPED_TRACE("trial " + std::to_string(trial));
    ExpectSameSelections(attention, images, thresholds);
  }
}

TEST(BlockSelectionTest, ThresholdOnACellsExactScoreAndEdgeCasesMatch) {
  // Cells whose normalised score lands on or next to an integer threshold (255 * 48 / 255 is not
  // exact in float: both sides must round it the same way), a flat row (max == min: nothing), a
  // row whose only peak is in a padding band, threshold 0 (every non-minimum cell) and 255
  // (nothing).
  std::vector<at::Tensor> rows;
  std::vector<Image> images;
  std::vector<int> thresholds;
  auto add = [&](at::Tensor row, Image im, int t) {
    rows.push_back(row);
    images.push_back(im);
    thresholds.push_back(t);
  };
  for (int t : {47, 48, 49, 100, 127, 128}) {
    at::Tensor a = at::zeros({kCells});
    a[0] = 1.0f;
    a[300] = static_cast<float>(t) / 255.0f;
    a[301] = std::nextafter(static_cast<float>(t) / 255.0f, 1.0f);
    a[555] = std::nextafter(static_cast<float>(t) / 255.0f, 0.0f);
    add(a, {50, 50}, t);
  }
  add(at::full({kCells}, 0.3f), {50, 50}, 0);  // Flat.
  at::Tensor band_peak = at::full({kCells}, 0.05f);
  band_peak[0] = 1.0f;    // Row 0: inside the 90x26 top band.
  band_peak[300] = 0.5f;  // The image's own maximum.
  add(band_peak, {90, 26}, 48);
  add(at::rand({kCells}), {64, 64}, 0);
  add(at::rand({kCells}), {64, 64}, 255);
  ExpectSameSelections(at::stack(rows), images, thresholds);
  // 255 selects nothing and the flat row nothing, on the device too.
  const at::Tensor device = SelectBlocksBatched(
      at::stack(rows), at::zeros({static_cast<int64_t>(rows.size()), kCells}, at::kBool),
      at::tensor(std::vector<float>(thresholds.begin(), thresholds.end())), kSide);
  EXPECT_EQ(device[6].sum().item<int64_t>(), 0);
  EXPECT_EQ(device[9].sum().item<int64_t>(), 0);
  EXPECT_GT(device[8].sum().item<int64_t>(), 70);  // Threshold 0 on uniform noise: nearly all.
}

TEST(BlockSelectionTest, ScoresWithinAnUlpOfTheThresholdRoundAsOnTheHost) {
  // Cells whose normalised score is the threshold give or take a rounding: any other order of
  // the float operations (e.g. 255 before the division) flips some of them.
  at::manual_seed(23);
  const int64_t b = 32;
  std::vector<at::Tensor> rows;
  std::vector<Image> images(b, Image{64, 64});
  std::vector<int> thresholds;
  for (int64_t i = 0; i < b; ++i) {
    const float lo = 0.01f + 0.2f * at::rand({1}).item<float>();
    const float hi = lo + 0.05f + 0.5f * at::rand({1}).item<float>();
    const int t = 1 + static_cast<int>(i * 7 % 250);
    at::Tensor a = at::full({kCells}, lo);
    a[0] = hi;
    const float at_t = lo + (hi - lo) * (static_cast<float>(t) / 255.0f);
    // One cell in each pooled window that no other window covers, each at a neighbouring float
    // around the threshold, so that every flip shows in the blocks.
    float v = at_t;
    for (int k = 0; k < 40; ++k) v = std::nextafter(v, 0.0f);
    for (int w = 1; w < 81; ++w) {
      a[ExclusiveCell(w / 9) * kSide + ExclusiveCell(w % 9)] = v;
      v = std::nextafter(v, 1.0f);
    }
    rows.push_back(a);
    thresholds.push_back(t);
  }
  ExpectSameSelections(at::stack(rows), images, thresholds);
}

TEST(BlockSelectionTest, PaddingBandMaskFollowsTheImageShape) {
  // 90x26: margin 32, m = int(32 / 90 * 24) = 8 rows at the top and the bottom.
  const at::Tensor landscape =
      PaddingBandMask(kSide, 90, 26, at::Device(at::kCPU)).view({kSide, kSide});
  EXPECT_TRUE(landscape.narrow(0, 0, 8).all().item<bool>());
  EXPECT_TRUE(landscape.narrow(0, 16, 8).all().item<bool>());
  EXPECT_FALSE(landscape.narrow(0, 8, 8).any().item<bool>());
  const at::Tensor portrait =
      PaddingBandMask(kSide, 26, 90, at::Device(at::kCPU)).view({kSide, kSide});
  EXPECT_TRUE(at::equal(portrait, landscape.t()));
  EXPECT_FALSE(PaddingBandMask(kSide, 41, 39, at::Device(at::kCPU)).any().item<bool>());
}

TEST(BlockSelectionTest, HeadSumEqualsPerSequenceHostSum) {
  // Each sequence's image at its own offset in a padded key axis, as a batched decode sees it.
  at::manual_seed(3);
  const int64_t b = 5, h = 4, t = 700;
  const at::Tensor probs = at::softmax(at::randn({b, h, t}), 2);
  const std::vector<int64_t> begins = {0, 5, 35, 100, t - kCells};
  const at::Tensor summed = HeadSummedImageAttention(probs, at::tensor(begins), kCells);
  ASSERT_EQ(summed.sizes(), (std::vector<int64_t>{b, kCells}));
  for (int64_t i = 0; i < b; ++i) {
    // flex.cc's per-sequence host path: probs [H, 1, T] narrowed and summed over heads.
    const at::Tensor host =
        probs[i].unsqueeze(1).narrow(2, begins[i], kCells).sum(0).reshape({kCells});
    EXPECT_TRUE(at::equal(summed[i], host)) << "sequence " << i;
  }
}

}  // namespace
}  // namespace flexvqa
