// The picture behind flexvqa_client --selection_png: the request's image with the blocks a
// FlexAttention model selected (GenerateFinal.selection) tinted and outlined, encoded as PNG with
// libpng. Pure functions; any thread. A summary whose arrays do not match its grid is
// INVALID_ARGUMENT.
#pragma once

#include <string>

#include "flexvqa/v1/vqa.pb.h"
#include "model/image/image_decode.h"
#include "model/status.h"

namespace flexvqa::client {

// Each block selected at least once (by any FA layer, at any step) is blended with red, at an
// opacity from 0.2 (selected once) to 0.6 (by every layer at every step), and outlined in red;
// every other pixel is the image's own. Blocks are placed by the summary's region, so padding
// bands (outside the image) are clipped away.
StatusOr<RgbImage> OverlaySelection(const RgbImage& image, const v1::SelectionSummary& summary);

// 8-bit RGB PNG bytes.
StatusOr<std::string> EncodePng(const RgbImage& image);

}  // namespace flexvqa::client
