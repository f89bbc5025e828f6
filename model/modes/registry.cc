// CreateMode: one line per AttentionMode. The switch has no default, so a new enum value that is
// not registered here fails the build (-Wswitch) before it can fail a request.
#include "model/modes/mode.h"

namespace flexvqa {

// Each defined in model/modes/<name>.cc.
using ModeFactory = StatusOr<std::unique_ptr<Mode>> (*)(const LlavaConfig&, const WeightLoader&,
                                                        at::ScalarType, at::Device);
StatusOr<std::unique_ptr<Mode>> CreateFullMode(const LlavaConfig&, const WeightLoader&,
                                               at::ScalarType, at::Device);
StatusOr<std::unique_ptr<Mode>> CreateHdMode(const LlavaConfig&, const WeightLoader&,
                                             at::ScalarType, at::Device);
StatusOr<std::unique_ptr<Mode>> CreateXattnMode(const LlavaConfig&, const WeightLoader&,
                                                at::ScalarType, at::Device);
StatusOr<std::unique_ptr<Mode>> CreateFlexMode(const LlavaConfig&, const WeightLoader&,
                                               at::ScalarType, at::Device);
StatusOr<std::unique_ptr<Mode>> CreateCompositeMode(const LlavaConfig&, const WeightLoader&,
                                                    at::ScalarType, at::Device);
StatusOr<std::unique_ptr<Mode>> CreatePooledMode(const LlavaConfig&, const WeightLoader&,
                                                 at::ScalarType, at::Device);

namespace {

ModeFactory FactoryOf(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kFull:
      return CreateFullMode;
    case AttentionMode::kHd:
      return CreateHdMode;
    case AttentionMode::kXattn:
      return CreateXattnMode;
    case AttentionMode::kFlex:
      return CreateFlexMode;
    case AttentionMode::kComposite:
      return CreateCompositeMode;
    case AttentionMode::kPooled:
      return CreatePooledMode;
  }
  return nullptr;
}

}  // namespace

StatusOr<std::unique_ptr<Mode>> CreateMode(const LlavaConfig& config, const WeightLoader& weights,
                                           at::ScalarType dtype, at::Device device) {
  const ModeFactory factory = FactoryOf(config.mode.attention);
  if (factory == nullptr) {
    return InvalidArgumentError("no implementation of attention mode " +
                                std::to_string(static_cast<int>(config.mode.attention)));
  }
  FLEXVQA_ASSIGN_OR_RETURN(std::unique_ptr<Mode> mode, factory(config, weights, dtype, device));
  const int crop = mode->preprocess().crop_size;
  if (mode->zoom() == 0 && crop != config.vision.image_size) {
    return InvalidArgumentError("crop size " + std::to_string(crop) +
                                " differs from the vision tower's image size " +
                                std::to_string(config.vision.image_size));
  }
  return mode;
}

}  // namespace flexvqa
