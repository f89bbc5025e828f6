// xattn (docs/modes.md): CogAgent-style cross-attention from the decoder's hidden states (text
// and LR image rows) to an image's high-resolution features, as an extra residual sub-block after
// self-attention in every `xattn_every`-th layer. CrossAttentionWeights holds
// model.layers.{i}.cross_attn.* of those layers; a sequence's state is its HR keys/values (computed
// once at prefill, kept until Release, never per step); CrossAttention is the per-Forward hook.
// The image is prepared in two views (Z = xattn_zoom); only the LR tokens enter the sequence.
#include <ATen/ATen.h>

#include <cmath>

#include "model/modes/mode.h"
#include "model/nn/flop_counter.h"
#include "model/nn/layers.h"
#include "model/nn/torch_compat.h"

namespace flexvqa {
namespace {

// One request's cross-attention memory: per decoder layer (undefined where the layer has none),
// keys and values [Hc, M, Dc] of its M HR tokens.
class CrossKeyValues final : public SequenceState {
 public:
  std::vector<at::Tensor> keys, values;
  int64_t bytes() const override {
    int64_t total = 0;
    for (const auto* list : {&keys, &values}) {
      for (const at::Tensor& t : *list) total += t.defined() ? t.numel() * t.element_size() : 0;
    }
    return total;
  }
};

class CrossAttentionWeights {
 public:
  // Per cross-attending layer i: cross_attn_norm.weight [D], cross_attn.{q,o}_proj.weight [C, D] /
  // [D, C], cross_attn.{k,v}_proj.weight [C, D] (they read the projector's D-wide HR features).
  static StatusOr<std::unique_ptr<CrossAttentionWeights>> Load(const WeightLoader& weights,
                                                               const LlavaConfig& config,
                                                               at::ScalarType dtype,
                                                               at::Device device);

  // features [M, D]: the raw HR features (projector outputs of the tiles, stitched row-major).
  std::unique_ptr<CrossKeyValues> KeysAndValues(const at::Tensor& features) const;

  // The sub-block's residual for packed rows x [N, D] of `batch`; memory[c] is chunk c's (null or
  // empty: no image, the residual is zero). Returns [N, D], or an undefined tensor when `layer`
  // has no cross-attention or no sequence of the batch has an image. One attention call for the
  // whole batch.
  at::Tensor Residual(int layer, const at::Tensor& x, const DecoderBatch& batch,
                      const std::vector<const CrossKeyValues*>& memory) const;

