// FlexAttention's high-resolution block selection (flexattention.md §3; the authors' code at
// UMass-Foundation-Model/FlexAttention@f814be5 modeling_llama.py:523-572) for a whole batch as
// device tensor code: the steps of SelectHighResBlocks (highres_selection.h) in the same float32
// order, on [B, lr^2] tensors, with no host read and no shape that depends on the data (a decode
// step built from these can be captured as a CUDA graph). Pure functions; any thread, any device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace flexvqa {

// The padding-band cells of one image as a device tensor, built once at admission:
// [lr_side^2] bool, true where PaddingBandCells (highres_selection.h) is 1.
at::Tensor PaddingBandMask(int lr_side, int image_width, int image_height, at::Device device);

// The last query row's softmax probabilities over each sequence's keys, probs [B, H, T] (fp32),
// restricted to the LR image columns [image_begin[b], image_begin[b] + n) and summed over heads
// (modeling_llama.py:541) -> [B, n] fp32. image_begin: [B] int64 on the device; each row's columns
// must lie inside T.
at::Tensor HeadSummedImageAttention(const at::Tensor& probs, const at::Tensor& image_begin,
                                    int64_t n);

// The selection of every sequence at once: image_attention [B, lr^2] fp32 (as
// HeadSummedImageAttention returns), band [B, lr^2] bool (PaddingBandMask per sequence), threshold
// [B] fp32 on the 0-255 scale -> [B, 81] bool, row-major over the 9x9 pooled grid. Zero the bands,
// min-max normalise, keep 255 * a > threshold, adaptive max pool to 9x9; a row whose max equals
// its min selects nothing (where the reference divides 0 by 0), and so does a threshold of 255 (the
// one to give a row without an image).
at::Tensor SelectBlocksBatched(const at::Tensor& image_attention, const at::Tensor& band,
                               const at::Tensor& threshold, int lr_side);

// SelectBlocksBatched after the bands: `a` [B, lr^2] fp32 with the band cells already 0 (flex's
// decode step reads them as zeros: flex_decode.h).
at::Tensor ThresholdBlocks(const at::Tensor& a, const at::Tensor& threshold, int lr_side);

}  // namespace flexvqa
