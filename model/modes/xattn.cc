// xattn (docs/modes.md): CogAgent-style cross-attention from the decoder's hidden states (text
// and LR image rows) to an image's high-resolution features, as an extra residual sub-block after
// self-attention in every `xattn_every`-th layer. CrossAttentionWeights holds
// model.layers.{i}.cross_attn.* of those layers; CrossSlotPools every slot's HR keys/values on the
// device (computed once at prefill into the sequence's slot, never per step, read by slot index:
// no per-step stacking of per-request tensors); CrossAttention is the per-Forward hook.
// The image is prepared in two views (Z = xattn_zoom); only the LR tokens enter the sequence.
#include <ATen/ATen.h>

#include <cmath>

#include "model/modes/mode.h"
#include "model/nn/flop_counter.h"
#include "model/nn/layers.h"
#include "model/nn/torch_compat.h"

namespace flexvqa {
namespace {

// Every slot's cross-attention memory (SlotPools, model/modes/mode.h): per decoder layer (undefined
// where the layer has none) keys and values [S + 1, Hc, M, Dc] of M HR tokens. A slot without an
// image holds zero keys and values: zero values make its rows' residual exactly zero whatever
// their scores (no mask).
class CrossSlotPools final : public SlotPools {
 public:
  std::vector<at::Tensor> keys, values;
  int64_t bytes() const override {
    int64_t total = 0;
    for (const auto* list : {&keys, &values}) {
      for (const at::Tensor& t : *list) total += t.defined() ? t.numel() * t.element_size() : 0;
    }
    return total;
  }
  int64_t bytes_per_slot() const override {
    for (const at::Tensor& t : keys) {
      if (t.defined()) return bytes() / t.size(0);
    }
    return 0;
  }
  void Clear(int slot) {
    for (auto* list : {&keys, &values}) {
      for (at::Tensor& t : *list) {
        if (t.defined()) t[slot].zero_();
      }
    }
  }
};

// A sequence's state: whether its slot holds an image (FLOPs, memory).
class CrossSequence final : public SequenceState {
 public:
  CrossSequence(const CrossSlotPools& pools, bool image) : pools_(pools), image_(image) {}
  bool image() const { return image_; }
  int64_t bytes() const override { return image_ ? pools_.bytes_per_slot() : 0; }

 private:
  const CrossSlotPools& pools_;
  const bool image_;
};

class CrossAttentionWeights {
 public:
  // Per cross-attending layer i: cross_attn_norm.weight [D], cross_attn.{q,o}_proj.weight [C, D] /
  // [D, C], cross_attn.{k,v}_proj.weight [C, D] (they read the projector's D-wide HR features).
  static StatusOr<std::unique_ptr<CrossAttentionWeights>> Load(const WeightLoader& weights,
                                                               const LlavaConfig& config,
                                                               at::ScalarType dtype,
                                                               at::Device device);

  // Zeroed pools of `num_slots` slots and the scratch slot, M HR tokens each.
  std::unique_ptr<CrossSlotPools> CreatePools(int num_slots, int64_t m) const;
  // features [M, D]: the raw HR features (projector outputs of the tiles, stitched row-major),
  // through every cross-attending layer's k/v projections into slot `slot`.
  void Write(CrossSlotPools& pools, int slot, const at::Tensor& features) const;

  // The sub-block's residual for packed rows x [N, D] of `batch`, each sequence's keys/values
  // read from `pools` by batch.slots (a slot without an image: zero residual). Returns [N, D], or
  // an undefined tensor when `layer` has no cross-attention, or in a prefill without any image
  // (`any_image` false; a decode step always runs it: its ops depend on the bucket alone). One
  // attention call for the whole batch.
  at::Tensor Residual(int layer, const at::Tensor& x, const DecoderBatch& batch,
                      const CrossSlotPools& pools, bool any_image) const;

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

std::unique_ptr<CrossSlotPools> CrossAttentionWeights::CreatePools(int num_slots, int64_t m) const {
  auto pools = std::make_unique<CrossSlotPools>();
  pools->keys.resize(layers_.size());
  pools->values.resize(layers_.size());
  const int64_t dc = width_ / heads_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].kv_proj.defined()) continue;
    const at::TensorOptions options = layers_[i].kv_proj.options();
    pools->keys[i] = at::zeros({int64_t{num_slots} + 1, heads_, m, dc}, options);
    pools->values[i] = at::zeros({int64_t{num_slots} + 1, heads_, m, dc}, options);
  }
  return pools;
}

