#include "model/modes/block_selection.h"

#include <ATen/ATen.h>

#include <vector>

#include "model/modes/highres_selection.h"

namespace flexvqa {

at::Tensor PaddingBandMask(int lr_side, int image_width, int image_height, at::Device device) {
  std::vector<uint8_t> cells = PaddingBandCells(lr_side, image_width, image_height);
  return at::tensor(at::ArrayRef<uint8_t>(cells), at::TensorOptions().dtype(at::kByte))
      .to(device)
      .to(at::kBool);  // [lr^2]
}

at::Tensor HeadSummedImageAttention(const at::Tensor& probs, const at::Tensor& image_begin,
                                    int64_t n) {
  const int64_t b = probs.size(0), h = probs.size(1);
  // Column index of image cell i of sequence b: image_begin[b] + i.
  const at::Tensor columns =
      image_begin.view({b, 1}) + at::arange(n, image_begin.options());    // [B, n]
  return probs.gather(2, columns.unsqueeze(1).expand({b, h, n})).sum(1);  // [B, n]
}

at::Tensor SelectBlocksBatched(const at::Tensor& image_attention, const at::Tensor& band,
                               const at::Tensor& threshold, int lr_side) {
  // Bands zeroed before min and max are taken (modeling_llama.py:548-558).
  return ThresholdBlocks(image_attention.masked_fill(band, 0.0), threshold, lr_side);
}

at::Tensor ThresholdBlocks(const at::Tensor& a, const at::Tensor& threshold, int lr_side) {
  const int64_t b = a.size(0);
  const auto [min, max] = at::aminmax(a, 1, /*keepdim=*/true);  // [B, 1] each
  // adaptive_max_pool2d(24 -> 9) of the thresholded map (modeling_llama.py:566) keeps a window
  // when any of its cells passes. The score below is a chain of correctly rounded IEEE operations,
  // each non-decreasing in a, so some cell passes exactly when the window's largest a does: pooling
  // a first gives the same blocks bit for bit, on 81 values instead of 576. PyTorch's overlapping
  // windows, as SelectHighResBlocks spells them out.
  const at::Tensor pooled = std::get<0>(at::adaptive_max_pool2d(a.view({b, 1, lr_side, lr_side}),
                                                                {kSelectionGrid, kSelectionGrid}))
                                .view({b, kSelectionGrid * kSelectionGrid});  // [B, 81]
  // ((a - min) / (max - min)) * 255 in fp32, the order of modeling_llama.py:561-564 and of
  // SelectHighResBlocks. A row whose max equals its min gives 0 / 0 = NaN, and NaN > t is false:
  // nothing selected, as the host code decides explicitly.
  return (pooled - min) / (max - min) * 255.0 > threshold.view({b, 1});  // [B, 81]
}

}  // namespace flexvqa
