// LLaVA-1.5 preprocessing against LLaVA's own PIL pipeline (fixtures from
// tests/fixtures/make_preprocess_fixture.py), each step on its own, plus the antialiased bilinear
// resize against hand-computed values.
#include "model/image/image_preprocess.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace flexvqa {
namespace {

std::string ReadFixture(const std::string& name) {
  std::ifstream in(std::string(FLEXVQA_SOURCE_DIR) + "/tests/fixtures/preprocess/" + name,
                   std::ios::binary);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

RgbImage Decode(const std::string& file) {
  StatusOr<RgbImage> image = DecodeImage(ReadFixture(file), "", ImageLimits());
  EXPECT_TRUE(image.ok()) << file << ": " << image.status().ToString();
  return image.ok() ? std::move(image).value() : RgbImage();
}

// Pixel p at (x, y) = (x + 10 y, 2 x, 3 y) mod 256: every position distinguishable.
RgbImage Pattern(int width, int height) {
  RgbImage image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &image.pixels[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(x + 10 * y);
      p[1] = static_cast<uint8_t>(2 * x);
      p[2] = static_cast<uint8_t>(3 * y);
    }
  }
  return image;
}

const uint8_t* PixelAt(const RgbImage& image, int x, int y) {
  return &image.pixels[(static_cast<size_t>(y) * image.width + x) * 3];
}

TEST(ImagePreprocessTest, PaddingColorIsLlavaMeanColour) {
  const std::array<uint8_t, 3> color = PaddingColor(PreprocessOptions().mean);
  EXPECT_EQ(color, (std::array<uint8_t, 3>{122, 116, 104}));
}

TEST(ImagePreprocessTest, ViewSquareInvertsPadResizeAndCrop) {
  PreprocessOptions flex;  // FlexAttention's high-resolution view: pad, then 1008 x 1008.
  flex.resize_shortest_edge = flex.crop_size = 1008;
  auto expect = [](ImageSquare got, int x, int y, int side) {
    EXPECT_EQ(got.x, x);
    EXPECT_EQ(got.y, y);
    EXPECT_EQ(got.side, side);
  };
  expect(ViewSquare(300, 200, flex), 0, -50, 300);  // Bands of 50 px above and below.
  expect(ViewSquare(200, 301, flex), -50, 0, 301);  // expand2square's offset rounds down.
  expect(ViewSquare(640, 640, flex), 0, 0, 640);
  PreprocessOptions crop;  // No padding: the short side resized to 336, the centre cropped.
  crop.pad_to_square = false;
  expect(ViewSquare(400, 200, crop), 100, 0, 200);  // Resized to 672 x 336, cropped at x = 168.
  crop.crop_size = 168;                             // A crop inside the resized short side.
  expect(ViewSquare(200, 200, crop), 50, 50, 100);
  expect(ViewSquare(0, 10, flex), 0, 0, 0);
}

TEST(ImagePreprocessTest, ExpandToSquareCentresWithFloorOffsets) {
  const std::array<uint8_t, 3> bg = {1, 2, 3};
  // Landscape 5x2: side 5, pasted at y = (5 - 2) / 2 = 1, so one row above and two below.
  const RgbImage wide = ExpandToSquare(Pattern(5, 2), bg);
  ASSERT_EQ(wide.width, 5);
  ASSERT_EQ(wide.height, 5);
  const RgbImage src = Pattern(5, 2);
  for (int y = 0; y < 5; ++y) {
    for (int x = 0; x < 5; ++x) {
      const bool inside = y == 1 || y == 2;
      const uint8_t* want = inside ? PixelAt(src, x, y - 1) : bg.data();
      EXPECT_EQ(std::memcmp(PixelAt(wide, x, y), want, 3), 0) << x << "," << y;
    }
  }
  // Portrait 2x5: pasted at x = 1.
  const RgbImage tall = ExpandToSquare(Pattern(2, 5), bg);
  ASSERT_EQ(tall.width, 5);
  EXPECT_EQ(std::memcmp(PixelAt(tall, 0, 3), bg.data(), 3), 0);
  EXPECT_EQ(std::memcmp(PixelAt(tall, 1, 3), PixelAt(Pattern(2, 5), 0, 3), 3), 0);
  EXPECT_EQ(std::memcmp(PixelAt(tall, 3, 3), bg.data(), 3), 0);
  // Odd difference 44 - 21 = 23: left offset 11, as in the portrait fixture.
  const RgbImage portrait = ExpandToSquare(Pattern(21, 44), bg);
  EXPECT_EQ(std::memcmp(PixelAt(portrait, 10, 0), bg.data(), 3), 0);
  EXPECT_EQ(std::memcmp(PixelAt(portrait, 11, 0), PixelAt(Pattern(21, 44), 0, 0), 3), 0);
  EXPECT_EQ(std::memcmp(PixelAt(portrait, 31, 0), PixelAt(Pattern(21, 44), 20, 0), 3), 0);
  EXPECT_EQ(std::memcmp(PixelAt(portrait, 32, 0), bg.data(), 3), 0);
  // Square: unchanged.
  EXPECT_EQ(ExpandToSquare(Pattern(4, 4), bg).pixels, Pattern(4, 4).pixels);
}

TEST(ImagePreprocessTest, ShortestEdgeSizeTruncatesLikeTransformers) {
  EXPECT_EQ(ShortestEdgeResizeSize(37, 23, 32), (std::array<int, 2>{51, 32}));  // 51.47
  EXPECT_EQ(ShortestEdgeResizeSize(21, 44, 32), (std::array<int, 2>{32, 67}));  // 67.05
  EXPECT_EQ(ShortestEdgeResizeSize(50, 50, 336), (std::array<int, 2>{336, 336}));
}

TEST(ImagePreprocessTest, CenterCropUsesFloorOffsets) {
  const RgbImage crop = CenterCrop(Pattern(51, 32), 28, 28);  // left 23 / 2 = 11, top 4 / 2 = 2.
  ASSERT_EQ(crop.width, 28);
  EXPECT_EQ(std::memcmp(PixelAt(crop, 0, 0), PixelAt(Pattern(51, 32), 11, 2), 3), 0);
  EXPECT_EQ(std::memcmp(PixelAt(crop, 27, 27), PixelAt(Pattern(51, 32), 38, 29), 3), 0);
}

TEST(ImagePreprocessTest, ResizeKeepsConstantImagesAndSkipsIdentity) {
  RgbImage flat{50, 30, std::vector<uint8_t>(50 * 30 * 3, 200)};
  for (const auto& [w, h] : {std::array<int, 2>{336, 336}, {7, 5}, {50, 11}}) {
    const RgbImage out = ResizeBicubic(flat, w, h);
    ASSERT_EQ(out.pixels.size(), static_cast<size_t>(w) * h * 3);
    for (uint8_t v : out.pixels) ASSERT_EQ(v, 200);
  }
  EXPECT_EQ(ResizeBicubic(Pattern(9, 6), 9, 6).pixels, Pattern(9, 6).pixels);
}

struct PilCase {
  const char* name;
  const char* image;
  int resize, crop;
  bool pad, has_pixels;
};

void PrintTo(const PilCase& c, std::ostream* os) { *os << c.name; }

class ImagePreprocessMatchesPil : public ::testing::TestWithParam<PilCase> {};

// Our resize implements PIL's fixed-point algorithm step by step, so the uint8 images must be
// identical (measured: 0 levels everywhere). The normalised values are then the same float32
// operations transformers does, so they must agree to float rounding (measured: 0).
TEST_P(ImagePreprocessMatchesPil, ResizedAndNormalisedMatch) {
  const PilCase& c = GetParam();
  const RgbImage decoded = Decode(c.image);
  PreprocessOptions options;
  options.resize_shortest_edge = c.resize;
  options.crop_size = c.crop;
  options.pad_to_square = c.pad;
  const RgbImage square = c.pad ? ExpandToSquare(decoded, PaddingColor(options.mean)) : decoded;
  const auto [w, h] = ShortestEdgeResizeSize(square.width, square.height, c.resize);
  const RgbImage resized = ResizeBicubic(square, w, h);
  const std::string expected = ReadFixture(std::string(c.name) + ".resized.u8");
  ASSERT_EQ(resized.pixels.size(), expected.size());
  int max_diff = 0, mismatches = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const int d = std::abs(resized.pixels[i] - static_cast<uint8_t>(expected[i]));
    max_diff = std::max(max_diff, d);
    mismatches += d != 0;
  }
  EXPECT_EQ(max_diff, 0) << mismatches << " of " << expected.size() << " values differ";

