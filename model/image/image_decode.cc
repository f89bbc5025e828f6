#include "model/image/image_decode.h"

#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cctype>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

namespace flexvqa {
namespace {

enum class ImageFormat { kUnknown, kJpeg, kPng };

constexpr char kSupported[] = "supported: image/jpeg (JPEG), image/png (PNG)";

ImageFormat DetectFormat(std::string_view b) {
  if (b.size() >= 3 && b.substr(0, 3) == std::string_view("\xFF\xD8\xFF", 3))
    return ImageFormat::kJpeg;
  if (b.size() >= 8 && b.substr(0, 8) == std::string_view("\x89PNG\r\n\x1A\n", 8)) {
    return ImageFormat::kPng;
  }
  return ImageFormat::kUnknown;
}

// Names formats we recognise but do not decode, so the client learns what it sent.
std::string DescribeUnknown(std::string_view b) {
  if (b.substr(0, 4) == "GIF8") return "GIF";
  if (b.size() >= 12 && b.substr(0, 4) == "RIFF" && b.substr(8, 4) == "WEBP") return "WebP";
  if (b.substr(0, 2) == "BM") return "BMP";
  if (b.substr(0, 4) == std::string_view("II*\0", 4) ||
      b.substr(0, 4) == std::string_view("MM\0*", 4)) {
    return "TIFF";
  }
  if (b.size() >= 12 && b.substr(4, 4) == "ftyp") return "HEIF/AVIF";
  std::string hex = "unrecognised data (first bytes:";
  for (size_t i = 0; i < std::min<size_t>(b.size(), 8); ++i) {
    char buf[4];
    std::snprintf(buf, sizeof(buf), " %02x", static_cast<unsigned char>(b[i]));
    hex += buf;
  }
  return hex + ")";
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Status CheckDimensions(const char* format, int64_t width, int64_t height,
                       const ImageLimits& limits) {
  if (width <= 0 || height <= 0) {
    return InvalidArgumentError(std::string(format) + " image has zero size (" +
                                std::to_string(width) + "x" + std::to_string(height) + ")");
  }
  if (width * height > limits.max_pixels) {
    return InvalidArgumentError(std::string(format) + " image is " + std::to_string(width) + "x" +
                                std::to_string(height) + " = " + std::to_string(width * height) +
                                " pixels; the limit is " + std::to_string(limits.max_pixels) +
                                " pixels: downscale it before sending");
  }
  return Status::Ok();
}

// --- JPEG
// -----------------------------------------------------------------------------------------

// PIL inverts CMYK JPEGs that carry an Adobe APP14 marker (Photoshop stores them inverted;
// JpegImagePlugin's "CMYK;I" rawmode). Walks the marker segments before the first scan.
bool HasAdobeMarker(std::string_view b) {
  size_t pos = 2;
  while (pos + 4 <= b.size() && static_cast<unsigned char>(b[pos]) == 0xFF) {
    const unsigned char marker = static_cast<unsigned char>(b[pos + 1]);
    if (marker == 0xDA || marker == 0xD9) break;  // SOS or EOI: no more headers.
    const size_t len =
        (static_cast<unsigned char>(b[pos + 2]) << 8) | static_cast<unsigned char>(b[pos + 3]);
    if (marker == 0xEE && len >= 7 && pos + 9 <= b.size() && b.substr(pos + 4, 5) == "Adobe")
      return true;
    pos += 2 + len;
  }
  return false;
}

// PIL's cmyk2rgb (libImaging/Convert.c): each channel is nk - c * nk / 255, nk = 255 - k, with
// PIL's rounding MULDIV255.
void CmykToRgb(const uint8_t* cmyk, int64_t count, bool inverted, uint8_t* rgb) {
  for (int64_t i = 0; i < count; ++i) {
    uint8_t v[4];
    for (int c = 0; c < 4; ++c) v[c] = inverted ? 255 - cmyk[4 * i + c] : cmyk[4 * i + c];
    const int nk = 255 - v[3];
    for (int c = 0; c < 3; ++c) {
      const int t = v[c] * nk + 128;
      const int out = nk - ((t + (t >> 8)) >> 8);
      rgb[3 * i + c] = static_cast<uint8_t>(std::clamp(out, 0, 255));
    }
  }
}

StatusOr<RgbImage> DecodeJpeg(std::string_view bytes, const ImageLimits& limits) {
  std::unique_ptr<void, int (*)(tjhandle)> tj(tjInitDecompress(), tjDestroy);
  if (!tj) return InternalError("cannot create a JPEG decompressor");
  auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const unsigned long size = static_cast<unsigned long>(bytes.size());
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj.get(), data, size, &width, &height, &subsamp, &colorspace) != 0) {
    return InvalidArgumentError(std::string("corrupt JPEG: cannot read its header (") +
                                tjGetErrorStr2(tj.get()) + ")");
  }
  // turbojpeg reports success with 0x0 when the data ends before the frame header (SOF).
  if (width == 0 && height == 0) {
    return InvalidArgumentError(
        "truncated JPEG: the data ends before the image header does; "
        "re-send the complete file");
  }
  FLEXVQA_RETURN_IF_ERROR(CheckDimensions("JPEG", width, height, limits));

  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  const int64_t count = static_cast<int64_t>(width) * height;
  RgbImage image;
  image.width = width;
  image.height = height;
  std::vector<uint8_t> cmyk_pixels;
  unsigned char* out = nullptr;
  if (cmyk) {
    cmyk_pixels.resize(static_cast<size_t>(count) * 4);
    out = cmyk_pixels.data();
  } else {
    image.pixels.resize(static_cast<size_t>(count) * 3);
    out = image.pixels.data();
  }
  // Flags 0: accurate integer DCT and fancy upsampling, PIL's defaults, so pixels match LLaVA's.
  if (tjDecompress2(tj.get(), data, size, out, width, 0, height, cmyk ? TJPF_CMYK : TJPF_RGB, 0) !=
      0) {
    const std::string message = tjGetErrorStr2(tj.get());
    if (tjGetErrorCode(tj.get()) == TJERR_FATAL) {
      return InvalidArgumentError("corrupt JPEG: " + message);
    }
    // A warning leaves a partly grey image. Benign warnings (extraneous bytes) are accepted as PIL
    // accepts them; missing data is refused as PIL refuses it (LOAD_TRUNCATED_IMAGES is off).
    if (Lower(message).find("premature end") != std::string::npos) {
      return InvalidArgumentError("truncated JPEG: the data ends before the image does (" +
                                  message + "); re-send the complete file");
    }
  }
  if (cmyk) {
    image.pixels.resize(static_cast<size_t>(count) * 3);
    CmykToRgb(cmyk_pixels.data(), count, HasAdobeMarker(bytes), image.pixels.data());
  }
  return image;
}

// --- PNG
// ------------------------------------------------------------------------------------------ libpng
// reports errors by longjmp. The functions that call setjmp (PngReadHeader, PngReadRows) keep only
// trivially destructible locals, and everything they touch is owned by the caller's PngReader, so a
// longjmp skips no destructor.

struct PngReader {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  bool hit_end = false;
  char error[256] = {};