 private:
  struct Layer {
    at::Tensor norm;     // [D]
    at::Tensor q_proj;   // [C, D]
    at::Tensor kv_proj;  // [2 C, D]: k and v fused.
    at::Tensor o_proj;   // [D, C]
  };
  std::vector<Layer> layers_;  // Per decoder layer; empty tensors where none.
  int64_t heads_ = 0, width_ = 0;
  double eps_ = 1e-6;
};

StatusOr<std::unique_ptr<CrossAttentionWeights>> CrossAttentionWeights::Load(
    const WeightLoader& weights, const LlavaConfig& config, at::ScalarType dtype,
    at::Device device) {
  auto w = std::unique_ptr<CrossAttentionWeights>(new CrossAttentionWeights());
  const int64_t d = config.text.hidden_size, c = config.mode.xattn_hidden;
  w->heads_ = config.mode.xattn_heads;
  w->width_ = c;
  w->eps_ = config.text.rms_norm_eps;
  w->layers_.resize(config.text.num_hidden_layers);
  for (int i = 0; i < config.text.num_hidden_layers; ++i) {
    if (!config.mode.cross_attends(i)) continue;
    const std::string p = "layers." + std::to_string(i) + ".";
    auto get = [&](const std::string& name, std::vector<int64_t> shape) {
      return weights.Get(WeightSection::kText, p + name, shape, dtype, device);
    };
    Layer& l = w->layers_[i];
    FLEXVQA_ASSIGN_OR_RETURN(l.norm, get("cross_attn_norm.weight", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(l.q_proj, get("cross_attn.q_proj.weight", {c, d}));
    FLEXVQA_ASSIGN_OR_RETURN(at::Tensor k, get("cross_attn.k_proj.weight", {c, d}));
    FLEXVQA_ASSIGN_OR_RETURN(at::Tensor v, get("cross_attn.v_proj.weight", {c, d}));
    FLEXVQA_ASSIGN_OR_RETURN(l.o_proj, get("cross_attn.o_proj.weight", {d, c}));
    l.kv_proj = at::cat({k, v}, 0);
  }
  return w;
}

std::unique_ptr<CrossKeyValues> CrossAttentionWeights::KeysAndValues(
    const at::Tensor& features) const {
  auto result = std::make_unique<CrossKeyValues>();
  CrossKeyValues& kv = *result;
  kv.keys.resize(layers_.size());
  kv.values.resize(layers_.size());
  const int64_t m = features.size(0), dc = width_ / heads_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].kv_proj.defined()) continue;
    // No norm on the features and no RoPE: CogAgent's cross-attention keys carry no positions.
    const at::Tensor both = Linear(features, layers_[i].kv_proj);  // [M, 2 C]
    kv.keys[i] = both.narrow(1, 0, width_)
                     .view({m, heads_, dc})
                     .transpose(0, 1)
                     .contiguous();  // [Hc, M, Dc]
    kv.values[i] =
        both.narrow(1, width_, width_).view({m, heads_, dc}).transpose(0, 1).contiguous();
  }
  return result;
}

at::Tensor CrossAttentionWeights::Residual(int layer, const at::Tensor& x,
                                           const DecoderBatch& batch,
                                           const std::vector<const CrossKeyValues*>& memory) const {
  const Layer& l = layers_[layer];
  if (!l.q_proj.defined()) return {};
  auto has_image = [&](int64_t i) {
    return i < static_cast<int64_t>(memory.size()) && memory[i] != nullptr &&
           !memory[i]->keys.empty();
  };
  const int64_t c = batch.sequences(), tq = batch.query_len;
  at::Tensor zeros;  // [Hc, M, Dc], for the sequences without an image and the padding.
  for (int64_t i = 0; i < c && !zeros.defined(); ++i) {
    if (has_image(i)) zeros = at::zeros_like(memory[i]->keys[layer]);
  }
  if (!zeros.defined()) return {};  // No image in the batch: every residual is zero.
  std::vector<at::Tensor> keys, values;
  for (int64_t i = 0; i < c; ++i) {
    // Zero values make a row's output exactly zero whatever its scores: no mask needed.
    keys.push_back(has_image(i) ? memory[i]->keys[layer] : zeros);
    values.push_back(has_image(i) ? memory[i]->values[layer] : zeros);
  }
  const int64_t n = x.size(0), dc = width_ / heads_;
  const at::Tensor q =
      Linear(RmsNorm(x, l.norm, eps_), l.q_proj).view({n, heads_, dc});  // [N, Hc, Dc]
  const at::Tensor padded = tq == 1 ? q : q.index_select(0, batch.pad_rows);
  const at::Tensor qc = padded.view({c, tq, heads_, dc}).transpose(1, 2);  // [C, Hc, Tq, Dc]
  const double scale = 1.0 / std::sqrt(static_cast<double>(dc));
  // Every row attends to every HR token of its sequence: no mask (causal_offset -1).
  at::Tensor out = Attention(qc, at::stack(keys), at::stack(values), scale, /*causal_offset=*/-1)
                       .transpose(1, 2)
                       .reshape({c * tq, width_});  // [C Tq, Hc Dc]
  if (tq != 1) out = out.index_select(0, batch.unpad_rows);
  return Linear(out, l.o_proj);  // [N, D]
}

// The hook for one Forward over chunks: the cross-attention residual after self-attention.
class CrossAttention final : public LayerHooks {
 public:
  CrossAttention(const CrossAttentionWeights& weights, std::vector<const CrossKeyValues*> memory)
      : weights_(weights), memory_(std::move(memory)) {}
  at::Tensor AfterSelfAttention(int layer, const at::Tensor& x,
                                const DecoderBatch& batch) override {
    return weights_.Residual(layer, x, batch, memory_);
  }

 private:
  const CrossAttentionWeights& weights_;
  std::vector<const CrossKeyValues*> memory_;
};

class XattnMode final : public Mode {
 public:
  XattnMode(const LlavaConfig& config, std::unique_ptr<CrossAttentionWeights> weights)
      : Mode(config, config.mode.xattn_zoom), weights_(std::move(weights)) {}

  // Encode's default keeps the raw HR features beside the sequence; they become its keys/values.
  std::unique_ptr<SequenceState> BeginSequence(const SequenceStart& start) const override {
    if (!start.highres.defined()) return std::make_unique<CrossKeyValues>();  // Text only.
    return weights_->KeysAndValues(start.highres);
  }

  Status DecodeCapturable() const override {
    return FailedPreconditionError(
        "xattn stacks each request's own HR keys/values per step (not a slot-indexed pool): a "
        "replay would read the captured requests' tensors");
  }

  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& batch) const override {
    std::vector<const CrossKeyValues*> memory;
    for (SequenceState* s : batch) memory.push_back(static_cast<const CrossKeyValues*>(s));
    return std::make_unique<CrossAttention>(*weights_, std::move(memory));
  }

  void AddForwardFlops(SequenceState& state, int64_t start, int64_t length, FlopCount::Phase phase,
                       FlopCount* count) const override {
    Mode::AddForwardFlops(state, start, length, phase, count);
    // Every row runs the q/o projections; only a sequence with an image attends to HR tokens.
    const bool image = !static_cast<const CrossKeyValues&>(state).keys.empty();
    const int64_t side =
        static_cast<int64_t>(zoom_) * (config_.vision.image_size / config_.vision.patch_size);
    const int64_t hr = image ? side * side : 0;
    AddCrossAttentionFlops(config_, length, hr, phase == FlopCount::kPrefill ? hr : 0, phase,
                           count);
  }

 private:
  std::unique_ptr<CrossAttentionWeights> weights_;
};

}  // namespace

StatusOr<std::unique_ptr<Mode>> CreateXattnMode(const LlavaConfig& config,
                                                const WeightLoader& weights, at::ScalarType dtype,
                                                at::Device device) {
  FLEXVQA_ASSIGN_OR_RETURN(auto cross, CrossAttentionWeights::Load(weights, config, dtype, device));
  return std::unique_ptr<Mode>(new XattnMode(config, std::move(cross)));
}

}  // namespace flexvqa
