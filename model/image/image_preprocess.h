// LLaVA-1.5 image preprocessing on the CPU, torch-free and thread-safe (pure functions):
// expand2square with the mean colour (llava/mm_utils.py), PIL's antialiased bicubic resize of the
// shortest edge, centre crop, /255 and mean/std normalisation as CLIPImageProcessor does, giving
// the float CHW tensor the vision tower takes. Resampling follows Pillow's libImaging/Resample.c.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "model/image/image_decode.h"
#include "model/status.h"

namespace flexvqa {

struct PreprocessOptions {
  int resize_shortest_edge =
      336;              // CLIPImageProcessor size["shortest_edge"]. Default: LLaVA-1.5 336px.
  int crop_size = 336;  // crop_size; must be <= the resized image's sides. Default: 336.
  // Default: CLIP's (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
  bool pad_to_square = true;  // image_aspect_ratio == "pad". Default: true (LLaVA-1.5).
};

// LLaVA's background colour: tuple(int(x * 255) for x in image_mean) = (122, 116, 104) for CLIP.
std::array<uint8_t, 3> PaddingColor(const std::array<float, 3>& mean);

// llava/mm_utils.py expand2square: pastes the image on a max(w, h) square of `background`, at
// ((side - w) / 2, (side - h) / 2) rounded down. A square image is returned unchanged.
RgbImage ExpandToSquare(const RgbImage& image, const std::array<uint8_t, 3>& background);

// PIL Image.resize(..., BICUBIC) on RGB8: separable a = -0.5 cubic, antialiased when downscaling,
// 22-bit fixed-point coefficients, horizontal pass then vertical, each rounded and clipped to
// uint8.
RgbImage ResizeBicubic(const RgbImage& image, int out_width, int out_height);

// transformers' get_resize_output_image_size(default_to_square=False): the short side becomes
// `size`, the long side int(size * long / short). Returns {width, height}.
std::array<int, 2> ShortestEdgeResizeSize(int width, int height, int size);

// transformers' center_crop: top = (h - crop_h) / 2, left = (w - crop_w) / 2, rounded down.
// Requires crop sizes <= the image's.
RgbImage CenterCrop(const RgbImage& image, int crop_width, int crop_height);

// Rescale by 1/255 and normalise in float32 exactly as transformers' rescale + normalize.
// Returns [3, height, width].
std::vector<float> NormalizeToChw(const RgbImage& image, const std::array<float, 3>& mean,
                                  const std::array<float, 3>& std);

// The square of the original width x height image that PreprocessLlava's output covers, in the
// original's pixels (the inverse of its pad, resize and crop, to the nearest pixel): x or y is
// negative when padding bands were added. For drawing where the model looked.
struct ImageSquare {
  int x = 0, y = 0, side = 0;
};
ImageSquare ViewSquare(int width, int height, const PreprocessOptions& options);

// The whole LLaVA-1.5 pipeline. Returns [3, crop_size, crop_size] floats. INVALID_ARGUMENT for an
// empty image or options that cannot be applied (non-positive sizes, crop larger than the resize).
StatusOr<std::vector<float>> PreprocessLlava(const RgbImage& image,
                                             const PreprocessOptions& options);

// torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False) on float
// planes [channels, in_height, in_width] -> [channels, out_height, out_width]: a triangle filter
// whose support widens with the downscale factor (PIL's BILINEAR on "F" images, without rounding).
std::vector<float> ResizeBilinearAntialiased(const std::vector<float>& planes, int channels,
                                             int in_height, int in_width, int out_height,
                                             int out_width);

// FlexAttention's two views of one image (llava_arch.py:205-225, flexattention.md §1): the LLaVA
// pipeline above at options.crop_size (the high-resolution side, 1008), and that NORMALISED tensor
// downsampled to low_size (336) with antialiased bilinear interpolation, as the reference's
// F.interpolate(..., mode="bilinear", antialias=True). Vanilla LLaVA instead resizes before
// normalising.
struct TwoResolutionPixels {
  std::vector<float> high;  // [3, crop_size, crop_size]
  std::vector<float> low;   // [3, low_size, low_size]
};
StatusOr<TwoResolutionPixels> PreprocessFlexAttention(const RgbImage& image,
                                                      const PreprocessOptions& options,
                                                      int low_size);

}  // namespace flexvqa
