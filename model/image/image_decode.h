// DecodeImage: untrusted JPEG/PNG bytes -> 8-bit RGB pixels, as LLaVA's
// Image.open(...).convert('RGB'). Thread-safe and torch-free (the server calls it on a CPU pool).
// Limits are checked from the header before any pixel memory is allocated. Every refusal (empty,
// too large, unsupported format, mime mismatch, corrupt or truncated data) is INVALID_ARGUMENT with
// a message meant for the client.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "model/status.h"

namespace flexvqa {

struct ImageLimits {
  int64_t max_encoded_bytes = 20 << 20;  // Default: 20 MiB, as EngineLimits::max_image_bytes.
  int64_t max_pixels = 40'000'000;  // width * height. Default: as EngineLimits::max_image_pixels.
};

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3] RGB8, row-major, no padding.
};

// mime_type: image/jpeg, image/jpg or image/png (case-insensitive); empty: detected from the magic
// bytes. A non-empty mime_type must agree with the bytes. Alpha is dropped (not composited), as
// PIL's convert('RGB') does. CMYK/YCCK JPEGs are converted the way PIL converts them.
StatusOr<RgbImage> DecodeImage(std::string_view bytes, std::string_view mime_type,
                               const ImageLimits& limits);

}  // namespace flexvqa
