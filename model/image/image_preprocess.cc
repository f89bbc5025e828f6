#include "model/image/image_preprocess.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace flexvqa {
namespace {

// Pillow libImaging/Resample.c filters. BICUBIC uses Keys' cubic with a = -0.5 (support 2),
// BILINEAR the triangle (support 1).
double BicubicFilter(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

double TriangleFilter(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Per output pixel: the first input pixel `start`, and the normalised weights of the `count` input
// pixels from there (stored with stride `ksize`).
struct ResampleCoeffs {
  int ksize = 0;
  std::vector<int> start, count;
  std::vector<double> weights;  // [out_size, ksize]
};

// Resample.c precompute_coeffs: when downscaling by `scale` the filter is stretched by it (that is
// the antialiasing); the window is [center - support, center + support) rounded, clipped to the
// image, and the weights are normalised to sum to 1 over the clipped window.
ResampleCoeffs PrecomputeCoeffs(int in_size, int out_size, double (*filter)(double),
                                double support) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  support *= filterscale;
  ResampleCoeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.start.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = filter((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    if (total != 0.0) {
      for (int x = 0; x < xmax; ++x) k[x] /= total;
    }
    c.start[xx] = xmin;
    c.count[xx] = std::max(xmax, 0);
  }
  return c;
}

// Resample.c's 8-bit path: coefficients in fixed point with PRECISION_BITS = 32 - 8 - 2 (room for
// 8-bit pixels, the sign and overshoot), rounded half away from zero.
constexpr int kPrecisionBits = 32 - 8 - 2;

std::vector<int32_t> FixedPointCoeffs(const ResampleCoeffs& c) {
  std::vector<int32_t> fixed(c.weights.size());
  for (size_t i = 0; i < c.weights.size(); ++i) {
    const double w = c.weights[i] * (1 << kPrecisionBits);
    fixed[i] = static_cast<int32_t>(w < 0 ? w - 0.5 : w + 0.5);
  }
  return fixed;
}

// Starts from one half for rounding; clip8 takes the integer part and clamps to [0, 255].
uint8_t Clip8(int32_t acc) {
  if (acc <= 0) return 0;
  if (acc >= (256 << kPrecisionBits)) return 255;
  return static_cast<uint8_t>(acc >> kPrecisionBits);
}

RgbImage ResampleHorizontal(const RgbImage& in, int out_width) {
  const ResampleCoeffs c = PrecomputeCoeffs(in.width, out_width, BicubicFilter, 2.0);
  const std::vector<int32_t> k = FixedPointCoeffs(c);
  RgbImage out{out_width, in.height,
               std::vector<uint8_t>(static_cast<size_t>(out_width) * in.height * 3)};
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = &in.pixels[static_cast<size_t>(y) * in.width * 3];
    uint8_t* dst = &out.pixels[static_cast<size_t>(y) * out_width * 3];
    for (int xx = 0; xx < out_width; ++xx) {
      const int32_t* kx = &k[static_cast<size_t>(xx) * c.ksize];
      for (int ch = 0; ch < 3; ++ch) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < c.count[xx]; ++x) acc += row[(c.start[xx] + x) * 3 + ch] * kx[x];
        dst[xx * 3 + ch] = Clip8(acc);
      }
    }
  }
  return out;
}

RgbImage ResampleVertical(const RgbImage& in, int out_height) {
  const ResampleCoeffs c = PrecomputeCoeffs(in.height, out_height, BicubicFilter, 2.0);
  const std::vector<int32_t> k = FixedPointCoeffs(c);
  const size_t stride = static_cast<size_t>(in.width) * 3;
  RgbImage out{in.width, out_height, std::vector<uint8_t>(stride * out_height)};
  for (int yy = 0; yy < out_height; ++yy) {
    const int32_t* ky = &k[static_cast<size_t>(yy) * c.ksize];
    for (size_t i = 0; i < stride; ++i) {
      int32_t acc = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < c.count[yy]; ++y)
        acc += in.pixels[(c.start[yy] + y) * stride + i] * ky[y];
      out.pixels[yy * stride + i] = Clip8(acc);
    }
  }
  return out;
}

