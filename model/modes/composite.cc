// composite: EE-MLLM-F as we read it (docs/modes.md). The image rows run no self-attention in any
// layer (their attention output is zero, so the block adds only the MLP) while their keys/values
// are cached as usual; text rows attend causally to everything before them, image rows included.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/modes/mode.h"
#include "model/nn/batched_attention.h"
#include "model/nn/flop_counter.h"

namespace flexvqa {
namespace {

// The positions [image_begin, image_begin + image_tokens) of the sequence that skip attention.
class CompositeState final : public SequenceState {
 public:
  CompositeState(int64_t begin, int64_t tokens) : image_begin(begin), image_tokens(tokens) {}
  const int64_t image_begin;
  const int64_t image_tokens;
};

class CompositeHooks final : public LayerHooks {
 public:
  explicit CompositeHooks(std::vector<const CompositeState*> states) : states_(std::move(states)) {}

  // Text rows attend causally to everything before them, image keys included: the plain batched
  // attention; the image rows' outputs are then zeroed. In decode no row is an image row, so the
  // step is exactly the plain decoder's.
  at::Tensor SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) override {
    const at::Tensor out = CausalAttention(layer, q, batch);  // [N, H, Dh]
    std::vector<uint8_t> image_row(batch.rows, 0);
    bool any = false;
    for (size_t ci = 0; ci < batch.chunks.size(); ++ci) {
      const ChunkSpan& c = batch.chunks[ci];
      const CompositeState& s = *states_[ci];
      const int64_t begin = std::clamp(s.image_begin - c.start, int64_t{0}, c.length);
      const int64_t end = std::clamp(s.image_begin + s.image_tokens - c.start, begin, c.length);
      for (int64_t r = begin; r < end; ++r) image_row[c.row_begin + r] = 1;
      any = any || end > begin;
    }
    if (!any) return out;
    // bool and uint8 have the same bytes; the copy leaves the host vector behind.
    const at::Tensor mask = at::from_blob(image_row.data(), {batch.rows, 1, 1}, at::kBool)
                                .to(q.device(), at::kBool, /*non_blocking=*/false, /*copy=*/true);
    return out.masked_fill(mask, 0);
  }

 private:
  std::vector<const CompositeState*> states_;
};

class CompositeMode final : public Mode {
 public:
  explicit CompositeMode(const LlavaConfig& config) : Mode(config, /*zoom=*/0) {}

  std::unique_ptr<SequenceState> BeginSequence(const SequenceStart& start) const override {
    // The image's rows are contiguous (one placeholder expanded in place).
    const int64_t tokens = start.image_begin < 0 ? 0 : image_tokens();
    return std::make_unique<CompositeState>(std::max<int64_t>(start.image_begin, 0), tokens);
  }

  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& batch,
                                    SlotPools* /*pools*/) const override {
    std::vector<const CompositeState*> states;
    for (SequenceState* s : batch) states.push_back(static_cast<const CompositeState*>(s));
    return std::make_unique<CompositeHooks>(std::move(states));
  }

  void AddForwardFlops(SequenceState& state, int64_t start, int64_t length, FlopCount::Phase phase,
                       FlopCount* count) const override {
    const auto& s = static_cast<const CompositeState&>(state);
    AddDecoderChunkFlops(config_.text, start, length, s.image_begin - start, s.image_tokens, phase,
                         count);
  }
};

}  // namespace

StatusOr<std::unique_ptr<Mode>> CreateCompositeMode(const LlavaConfig& config, const WeightLoader&,
                                                    at::ScalarType, at::Device) {
  return std::unique_ptr<Mode>(new CompositeMode(config));
}

}  // namespace flexvqa