  const StatusOr<std::vector<float>> pixels = PreprocessLlava(decoded, options);
  ASSERT_TRUE(pixels.ok()) << pixels.status().ToString();
  ASSERT_EQ(pixels->size(), static_cast<size_t>(3) * c.crop * c.crop);
  if (!c.has_pixels) return;
  const std::string want = ReadFixture(std::string(c.name) + ".pixel_values.f32");
  ASSERT_EQ(want.size(), pixels->size() * sizeof(float));
  std::vector<float> ref(pixels->size());
  std::memcpy(ref.data(), want.data(), want.size());  // Little-endian hosts only, like the server.
  float max_abs = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    max_abs = std::max(max_abs, std::fabs((*pixels)[i] - ref[i]));
  EXPECT_LE(max_abs, 1e-6f);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ImagePreprocessMatchesPil,
    ::testing::Values(PilCase{"landscape_s336", "landscape_37x23.png", 336, 336, true, true},
                      PilCase{"photo_s336", "photo_64x48.jpg", 336, 336, true, false},
                      PilCase{"landscape_s28", "landscape_37x23.png", 28, 28, true, true},
                      PilCase{"portrait_s28", "portrait_21x44.png", 28, 28, true, true},
                      PilCase{"rgba_s28", "rgba_30x18.png", 28, 28, true, true},
                      PilCase{"photo_s28", "photo_64x48.jpg", 28, 28, true, true},
                      PilCase{"landscape_nopad_s32c28", "landscape_37x23.png", 32, 28, false, true},
                      PilCase{"portrait_nopad_s32c28", "portrait_21x44.png", 32, 28, false, true}),
    [](const ::testing::TestParamInfo<PilCase>& info) { return std::string(info.param.name); });