  ~PngReader() {
    if (png != nullptr) png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr);
  }
};

void PngOnError(png_structp png, png_const_charp message) {
  auto* reader = static_cast<PngReader*>(png_get_error_ptr(png));
  std::snprintf(reader->error, sizeof(reader->error), "%s", message);
  png_longjmp(png, 1);
}

// Warnings (bad ancillary CRC, unknown chunk) do not stop decoding, as in PIL.
void PngOnWarning(png_structp, png_const_charp) {}

void PngRead(png_structp png, png_bytep out, size_t length) {
  auto* reader = static_cast<PngReader*>(png_get_io_ptr(png));
  if (length > reader->size - reader->pos) {
    reader->hit_end = true;
    png_error(png, "unexpected end of data");
  }
  std::memcpy(out, reader->data + reader->pos, length);
  reader->pos += length;
}

// Reads the header and sets up the conversion to RGB8. Returns false when libpng failed.
bool PngReadHeader(PngReader* r, const ImageLimits* limits, png_uint_32* width,
                   png_uint_32* height) {
  if (setjmp(png_jmpbuf(r->png))) return false;
  // Defence in depth: per-side limits and a cap on what one ancillary chunk may allocate.
  const png_uint_32 side =
      static_cast<png_uint_32>(std::clamp<int64_t>(limits->max_pixels, 1, 0x7fffffff));
  png_set_user_limits(r->png, side, side);
  png_set_chunk_malloc_max(r->png, 8 << 20);
  png_set_read_fn(r->png, r, PngRead);
  png_read_info(r->png, r->info);
  *width = png_get_image_width(r->png, r->info);
  *height = png_get_image_height(r->png, r->info);
  const int color_type = png_get_color_type(r->png, r->info);
  // To RGB8 the way PIL's convert('RGB') gets there: the palette is looked up, grey is replicated,
  // 16-bit samples keep their high byte (PIL's ";16B" rawmodes), and alpha, from an alpha channel
  // or a tRNS chunk, is dropped rather than composited.
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r->png);
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) {
    png_set_expand_gray_1_2_4_to_8(r->png);
    png_set_gray_to_rgb(r->png);
  }
  png_set_strip_16(r->png);
  png_set_strip_alpha(r->png);
  png_set_interlace_handling(r->png);
  png_read_update_info(r->png, r->info);
  return true;
}

