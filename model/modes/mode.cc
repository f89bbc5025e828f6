#include "model/modes/mode.h"

#include <ATen/ATen.h>

#include "model/nn/flop_counter.h"

namespace flexvqa {

Mode::Mode(const LlavaConfig& config, int zoom) : config_(config), zoom_(zoom) {
  PreprocessOptions& pre = preprocess_;
  pre.crop_size = config.crop_size > 0 ? config.crop_size : config.vision.image_size;
  pre.resize_shortest_edge =
      config.resize_shortest_edge > 0 ? config.resize_shortest_edge : pre.crop_size;
  pre.mean = config.image_mean;
  pre.std = config.image_std;
  pre.pad_to_square = config.image_aspect_ratio == "pad";
  if (zoom > 0) {
    // Two views: the CLIP processor's pipeline at Z x the tower's side (flex: mm_utils.py:166-182);
    // the LR view is derived from it (PreprocessFlexAttention).
    pre.crop_size = zoom * config.vision.image_size;
    pre.resize_shortest_edge = pre.crop_size;
  }
}

Status Mode::ValidateRequest(const GenerationRequest& request, ModeInput* /*input*/) const {
  if (request.selection_threshold) {
    return InvalidArgumentError(
        "selection_threshold applies to FlexAttention models only; this model's "
        "attention mode is '" +
        std::string(name()) + "'");
  }
  return Status::Ok();
}

Status Mode::PrepareImage(const RgbImage& image, ModeInput* input) const {
  if (zoom_ == 0) {
    FLEXVQA_ASSIGN_OR_RETURN(input->pixels, PreprocessLlava(image, preprocess_));
  } else {
    FLEXVQA_ASSIGN_OR_RETURN(
        TwoResolutionPixels views,
        PreprocessFlexAttention(image, preprocess_, config_.vision.image_size));
    input->pixels = std::move(views.low);
    input->highres_pixels = std::move(views.high);
  }
  input->image_width = image.width;
  input->image_height = image.height;
  return Status::Ok();
}

EncodedImages Mode::Encode(const ImageEncoder& encoder, const at::Tensor& pixels,
                           const at::Tensor& highres) const {
  if (zoom_ == 0) return {encoder.Encode(pixels), {}};
  const auto [lr, hr] = encoder.EncodeTwoResolutions(highres, pixels);
  return {lr, hr};
}

std::unique_ptr<SequenceState> Mode::BeginSequence(const SequenceStart& /*start*/) const {
  return std::make_unique<SequenceState>();
}

void Mode::AddVisionFlops(FlopCount* count) const {
  flexvqa::AddVisionFlops(config_, 1 + static_cast<int64_t>(zoom_) * zoom_, count);
}

void Mode::AddForwardFlops(SequenceState& /*state*/, int64_t start, int64_t length,
                           FlopCount::Phase phase, FlopCount* count) const {
  AddDecoderChunkFlops(config_.text, start, length, phase, count);
}

}  // namespace flexvqa
