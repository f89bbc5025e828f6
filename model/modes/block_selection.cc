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
  const int64_t b = image_attention.size(0);
  // Bands zeroed before min and max are taken (modeling_llama.py:548-558).
  const at::Tensor a = image_attention.masked_fill(band, 0.0);  // [B, n]
  const auto [min, max] = at::aminmax(a, 1, /*keepdim=*/true);  // [B, 1] each
  // ((a - min) / (max - min)) * 255 in fp32, the order of modeling_llama.py:561-564 and of
  // SelectHighResBlocks, so that both compare the same floats with the threshold.
  const at::Tensor scores = (a - min) / (max - min) * 255.0;
  const at::Tensor kept = (scores > threshold.view({b, 1})) & (max > min);  // [B, n]
  // adaptive_max_pool2d(24 -> 9) over the 0/1 map (modeling_llama.py:566): PyTorch's overlapping
  // windows, as SelectHighResBlocks spells them out.
  const at::Tensor pooled = std::get<0>(at::adaptive_max_pool2d(
      kept.to(at::kFloat).view({b, 1, lr_side, lr_side}), {kSelectionGrid, kSelectionGrid}));
  return pooled.view({b, kSelectionGrid * kSelectionGrid}) > 0.5;  // [B, 81]
}

}  // namespace flexvqa
