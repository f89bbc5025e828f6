// OverlaySelection + EncodePng: the PNG decodes to the image's size, selected blocks (placed by the
// summary's region, padding bands clipped) differ from the image, every other pixel is unchanged;
// malformed summaries are refused.
#include "client/selection_overlay.h"

#include <gtest/gtest.h>

namespace flexvqa::client {
namespace {

RgbImage Gradient(int width, int height) {
  RgbImage image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = image.pixels.data() + (static_cast<size_t>(y) * width + x) * 3;
      p[0] = static_cast<uint8_t>(x);
      p[1] = static_cast<uint8_t>(y);
      p[2] = 200;
    }
  }
  return image;
}

// 2 FA layers, 3 steps; a 90 x 60 image padded to a 90 px square (15 px bands): blocks of 10 px,
// row r covering image rows [-15 + 10 r, -5 + 10 r).
v1::SelectionSummary Summary() {
  v1::SelectionSummary summary;
  summary.set_grid(9);
  summary.set_hr_side(36);
  summary.set_steps(3);
  summary.set_region_x(0);
  summary.set_region_y(-15);
  summary.set_region_side(90);
  for (int layer = 0; layer < 2; ++layer) {
    v1::FaLayerSelection* l = summary.add_layers();
    for (int b = 0; b < 81; ++b) l->add_block_steps(0);
  }
  summary.mutable_layers(0)->set_block_steps(4 * 9 + 4,
                                             3);  // Centre: rows [25, 35), cols [40, 50).
  summary.mutable_layers(1)->set_block_steps(1 * 9 + 0,
                                             1);  // Rows [-5, 5) -> [0, 5), cols [0, 10).
  summary.mutable_layers(1)->set_block_steps(0 * 9 + 8, 2);  // Rows [-15, -5): in the band only.
  return summary;
}

bool InBlock(int x, int y) { return (x >= 40 && x < 50 && y >= 25 && y < 35) || (x < 10 && y < 5); }

TEST(SelectionOverlayTest, PngHasTheImageSizeAndDiffersExactlyOnSelectedBlocks) {
  const RgbImage image = Gradient(90, 60);
  auto overlaid = OverlaySelection(image, Summary());
  ASSERT_TRUE(overlaid.ok()) << overlaid.status().ToString();
  auto png = EncodePng(*overlaid);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  auto decoded = DecodeImage(*png, "image/png", ImageLimits());
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, 90);
  EXPECT_EQ(decoded->height, 60);
  EXPECT_EQ(decoded->pixels, overlaid->pixels);  // Lossless.
  int changed = 0;
  for (int y = 0; y < 60; ++y) {
    for (int x = 0; x < 90; ++x) {
      const size_t at = (static_cast<size_t>(y) * 90 + x) * 3;
      const bool same = std::equal(image.pixels.begin() + at, image.pixels.begin() + at + 3,
                                   decoded->pixels.begin() + at);
      EXPECT_EQ(same, !InBlock(x, y)) << x << "," << y;
      if (!same) {
        ++changed;
        EXPECT_GT(decoded->pixels[at], image.pixels[at]) << "tinted red at " << x << "," << y;
      }
    }
  }
  EXPECT_EQ(changed, 10 * 10 + 10 * 5);
  // More steps, stronger tint: the centre (3 of 6 layer-steps) is redder inside than the corner
  // (1).
  const size_t centre = (static_cast<size_t>(30) * 90 + 45) * 3, corner = (2 * 90 + 5) * 3;
  EXPECT_GT(decoded->pixels[centre] - image.pixels[centre],
            decoded->pixels[corner] - image.pixels[corner]);
}

TEST(SelectionOverlayTest, MalformedSummariesAndImagesAreRefused) {
  const RgbImage image = Gradient(90, 60);
  v1::SelectionSummary short_layer = Summary();
  short_layer.mutable_layers(1)->mutable_block_steps()->RemoveLast();
  EXPECT_EQ(OverlaySelection(image, short_layer).status().code(), StatusCode::kInvalidArgument);
  v1::SelectionSummary no_grid = Summary();
  no_grid.set_grid(0);
  EXPECT_EQ(OverlaySelection(image, no_grid).status().code(), StatusCode::kInvalidArgument);
  v1::SelectionSummary no_steps = Summary();
  no_steps.set_steps(0);
  EXPECT_EQ(OverlaySelection(image, no_steps).status().code(), StatusCode::kInvalidArgument);
  RgbImage broken = image;
  broken.pixels.pop_back();
  EXPECT_EQ(EncodePng(broken).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flexvqa::client