TEST(ImagePreprocessTest, PreprocessRejectsBadOptions) {
  PreprocessOptions options;
  options.crop_size = 400;
  EXPECT_EQ(PreprocessLlava(Pattern(8, 8), options).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PreprocessLlava(RgbImage(), PreprocessOptions()).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ImageResizeBilinearTest, ConstantStaysConstant) {
  const std::vector<float> flat(3 * 1008 * 1008 / 16, -0.75f);  // [3, 252, 252]
  const std::vector<float> out = ResizeBilinearAntialiased(flat, 3, 252, 252, 84, 84);
  ASSERT_EQ(out.size(), 3u * 84 * 84);
  for (float v : out) ASSERT_NEAR(v, -0.75f, 1e-6f);
}

// 4 -> 2 (scale 2): the triangle is stretched to support 2. Output 0 is centred at 1.0 and takes
// inputs 0..2 with weights (0.75, 0.75, 0.25) / 1.75; output 1 at 3.0 takes 1..3 with
// (0.25, 0.75, 0.75) / 1.75. For x[r][c] = 10 r + c the result is 10 * rows + cols.
TEST(ImageResizeBilinearTest, DownsampleMatchesHandComputedWeights) {
  std::vector<float> in(2 * 4 * 4);
  for (int ch = 0; ch < 2; ++ch) {
    for (int r = 0; r < 4; ++r) {
      for (int c = 0; c < 4; ++c) in[(ch * 4 + r) * 4 + c] = (ch + 1) * (10.0f * r + c);
    }
  }
  const std::vector<float> out = ResizeBilinearAntialiased(in, 2, 4, 4, 2, 2);
  const double lo = (0.75 * 1 + 0.25 * 2) / 1.75, hi = (0.25 * 1 + 0.75 * 2 + 0.75 * 3) / 1.75;
  const double want[2][2] = {{10 * lo + lo, 10 * lo + hi}, {10 * hi + lo, 10 * hi + hi}};
  for (int ch = 0; ch < 2; ++ch) {
    for (int r = 0; r < 2; ++r) {
      for (int c = 0; c < 2; ++c) {
        EXPECT_NEAR(out[(ch * 2 + r) * 2 + c], (ch + 1) * want[r][c], 1e-5) << ch << r << c;
      }
    }
  }
}

// 1008 -> 336 along one axis (FlexAttention's downsample, scale 3, support 3): output 0 is centred
// at 1.5 and spans inputs 0..4 with weights (2/3, 1, 2/3, 1/3, 0) / (8/3).
TEST(ImageResizeBilinearTest, ThreeToOneEdgeWeights) {
  std::vector<float> in(1008);
  for (int i = 0; i < 1008; ++i) in[i] = static_cast<float>(i % 7);
  const std::vector<float> out = ResizeBilinearAntialiased(in, 1, 1, 1008, 1, 336);
  const double want0 = (2.0 / 3 * 0 + 1 * 1 + 2.0 / 3 * 2 + 1.0 / 3 * 3) / (8.0 / 3);
  EXPECT_NEAR(out[0], want0, 1e-6);
  // Interior output 1 (centre 4.5) spans 2..6 fully: weights (1/3, 2/3, 1, 2/3, 1/3) / 3.
  const double want1 = (1.0 / 3 * 2 + 2.0 / 3 * 3 + 4 + 2.0 / 3 * 5 + 1.0 / 3 * 6) / 3;
  EXPECT_NEAR(out[1], want1, 1e-6);
}

}  // namespace
}  // namespace flexvqa
