#include "client/selection_overlay.h"

#include <png.h>

#include <algorithm>
#include <vector>

namespace flexvqa::client {
namespace {

constexpr uint8_t kTint[3] = {230, 20, 20};
constexpr double kMinOpacity = 0.2, kMaxOpacity = 0.6;

void Blend(RgbImage& image, int x, int y, double opacity) {
  uint8_t* pixel = image.pixels.data() + (static_cast<size_t>(y) * image.width + x) * 3;
  for (int c = 0; c < 3; ++c) {
    pixel[c] = static_cast<uint8_t>(pixel[c] * (1 - opacity) + kTint[c] * opacity + 0.5);
  }
}

}  // namespace

StatusOr<RgbImage> OverlaySelection(const RgbImage& image, const v1::SelectionSummary& summary) {
  const int grid = summary.grid();
  if (grid <= 0 || summary.steps() <= 0 || summary.region_side() < grid) {
    return InvalidArgumentError("the selection summary has no grid, steps or region");
  }
  const int blocks = grid * grid;
  // How many (layer, step) pairs selected each block.
  std::vector<uint32_t> selected(blocks, 0);
  for (const v1::FaLayerSelection& layer : summary.layers()) {
    if (layer.block_steps_size() != blocks) {
      return InvalidArgumentError("a layer of the selection summary has " +
                                  std::to_string(layer.block_steps_size()) +
                                  " blocks; the grid has " + std::to_string(blocks));
    }
    for (int b = 0; b < blocks; ++b) selected[b] += layer.block_steps(b);
  }
  // Selected by every layer at every step.
  const double most = static_cast<double>(summary.steps()) * std::max(1, summary.layers_size());
  RgbImage out = image;
  const int64_t x0 = summary.region_x(), y0 = summary.region_y(), side = summary.region_side();
  for (int row = 0; row < grid; ++row) {
    for (int col = 0; col < grid; ++col) {
      const uint32_t count = selected[row * grid + col];
      if (count == 0) continue;
      const double opacity = kMinOpacity + (kMaxOpacity - kMinOpacity) *
                                               std::min(1.0, (count - 1) / std::max(1.0, most - 1));
      // The block's pixels in the image, clipped: [left, right) x [top, bottom).
      const int left = static_cast<int>(std::max<int64_t>(0, x0 + col * side / grid));
      const int right =
          static_cast<int>(std::min<int64_t>(image.width, x0 + (col + 1) * side / grid));
      const int top = static_cast<int>(std::max<int64_t>(0, y0 + row * side / grid));
      const int bottom =
          static_cast<int>(std::min<int64_t>(image.height, y0 + (row + 1) * side / grid));
      for (int y = top; y < bottom; ++y) {
        for (int x = left; x < right; ++x) {
          const bool edge = x == left || x == right - 1 || y == top || y == bottom - 1;
          Blend(out, x, y, edge ? 1.0 : opacity);
        }
      }
    }
  }
  return out;
}

StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return InvalidArgumentError("the image has no pixels or a size that does not match them");
  }
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = PNG_FORMAT_RGB;
  // libpng's simplified API: the first call sizes the buffer, the second writes it.
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&png, nullptr, &size, 0, image.pixels.data(), 0, nullptr)) {
    return InternalError(std::string("libpng: ") + png.message);
  }
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&png, bytes.data(), &size, 0, image.pixels.data(), 0, nullptr)) {
    return InternalError(std::string("libpng: ") + png.message);
  }
  bytes.resize(size);
  return bytes;
}

}  // namespace flexvqa::client