void CrossAttentionWeights::Write(CrossSlotPools& pools, int slot,
                                  const at::Tensor& features) const {
  const int64_t m = features.size(0), dc = width_ / heads_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].kv_proj.defined()) continue;
    // No norm on the features and no RoPE: CogAgent's cross-attention keys carry no positions.
    const at::Tensor both = Linear(features, layers_[i].kv_proj);  // [M, 2 C]
    pools.keys[i][slot].copy_(
        both.narrow(1, 0, width_).view({m, heads_, dc}).transpose(0, 1));  // [Hc, M, Dc]
    pools.values[i][slot].copy_(
        both.narrow(1, width_, width_).view({m, heads_, dc}).transpose(0, 1));
  }
}

at::Tensor CrossAttentionWeights::Residual(int layer, const at::Tensor& x,
                                           const DecoderBatch& batch, const CrossSlotPools& pools,
                                           bool any_image) const {
  const Layer& l = layers_[layer];
  if (!l.q_proj.defined()) return {};
  const int64_t tq = batch.query_len, c = batch.sequences();
  if (tq != 1 && !any_image) return {};  // A prefill without images: every residual is zero.
  const int64_t n = x.size(0), dc = width_ / heads_;
  const at::Tensor q =
      Linear(RmsNorm(x, l.norm, eps_), l.q_proj).view({n, heads_, dc});  // [N, Hc, Dc]
  const at::Tensor padded = tq == 1 ? q : q.index_select(0, batch.pad_rows);
  const at::Tensor qc = padded.view({c, tq, heads_, dc}).transpose(1, 2);  // [C, Hc, Tq, Dc]
  const double scale = 1.0 / std::sqrt(static_cast<double>(dc));
  // Every row attends to every HR token of its sequence: no mask (causal_offset -1).
  at::Tensor out = Attention(qc, pools.keys[layer].index_select(0, batch.slots),
                             pools.values[layer].index_select(0, batch.slots), scale,
                             /*causal_offset=*/-1)
                       .transpose(1, 2)
                       .reshape({c * tq, width_});  // [C Tq, Hc Dc]
  if (tq != 1) out = out.index_select(0, batch.unpad_rows);
  return Linear(out, l.o_proj);  // [N, D]
}

// The hook for one Forward over chunks: the cross-attention residual after self-attention.
class CrossAttention final : public LayerHooks {
 public:
  CrossAttention(const CrossAttentionWeights& weights, const CrossSlotPools& pools, bool any_image)
      : weights_(weights), pools_(pools), any_image_(any_image) {}
  at::Tensor AfterSelfAttention(int layer, const at::Tensor& x,
                                const DecoderBatch& batch) override {
    return weights_.Residual(layer, x, batch, pools_, any_image_);
  }

 private:
  const CrossAttentionWeights& weights_;
  const CrossSlotPools& pools_;
  const bool any_image_;
};

class XattnMode final : public Mode {
 public:
  XattnMode(const LlavaConfig& config, std::unique_ptr<CrossAttentionWeights> weights)
      : Mode(config, config.mode.xattn_zoom), weights_(std::move(weights)) {}

  std::unique_ptr<SlotPools> CreateSlotPools(int num_slots) const override {
    const int64_t side =
        static_cast<int64_t>(zoom_) * (config_.vision.image_size / config_.vision.patch_size);
    return weights_->CreatePools(num_slots, side * side);
  }

  // Encode's default keeps the raw HR features beside the sequence; they become its keys/values
  // in its slot.
  std::unique_ptr<SequenceState> BeginSequence(const SequenceStart& start) const override {
    auto* pools = dynamic_cast<CrossSlotPools*>(start.pools);
    TORCH_CHECK(pools != nullptr && start.slot >= 0, "xattn: a sequence needs its slot pools");
    if (start.highres.defined()) {
      weights_->Write(*pools, start.slot, start.highres);
    } else {
      pools->Clear(start.slot);  // Text only: zero keys/values, a zero residual.
    }
    return std::make_unique<CrossSequence>(*pools, start.highres.defined());
  }

  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& batch,
                                    SlotPools* pools) const override {
    auto* cross = dynamic_cast<CrossSlotPools*>(pools);
    TORCH_CHECK(cross != nullptr, "xattn: the hooks need the slot pools");
    bool any_image = false;
    for (SequenceState* s : batch) any_image = any_image || static_cast<CrossSequence*>(s)->image();
    return std::make_unique<CrossAttention>(*weights_, *cross, any_image);
  }

  void AddForwardFlops(SequenceState& state, int64_t start, int64_t length, FlopCount::Phase phase,
                       FlopCount* count) const override {
    Mode::AddForwardFlops(state, start, length, phase, count);
    // Every row runs the q/o projections; only a sequence with an image attends to HR tokens.
    const bool image = static_cast<const CrossSequence&>(state).image();
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
