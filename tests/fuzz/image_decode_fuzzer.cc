// DecodeImage on arbitrary bytes under small limits: never crashes, refuses with INVALID_ARGUMENT,
// and a decoded image respects the limits and has exactly width * height * 3 bytes. A decoded image
// also goes through the LLaVA preprocessing (PreprocessLlava), as the engine would.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The first byte picks the declared MIME type, so the mismatch checks run too.
  constexpr std::string_view kMimes[] = {"", "image/jpeg", "image/png", "IMAGE/JPG", "image/gif"};
  const std::string_view mime = kMimes[data[0] % (sizeof(kMimes) / sizeof(kMimes[0]))];
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  // Limits small enough for fuzz inputs (-max_len in tests/fuzz/CMakeLists.txt) to cross both, so
  // the checks made from the header, before any pixel memory, are what stops a large image.
  flexvqa::ImageLimits limits;
  limits.max_encoded_bytes = 8 << 10;
  limits.max_pixels = 64 * 64;
  const auto image = flexvqa::DecodeImage(bytes, mime, limits);
  if (!image.ok()) {
    FUZZ_CHECK(image.status().code() == flexvqa::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(image->width > 0 && image->height > 0);
  FUZZ_CHECK(static_cast<int64_t>(image->width) * image->height <= limits.max_pixels);
  FUZZ_CHECK(image->pixels.size() == static_cast<size_t>(image->width) * image->height * 3);
  flexvqa::PreprocessOptions options;
  options.resize_shortest_edge = 16;
  options.crop_size = 16;
  const auto pixels = flexvqa::PreprocessLlava(*image, options);
  FUZZ_CHECK(pixels.ok() && pixels->size() == 3u * 16 * 16);
  return 0;
}
