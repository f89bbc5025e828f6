#include "model/modes/highres_selection.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace flexvqa {
namespace {

// The attention map with the square padding's bands zeroed (modeling_llama.py:548-558).
std::vector<float> ZeroPaddingBands(const float* attention, int side, int width, int height) {
  std::vector<float> a(attention, attention + static_cast<size_t>(side) * side);
  const std::vector<uint8_t> band = PaddingBandCells(side, width, height);
  for (size_t i = 0; i < a.size(); ++i) {
    if (band[i]) a[i] = 0.0f;
  }
  return a;
}

// Scores 255 * (a - min) / (max - min) in float32, as the reference's tensors compute them
// (modeling_llama.py:561-564). Empty when max == min (the reference's 0/0 selects nothing).
std::vector<float> NormalisedScores(const std::vector<float>& a) {
  const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
  const float min = *lo, max = *hi;
  if (!(max > min)) return {};
  std::vector<float> scores(a.size());
  const float range = max - min;
  for (size_t i = 0; i < a.size(); ++i) scores[i] = ((a[i] - min) / range) * 255.0f;
  return scores;
}

}  // namespace

std::vector<uint8_t> PaddingBandCells(int side, int width, int height) {
  // The image was pasted centred on a max(W, H) square, so m rows or columns on each side hold
  // only padding.
  std::vector<uint8_t> band(static_cast<size_t>(side) * side, 0);
  const int margin = std::abs(width - height) / 2;
  const int m = static_cast<int>(static_cast<double>(margin) / std::max(width, height) * side);
  if (m == 0) return band;
  for (int r = 0; r < side; ++r) {
    for (int c = 0; c < side; ++c) {
      const bool in_band = width > height ? (r < m || r >= side - m) : (c < m || c >= side - m);
      band[static_cast<size_t>(r) * side + c] = in_band ? 1 : 0;
    }
  }
  return band;
}

BlockMask SelectHighResBlocks(const float* attention, int lr_side, int image_width,
                              int image_height, int threshold) {
  BlockMask blocks(kSelectionGrid * kSelectionGrid, 0);
  const std::vector<float> scores =
      NormalisedScores(ZeroPaddingBands(attention, lr_side, image_width, image_height));
  if (scores.empty()) return blocks;
  const float t = static_cast<float>(threshold);
  // adaptive_max_pool2d(lr_side -> 9) (modeling_llama.py:566): window i spans
  // [floor(i * n / 9), ceil((i + 1) * n / 9)), so neighbouring windows overlap when 9 does not
  // divide n.
  for (int i = 0; i < kSelectionGrid; ++i) {
    const int r0 = i * lr_side / kSelectionGrid;
    const int r1 = ((i + 1) * lr_side + kSelectionGrid - 1) / kSelectionGrid;
    for (int j = 0; j < kSelectionGrid; ++j) {
      const int c0 = j * lr_side / kSelectionGrid;
      const int c1 = ((j + 1) * lr_side + kSelectionGrid - 1) / kSelectionGrid;
      bool any = false;
      for (int r = r0; r < r1 && !any; ++r) {
        for (int c = c0; c < c1 && !any; ++c)
          any = scores[static_cast<size_t>(r) * lr_side + c] > t;
      }
      blocks[i * kSelectionGrid + j] = any ? 1 : 0;
    }
  }
  return blocks;
}

double SelectionMargin(const float* attention, int lr_side, int image_width, int image_height,
                       int threshold) {
  const std::vector<float> scores =
      NormalisedScores(ZeroPaddingBands(attention, lr_side, image_width, image_height));
  double margin = std::numeric_limits<double>::infinity();
  for (float s : scores) margin = std::min(margin, std::abs(static_cast<double>(s) - threshold));
  return margin;
}

int CountBlocks(const BlockMask& mask) {
  return static_cast<int>(std::count(mask.begin(), mask.end(), 1));
}

std::vector<int64_t> BlockTokenIndices(int block, int hr_side) {
  const int b = hr_side / kSelectionGrid;
  const int r0 = block / kSelectionGrid * b, c0 = block % kSelectionGrid * b;
  std::vector<int64_t> indices;
  indices.reserve(static_cast<size_t>(b) * b);
  for (int r = r0; r < r0 + b; ++r) {
    for (int c = c0; c < c0 + b; ++c) indices.push_back(static_cast<int64_t>(r) * hr_side + c);
  }
  return indices;
}

}  // namespace flexvqa