// One pass of the float path (Resample.c's 32bpc loops, weights kept in double): resamples the
// middle axis of data laid out [outer, in_size, inner] into [outer, out_size, inner].
void ResampleFloatAxis(const float* in, float* out, int outer, int inner, int in_size, int out_size,
                       const ResampleCoeffs& c) {
  for (int o = 0; o < outer; ++o) {
    const float* src = in + static_cast<size_t>(o) * in_size * inner;
    float* dst = out + static_cast<size_t>(o) * out_size * inner;
    for (int xx = 0; xx < out_size; ++xx) {
      const double* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      for (int i = 0; i < inner; ++i) {
        double acc = 0.0;
        for (int x = 0; x < c.count[xx]; ++x) {
          acc += src[static_cast<size_t>(c.start[xx] + x) * inner + i] * k[x];
        }
        dst[static_cast<size_t>(xx) * inner + i] = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace

std::array<uint8_t, 3> PaddingColor(const std::array<float, 3>& mean) {
  std::array<uint8_t, 3> color{};
  for (int c = 0; c < 3; ++c) {
    // Python's int() truncates; the mean arrives as a double there, hence the widening first.
    color[c] = static_cast<uint8_t>(
        std::clamp(static_cast<int>(static_cast<double>(mean[c]) * 255), 0, 255));
  }
  return color;
}

RgbImage ExpandToSquare(const RgbImage& image, const std::array<uint8_t, 3>& background) {
  if (image.width == image.height) return image;
  const int side = std::max(image.width, image.height);
  RgbImage out{side, side, std::vector<uint8_t>(static_cast<size_t>(side) * side * 3)};
  for (size_t i = 0; i < out.pixels.size(); i += 3) {
    std::copy(background.begin(), background.end(), out.pixels.begin() + i);
  }
  const int left = (side - image.width) / 2;
  const int top = (side - image.height) / 2;
  const size_t row_bytes = static_cast<size_t>(image.width) * 3;
  for (int y = 0; y < image.height; ++y) {
    std::copy_n(image.pixels.begin() + y * row_bytes, row_bytes,
                out.pixels.begin() + (static_cast<size_t>(top + y) * side + left) * 3);
  }
  return out;
}

RgbImage ResizeBicubic(const RgbImage& image, int out_width, int out_height) {
  // Like Image.resize, a pass whose size does not change is skipped (it would be the identity).
  RgbImage out = image;
  if (out_width != image.width) out = ResampleHorizontal(out, out_width);
  if (out_height != image.height) out = ResampleVertical(out, out_height);
  return out;
}

std::array<int, 2> ShortestEdgeResizeSize(int width, int height, int size) {
  const int short_side = std::min(width, height);
  const int long_side = std::max(width, height);
  const int new_long = static_cast<int>(static_cast<double>(size) * long_side / short_side);
  return width <= height ? std::array<int, 2>{size, new_long} : std::array<int, 2>{new_long, size};
}

RgbImage CenterCrop(const RgbImage& image, int crop_width, int crop_height) {
  const int top = (image.height - crop_height) / 2;
  const int left = (image.width - crop_width) / 2;
  RgbImage out{crop_width, crop_height,
               std::vector<uint8_t>(static_cast<size_t>(crop_width) * crop_height * 3)};
  const size_t row_bytes = static_cast<size_t>(crop_width) * 3;
  for (int y = 0; y < crop_height; ++y) {
    std::copy_n(image.pixels.begin() + (static_cast<size_t>(top + y) * image.width + left) * 3,
                row_bytes, out.pixels.begin() + y * row_bytes);
  }
  return out;
}

std::vector<float> NormalizeToChw(const RgbImage& image, const std::array<float, 3>& mean,
                                  const std::array<float, 3>& std) {
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  std::vector<float> out(plane * 3);
  for (int c = 0; c < 3; ++c) {
    for (size_t i = 0; i < plane; ++i) {
      // transformers' rescale multiplies in float64 and casts to float32; normalize is float32.
      const float x = static_cast<float>(image.pixels[i * 3 + c] * (1.0 / 255.0));
      out[c * plane + i] = (x - mean[c]) / std[c];
    }
  }
  return out;
}

ImageSquare ViewSquare(int width, int height, const PreprocessOptions& options) {
  if (width <= 0 || height <= 0 || options.resize_shortest_edge <= 0) return {};
  // The pipeline's geometry without its pixels: expand2square's paste offset, the resize's scale,
  // CenterCrop's corner.
  int pad_x = 0, pad_y = 0, w = width, h = height;
  if (options.pad_to_square && width != height) {
    const int side = std::max(width, height);
    pad_x = (side - width) / 2;
    pad_y = (side - height) / 2;
    w = h = side;
  }
  const auto [resized_w, resized_h] = ShortestEdgeResizeSize(w, h, options.resize_shortest_edge);
  const double scale = static_cast<double>(std::min(w, h)) / options.resize_shortest_edge;
  const int left = (resized_w - options.crop_size) / 2;
  const int top = (resized_h - options.crop_size) / 2;
  ImageSquare out;
  out.x = static_cast<int>(std::lround(left * scale)) - pad_x;
  out.y = static_cast<int>(std::lround(top * scale)) - pad_y;
  out.side = static_cast<int>(std::lround(options.crop_size * scale));
  return out;
}

StatusOr<std::vector<float>> PreprocessLlava(const RgbImage& image,
                                             const PreprocessOptions& options) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return InvalidArgumentError("image has no pixels or a size that does not match its buffer");
  }
  if (options.resize_shortest_edge <= 0 || options.crop_size <= 0 ||
      options.crop_size > options.resize_shortest_edge) {
    return InvalidArgumentError("preprocessing needs 0 < crop_size (" +
                                std::to_string(options.crop_size) + ") <= resize_shortest_edge (" +
                                std::to_string(options.resize_shortest_edge) + ")");
  }
  RgbImage square =
      options.pad_to_square ? ExpandToSquare(image, PaddingColor(options.mean)) : image;
  const auto [w, h] =
      ShortestEdgeResizeSize(square.width, square.height, options.resize_shortest_edge);
  const RgbImage resized = ResizeBicubic(square, w, h);
  const RgbImage cropped = CenterCrop(resized, options.crop_size, options.crop_size);
  return NormalizeToChw(cropped, options.mean, options.std);
}

std::vector<float> ResizeBilinearAntialiased(const std::vector<float>& planes, int channels,
                                             int in_height, int in_width, int out_height,
                                             int out_width) {
  // Width first, then height, as PIL does; torch's CPU kernel is separable the same way.
  const ResampleCoeffs cw = PrecomputeCoeffs(in_width, out_width, TriangleFilter, 1.0);
  const ResampleCoeffs ch = PrecomputeCoeffs(in_height, out_height, TriangleFilter, 1.0);
  std::vector<float> tmp(static_cast<size_t>(channels) * in_height * out_width);
  ResampleFloatAxis(planes.data(), tmp.data(), channels * in_height, 1, in_width, out_width, cw);
  std::vector<float> out(static_cast<size_t>(channels) * out_height * out_width);
  ResampleFloatAxis(tmp.data(), out.data(), channels, out_width, in_height, out_height, ch);
  return out;
}

StatusOr<TwoResolutionPixels> PreprocessFlexAttention(const RgbImage& image,
                                                      const PreprocessOptions& options,
                                                      int low_size) {
  if (low_size <= 0 || low_size > options.crop_size) {
    return InvalidArgumentError("the low-resolution side must be in (0, crop_size]");
  }
  TwoResolutionPixels out;
  FLEXVQA_ASSIGN_OR_RETURN(out.high, PreprocessLlava(image, options));
  out.low = ResizeBilinearAntialiased(out.high, 3, options.crop_size, options.crop_size, low_size,
                                      low_size);
  return out;
}

}  // namespace flexvqa
