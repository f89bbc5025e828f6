// composite: EE-MLLM-F as we read it (docs/modes.md). The image rows run no self-attention in any
// layer (their attention output is zero, so the block adds only the MLP) while their keys/values
// are cached as usual; text rows attend causally to everything before them, image rows included.
#include <ATen/ATen.h>

#include <algorithm>

#include "model/modes/mode.h"
#include "model/nn/flop_counter.h"
#include "model/nn/torch_compat.h"

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

  at::Tensor SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) override {
    std::vector<at::Tensor> outputs;
    for (size_t ci = 0; ci < batch.chunks.size(); ++ci) {
      const ChunkSpan& c = batch.chunks[ci];
      const CompositeState& s = *states_[ci];
      // Rows [skip_begin, skip_end) of the chunk (its image tokens) attend to nothing.
      const int64_t skip_begin = std::clamp(s.image_begin - c.start, int64_t{0}, c.length);
      const int64_t skip_end =
          std::clamp(s.image_begin + s.image_tokens - c.start, skip_begin, c.length);
      if (skip_end == skip_begin) {
        outputs.push_back(CausalChunkAttention(layer, q, batch, ci));
        continue;
      }
      const auto [keys, values] = ChunkKeysValues(layer, batch, ci);  // [H, total, Dh]
      const at::Tensor qc = q.narrow(1, c.row_begin, c.length);       // [H, T, Dh]
      at::Tensor out = at::zeros_like(qc);
      if (skip_begin > 0) {  // Rows before the image: causal over the keys up to theirs.
        const int64_t seen = c.start + skip_begin;
        out.narrow(1, 0, skip_begin)
            .copy_(Attention(qc.narrow(1, 0, skip_begin), keys.narrow(1, 0, seen),
                             values.narrow(1, 0, seen), batch.scale, c.start));
      }
      if (skip_end < c.length) {  // Rows after it: causal over everything, image keys included.
        out.narrow(1, skip_end, c.length - skip_end)
            .copy_(Attention(qc.narrow(1, skip_end, c.length - skip_end), keys, values, batch.scale,
                             c.start + skip_end));
      }
      outputs.push_back(out);
    }
    return at::cat(outputs, 1);  // [H, N, Dh]
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

  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& batch) const override {
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
