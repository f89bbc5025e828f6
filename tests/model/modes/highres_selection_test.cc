// SelectHighResBlocks against hand-derived cases of flexattention.md §3: PyTorch's overlapping
// adaptive max-pool windows (24 -> 9), padding bands, min-max normalisation with max == min, the
// threshold scale.
#include "model/modes/highres_selection.h"

#include <gtest/gtest.h>

#include <vector>

namespace flexvqa {
namespace {

constexpr int kSide = 24;

std::vector<float> Flat(float value = 0.1f) { return std::vector<float>(kSide * kSide, value); }

std::vector<int> Selected(const BlockMask& mask) {
  std::vector<int> blocks;
  for (int i = 0; i < static_cast<int>(mask.size()); ++i) {
    if (mask[i]) blocks.push_back(i);
  }
  return blocks;
}

TEST(HighResSelectionTest, OnePeakSelectsEveryWindowThatCoversIt) {
  std::vector<float> a = Flat();
  a[0] = 1.0f;  // Cell (0, 0): only window 0 ([0, 3)) covers row/column 0.
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 100, 100, 48)), std::vector<int>({0}));
  a = Flat();
  a[2 * kSide + 2] = 1.0f;  // Cell (2, 2): windows 0 ([0, 3)) and 1 ([2, 6)) overlap on it.
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 100, 100, 48)),
            std::vector<int>({0, 1, 9, 10}));
  a = Flat();
  a[23 * kSide + 12] = 1.0f;  // Row 23: window 8 ([21, 24)); column 12: windows 4 ([10, 14)) only.
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 100, 100, 48)),
            std::vector<int>({8 * 9 + 4}));
}

TEST(HighResSelectionTest, ThresholdIsOnTheNormalisedScale) {
  std::vector<float> a = Flat(0.0f);
  a[0] = 1.0f;
  a[12 * kSide + 12] = 0.5f;  // 127.5 after normalisation; window (4, 4) only.
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 50, 50, 127)), std::vector<int>({0, 40}));
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 50, 50, 128)), std::vector<int>({0}));
  EXPECT_TRUE(
      Selected(SelectHighResBlocks(a.data(), kSide, 50, 50, 255)).empty());  // 255 > 255 is false.
}

TEST(HighResSelectionTest, EqualValuesSelectNothing) {
  const std::vector<float> a = Flat(0.3f);
  EXPECT_TRUE(Selected(SelectHighResBlocks(a.data(), kSide, 10, 10, 0)).empty());
}

TEST(HighResSelectionTest, PaddingBandsAreZeroed) {
  // Landscape 90x26: margin 32, m = int(32 / 90 * 24) = 8 rows top and bottom.
  // Background 0.05: 25.5 on the 0-255 scale once the bands' zeros become the minimum.
  std::vector<float> a = Flat(0.05f);
  a[0] = 1.0f;                // In the top band: zeroed, so it cannot win.
  a[12 * kSide + 12] = 0.5f;  // The image's own maximum.
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 90, 26, 48)), std::vector<int>({40}));
  // Portrait 26x90: the same bands as columns.
  a = Flat(0.05f);
  a[12 * kSide + 0] = 1.0f;
  a[12 * kSide + 12] = 0.5f;
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 26, 90, 48)), std::vector<int>({40}));
  // A slight aspect ratio leaves no whole band: m = int(1 / 41 * 24) = 0.
  a = Flat(0.1f);
  a[0] = 1.0f;
  EXPECT_EQ(Selected(SelectHighResBlocks(a.data(), kSide, 41, 39, 48)), std::vector<int>({0}));
}

TEST(HighResSelectionTest, BlocksMapToEightByEightTokens) {
  const std::vector<int64_t> block = BlockTokenIndices(9 + 2, 72);  // Block (1, 2).
  ASSERT_EQ(block.size(), 64u);
  EXPECT_EQ(block.front(), 8 * 72 + 16);
  EXPECT_EQ(block.back(), 15 * 72 + 23);
}

}  // namespace
}  // namespace flexvqa
