// pooled: full with the image's s x s token grid average-pooled 2 x 2, so an image takes (s/2)^2
// tokens in the sequence instead of s^2 (576 -> 144 for CLIP-336): a cheaper LLaVA-1.5 variant,
// and the mode that docs/modes.md "Adding a mode" was checked with. Plain causal attention.
#include <ATen/ATen.h>

#include "model/modes/mode.h"

namespace flexvqa {
namespace {

class PooledMode final : public Mode {
 public:
  explicit PooledMode(const LlavaConfig& config) : Mode(config, /*zoom=*/0) {}

  int image_tokens() const override { return (side() / 2) * (side() / 2); }

  EncodedImages Encode(const ImageEncoder& encoder, const at::Tensor& pixels,
                       const at::Tensor& /*highres*/) const override {
    const at::Tensor f = encoder.Encode(pixels);  // [N, s^2, D], row-major over the grid
    const int64_t n = f.size(0), s = side(), d = f.size(2);
    // [N, s, s, D] -> [N, D, s, s] -> 2x2 mean -> [N, D, s/2, s/2] -> [N, (s/2)^2, D]
    const at::Tensor grid = f.view({n, s, s, d}).permute({0, 3, 1, 2});
    return {at::avg_pool2d(grid, 2).permute({0, 2, 3, 1}).reshape({n, -1, d}), {}};
  }

 private:
  int side() const { return config_.vision.image_size / config_.vision.patch_size; }
};

}  // namespace

StatusOr<std::unique_ptr<Mode>> CreatePooledMode(const LlavaConfig& config, const WeightLoader&,
                                                 at::ScalarType, at::Device) {
  const int side = config.vision.image_size / config.vision.patch_size;
  if (side % 2 != 0 || config.num_image_tokens() != side * side) {
    return InvalidArgumentError("pooled needs an even patch grid of patch features (no CLS), got " +
                                std::to_string(side) + "x" + std::to_string(side));
  }
  return std::unique_ptr<Mode>(new PooledMode(config));
}

}  // namespace flexvqa
