// FlexAttention's high-resolution feature selection (flexattention.md §3; the authors' code at
// UMass-Foundation-Model/FlexAttention@f814be5 modeling_llama.py:523-572) as a pure function of the
// last query row's head-summed attention to the LR image tokens. Torch-free and thread-safe; the
// result is a block mask over the pooled grid (9x9), each block standing for (hr_side/9)^2
// high-resolution tokens.
#pragma once

#include <cstdint>
#include <vector>

namespace flexvqa {

// The pooled grid's side: the reference pools to 9x9 (modeling_llama.py:566), a constant there.
inline constexpr int kSelectionGrid = 9;

// Row-major kSelectionGrid^2 flags; block (i, j) covers HR rows and columns [i*b, (i+1)*b), [j*b,
// (j+1)*b) with b = hr_side / kSelectionGrid (the nearest upsampling of modeling_llama.py:567).
using BlockMask = std::vector<uint8_t>;

// attention: [lr_side * lr_side] row-major, the last row's softmax probabilities over the LR image
// keys, summed over heads. image_width/height: the ORIGINAL image size, whose square padding bands
// are zeroed. threshold: on the 0-255 scale; a cell is kept when 255 * normalised > threshold.
// Steps, in order: zero padding bands (m = int(margin / max(W, H) * lr_side), margin = |W - H| /
// 2), min-max normalise (all equal: nothing selected, where the reference divides by zero),
// threshold, adaptive max pool to 9x9.
BlockMask SelectHighResBlocks(const float* attention, int lr_side, int image_width,
                              int image_height, int threshold);

// The smallest distance |255 * normalised - threshold| over the cells (infinity when nothing could
// be selected): how close a selection came to flipping, for tests that compare against a reference.
double SelectionMargin(const float* attention, int lr_side, int image_width, int image_height,
                       int threshold);

int CountBlocks(const BlockMask& mask);

// The lr_side x lr_side cells (row-major, 1 = padding) that the square padding of a
// image_width x image_height image covers: m = int(margin / max(W, H) * lr_side) rows (landscape)
// or columns (portrait) on each side (modeling_llama.py:548-558). SelectHighResBlocks zeroes them.
std::vector<uint8_t> PaddingBandCells(int lr_side, int image_width, int image_height);

// Indices (row-major over hr_side x hr_side) of the high-resolution tokens of block `block`.
std::vector<int64_t> BlockTokenIndices(int block, int hr_side);

}  // namespace flexvqa