bool PngReadRows(PngReader* r, png_bytepp rows) {
  if (setjmp(png_jmpbuf(r->png))) return false;
  png_read_image(r->png, rows);
  png_read_end(r->png, nullptr);  // Checks the rest of the stream: a cut-off file is refused.
  return true;
}

Status PngFailure(const PngReader& r, const ImageLimits& limits) {
  if (std::strstr(r.error, "user limit") != nullptr) {  // From png_set_user_limits.
    return InvalidArgumentError("PNG image is larger than the limit of " +
                                std::to_string(limits.max_pixels) + " pixels (" + r.error + ")");
  }
  if (r.hit_end) {
    return InvalidArgumentError(
        std::string("truncated PNG: the data ends before the image does (") + r.error +
        "); re-send the complete file");
  }
  return InvalidArgumentError(std::string("corrupt PNG: ") + r.error);
}

StatusOr<RgbImage> DecodePng(std::string_view bytes, const ImageLimits& limits) {
  PngReader r;
  r.data = reinterpret_cast<const unsigned char*>(bytes.data());
  r.size = bytes.size();
  r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, PngOnError, PngOnWarning);
  if (r.png == nullptr) return InternalError("cannot create a PNG decoder");
  r.info = png_create_info_struct(r.png);
  if (r.info == nullptr) return InternalError("cannot create a PNG decoder");

  png_uint_32 width = 0, height = 0;
  if (!PngReadHeader(&r, &limits, &width, &height)) return PngFailure(r, limits);
  FLEXVQA_RETURN_IF_ERROR(CheckDimensions("PNG", width, height, limits));
  if (png_get_channels(r.png, r.info) != 3 || png_get_bit_depth(r.png, r.info) != 8 ||
      png_get_rowbytes(r.png, r.info) != static_cast<size_t>(width) * 3) {
    return InternalError("PNG conversion to RGB8 produced an unexpected layout");
  }
  RgbImage image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  std::vector<png_bytep> rows(height);
  for (png_uint_32 y = 0; y < height; ++y)
    rows[y] = image.pixels.data() + static_cast<size_t>(y) * width * 3;
  if (!PngReadRows(&r, rows.data())) return PngFailure(r, limits);
  return image;
}

}  // namespace

StatusOr<RgbImage> DecodeImage(std::string_view bytes, std::string_view mime_type,
                               const ImageLimits& limits) {
  if (bytes.empty())
    return InvalidArgumentError("image is empty (0 bytes); send a JPEG or PNG file");
  if (static_cast<int64_t>(bytes.size()) > limits.max_encoded_bytes) {
    return InvalidArgumentError("image is " + std::to_string(bytes.size()) +
                                " bytes; the limit is " + std::to_string(limits.max_encoded_bytes) +
                                " bytes");
  }
  ImageFormat declared = ImageFormat::kUnknown;
  if (!mime_type.empty()) {
    const std::string mime = Lower(mime_type);
    if (mime == "image/jpeg" || mime == "image/jpg") {
      declared = ImageFormat::kJpeg;
    } else if (mime == "image/png") {
      declared = ImageFormat::kPng;
    } else {
      return InvalidArgumentError("unsupported mime_type \"" + std::string(mime_type) + "\"; " +
                                  kSupported + ", or leave it empty to detect from the bytes");
    }
  }
  const ImageFormat actual = DetectFormat(bytes);
  if (actual == ImageFormat::kUnknown) {
    return InvalidArgumentError("unsupported image format: " + DescribeUnknown(bytes) + "; " +
                                kSupported);
  }
  if (declared != ImageFormat::kUnknown && declared != actual) {
    return InvalidArgumentError("mime_type \"" + std::string(mime_type) +
                                "\" does not match the data, " + "which is " +
                                (actual == ImageFormat::kJpeg ? "JPEG" : "PNG") +
                                "; send the matching mime_type or leave it empty");
  }
  return actual == ImageFormat::kJpeg ? DecodeJpeg(bytes, limits) : DecodePng(bytes, limits);
}

}  // namespace flexvqa
