// full: LLaVA-1.5 (docs/modes.md): the image at the tower's size, its s^2 projected patch tokens in
// the sequence at the placeholder, plain causal self-attention. Every part is Mode's default.
#include "model/modes/mode.h"

namespace flexvqa {
namespace {

class FullMode final : public Mode {
 public:
  explicit FullMode(const LlavaConfig& config) : Mode(config, /*zoom=*/0) {}
};

}  // namespace

StatusOr<std::unique_ptr<Mode>> CreateFullMode(const LlavaConfig& config, const WeightLoader&,
                                               at::ScalarType, at::Device) {
  return std::unique_ptr<Mode>(new FullMode(config));
}

}  // namespace flexvqa
