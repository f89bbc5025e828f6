// hd: LLaVA-1.5-HD as the FlexAttention paper re-implemented it (docs/modes.md). The image at
// hd_zoom x the tower's size; the sequence holds its s^2 low-resolution tokens (the downsampled
// view) followed by the (Z s)^2 raw projector outputs of its Z x Z tiles, stitched row-major.
// Attention stays plain causal over all of them.
#include <ATen/ATen.h>

#include "model/modes/mode.h"

namespace flexvqa {
namespace {

class HdMode final : public Mode {
 public:
  explicit HdMode(const LlavaConfig& config) : Mode(config, config.mode.hd_zoom) {}

  int image_tokens() const override {
    const int side = config_.vision.image_size / config_.vision.patch_size;
    return side * side + (zoom_ * side) * (zoom_ * side);
  }

  EncodedImages Encode(const ImageEncoder& encoder, const at::Tensor& pixels,
                       const at::Tensor& highres) const override {
    const auto [lr, hr] = encoder.EncodeTwoResolutions(highres, pixels);  // [N, s^2 | (Z s)^2, D]
    return {at::cat({lr, hr}, 1), {}};
  }
};

}  // namespace

StatusOr<std::unique_ptr<Mode>> CreateHdMode(const LlavaConfig& config, const WeightLoader&,
                                             at::ScalarType, at::Device) {
  return std::unique_ptr<Mode>(new HdMode(config));
}

}  // namespace flexvqa
