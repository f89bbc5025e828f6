// DecodeImage against PIL's Image.open().convert('RGB') (fixtures from
// tests/fixtures/make_preprocess_fixture.py) and against hostile input: every refusal is
// INVALID_ARGUMENT with a message that says what was wrong.
#include "model/image/image_decode.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace flexvqa {
namespace {

using ::testing::HasSubstr;

std::string ReadFixture(const std::string& name) {
  std::ifstream in(std::string(FLEXVQA_SOURCE_DIR) + "/tests/fixtures/preprocess/" + name,
                   std::ios::binary);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint32_t Crc32(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::string BigEndian32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string PngChunk(const std::string& tag, const std::string& data) {
  return BigEndian32(static_cast<uint32_t>(data.size())) + tag + data +
         BigEndian32(Crc32(tag + data));
}

// A PNG signature and a valid IHDR (8-bit RGB) claiming the given size, then an empty IDAT and
// IEND.
std::string PngWithHeader(uint32_t width, uint32_t height) {
  const std::string ihdr =
      BigEndian32(width) + BigEndian32(height) + std::string("\x08\x02\0\0\0", 5);
  return std::string("\x89PNG\r\n\x1A\n", 8) + PngChunk("IHDR", ihdr) + PngChunk("IDAT", "") +
         PngChunk("IEND", "");
}

void ExpectInvalid(const StatusOr<RgbImage>& result, const std::string& substring) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << result.status().ToString();
  EXPECT_THAT(result.status().message(), HasSubstr(substring));
}

struct FixtureImage {
  const char* file;
  int width, height;
  int tolerance;
};

// Names the case in ctest's listing instead of dumping the struct's bytes.
void PrintTo(const FixtureImage& f, std::ostream* os) { *os << f.file; }

class ImageDecodeMatchesPil : public ::testing::TestWithParam<FixtureImage> {};

// PNG is lossless, so pixels must be identical. JPEG: PIL links the same libjpeg-turbo with the
// same settings (ISLOW DCT, fancy upsampling), so we measured 0 difference; 1 level is allowed for
// a libjpeg-turbo build whose SIMD upsampling rounds differently.
TEST_P(ImageDecodeMatchesPil, PixelsEqualPilConvertRgb) {
  const FixtureImage& f = GetParam();
  const StatusOr<RgbImage> image = DecodeImage(ReadFixture(f.file), "", ImageLimits());
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  ASSERT_EQ(image->width, f.width);
  ASSERT_EQ(image->height, f.height);
  const std::string expected = ReadFixture(std::string(f.file) + ".rgb");
  ASSERT_EQ(image->pixels.size(), expected.size());
  int max_diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(image->pixels[i] - static_cast<uint8_t>(expected[i])));
  }
  EXPECT_LE(max_diff, f.tolerance) << f.file;
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ImageDecodeMatchesPil,
    ::testing::Values(FixtureImage{"landscape_37x23.png", 37, 23, 0},
                      FixtureImage{"portrait_21x44.png", 21, 44, 0},
                      FixtureImage{"rgba_30x18.png", 30, 18, 0},  // Alpha dropped.
                      FixtureImage{"gray_9x5.png", 9, 5, 0},
                      FixtureImage{"gray1_17x3.png", 17, 3, 0}, FixtureImage{"la_8x6.png", 8, 6, 0},
                      FixtureImage{"palette_trns_11x7.png", 11, 7, 0},  // tRNS ignored.
                      FixtureImage{"rgb16_7x5.png", 7, 5, 0},
                      FixtureImage{"rgba16_7x5.png", 7, 5, 0},
                      FixtureImage{"gray16_6x4.png", 6, 4, 0},  // High byte (see script).
                      FixtureImage{"photo_64x48.jpg", 64, 48, 1},
                      FixtureImage{"gray_33x17.jpg", 33, 17, 1},
                      FixtureImage{"cmyk_24x16.jpg", 24, 16, 1}),  // Adobe-inverted CMYK.
    [](const ::testing::TestParamInfo<FixtureImage>& info) {
      std::string name = info.param.file;
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(ImageDecodeTest, MimeTypesAcceptedCaseInsensitively) {
  const std::string jpeg = ReadFixture("photo_64x48.jpg");
  const std::string png = ReadFixture("gray_9x5.png");
  EXPECT_TRUE(DecodeImage(jpeg, "image/jpeg", ImageLimits()).ok());
  EXPECT_TRUE(DecodeImage(jpeg, "image/jpg", ImageLimits()).ok());
  EXPECT_TRUE(DecodeImage(jpeg, "IMAGE/JPEG", ImageLimits()).ok());
  EXPECT_TRUE(DecodeImage(png, "image/png", ImageLimits()).ok());
}

TEST(ImageDecodeTest, EmptyRefused) { ExpectInvalid(DecodeImage("", "", ImageLimits()), "empty"); }

TEST(ImageDecodeTest, OverByteLimitRefused) {
  const std::string png = ReadFixture("landscape_37x23.png");
  ImageLimits limits;
  limits.max_encoded_bytes = static_cast<int64_t>(png.size()) - 1;
  ExpectInvalid(DecodeImage(png, "", limits),
                "limit is " + std::to_string(png.size() - 1) + " bytes");
  limits.max_encoded_bytes = static_cast<int64_t>(png.size());
  EXPECT_TRUE(DecodeImage(png, "", limits).ok());
}

TEST(ImageDecodeTest, UnsupportedFormatsNamed) {
  ExpectInvalid(DecodeImage("GIF89a\x01\0\x01\0", "", ImageLimits()), "GIF");
  ExpectInvalid(DecodeImage(std::string("RIFF\0\0\0\0WEBPVP8 ", 16), "", ImageLimits()), "WebP");
  ExpectInvalid(DecodeImage("BM\0\0\0\0", "", ImageLimits()), "BMP");
  const auto text = DecodeImage("What is in this picture?", "", ImageLimits());
  ExpectInvalid(text, "unrecognised data");
  EXPECT_THAT(text.status().message(), HasSubstr("image/png"));
}

TEST(ImageDecodeTest, UnknownMimeRefusedNamingWhatIsSupported) {
  const auto result = DecodeImage(ReadFixture("gray_9x5.png"), "image/gif", ImageLimits());
  ExpectInvalid(result, "\"image/gif\"");
  EXPECT_THAT(result.status().message(), HasSubstr("image/jpeg"));
}

TEST(ImageDecodeTest, MimeMismatchRefused) {
  const auto as_jpeg = DecodeImage(ReadFixture("gray_9x5.png"), "image/jpeg", ImageLimits());
  ExpectInvalid(as_jpeg, "does not match");
  EXPECT_THAT(as_jpeg.status().message(), HasSubstr("PNG"));
  ExpectInvalid(DecodeImage(ReadFixture("photo_64x48.jpg"), "image/png", ImageLimits()), "JPEG");
}

TEST(ImageDecodeTest, CorruptJpegRefused) {
  ExpectInvalid(DecodeImage(std::string("\xFF\xD8\xFF") + std::string(200, 'x'), "", ImageLimits()),
                "corrupt JPEG");
}

TEST(ImageDecodeTest, TruncatedJpegRefused) {
  const std::string jpeg = ReadFixture("photo_64x48.jpg");
  // Cut inside the entropy-coded data: the header reads fine, turbojpeg only warns.
  const size_t sos = jpeg.find("\xFF\xDA");
  ASSERT_NE(sos, std::string::npos);
  ExpectInvalid(DecodeImage(jpeg.substr(0, sos + 40), "", ImageLimits()), "truncated JPEG");
  ExpectInvalid(DecodeImage(jpeg.substr(0, jpeg.size() - 300), "", ImageLimits()),
                "truncated JPEG");
  // Cut inside the header.
  ExpectInvalid(DecodeImage(jpeg.substr(0, 100), "", ImageLimits()), "truncated JPEG");
}

TEST(ImageDecodeTest, CorruptPngRefused) {
  std::string png = ReadFixture("landscape_37x23.png");
  const size_t idat = png.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  png[idat + 20] ^= 0x55;  // Breaks the IDAT CRC.
  ExpectInvalid(DecodeImage(png, "", ImageLimits()), "corrupt PNG");
  ExpectInvalid(DecodeImage(PngWithHeader(0, 10), "", ImageLimits()), "PNG");  // Zero width.
}

TEST(ImageDecodeTest, TruncatedPngRefused) {
  const std::string png = ReadFixture("landscape_37x23.png");
  ExpectInvalid(DecodeImage(png.substr(0, png.size() / 2), "", ImageLimits()), "truncated PNG");
  ExpectInvalid(DecodeImage(png.substr(0, png.size() - 6), "", ImageLimits()), "truncated PNG");
  ExpectInvalid(DecodeImage(png.substr(0, 20), "", ImageLimits()), "truncated PNG");
}

// A 60000 x 60000 header (10.8 GB of RGB) must be refused from the header alone: the call returns
// at once, which it could not do had it allocated and filled the pixels.
TEST(ImageDecodeTest, HugePngHeaderRefusedBeforeAllocation) {
  const auto start = std::chrono::steady_clock::now();
  const auto result = DecodeImage(PngWithHeader(60000, 60000), "image/png", ImageLimits());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ExpectInvalid(result, "60000x60000 = 3600000000 pixels; the limit is 40000000 pixels");
  EXPECT_LT(seconds, 0.5);
}

TEST(ImageDecodeTest, HugeJpegHeaderRefusedBeforeAllocation) {
  std::string jpeg = ReadFixture("photo_64x48.jpg");
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  // SOF0: marker, length(2), precision(1), height(2), width(2).
  jpeg.replace(sof + 5, 4, std::string("\xEA\x60\xEA\x60", 4));
  ExpectInvalid(DecodeImage(jpeg, "", ImageLimits()), "60000x60000");
}

TEST(ImageDecodeTest, PixelLimitIsInclusive) {
  const std::string jpeg = ReadFixture("photo_64x48.jpg");
  ImageLimits limits;
  limits.max_pixels = 64 * 48;
  EXPECT_TRUE(DecodeImage(jpeg, "", limits).ok());
  limits.max_pixels = 64 * 48 - 1;
  ExpectInvalid(DecodeImage(jpeg, "", limits), "limit is 3071 pixels");
  const std::string png = ReadFixture("landscape_37x23.png");
  limits.max_pixels = 37 * 23 - 1;
  ExpectInvalid(DecodeImage(png, "", limits), "PNG image is 37x23");
}

}  // namespace
}  // namespace flexvqa
