#include "model/modes/cross_attention.h"

#include <ATen/ATen.h>

#include <cmath>

#include "model/nn/layers.h"
#include "model/nn/torch_compat.h"

namespace flexvqa {

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

CrossKeyValues CrossAttentionWeights::KeysAndValues(const at::Tensor& features) const {
  CrossKeyValues kv;
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
  return kv;
}

at::Tensor CrossAttentionWeights::Residual(int layer, const at::Tensor& x,
                                           const std::vector<ChunkSpan>& chunks,
                                           const std::vector<const CrossKeyValues*>& memory) const {
  const Layer& l = layers_[layer];
  if (!l.q_proj.defined()) return {};
  const int64_t n = x.size(0), dc = width_ / heads_;
  const at::Tensor q = Linear(RmsNorm(x, l.norm, eps_), l.q_proj)
                           .view({n, heads_, dc})
                           .transpose(0, 1);  // [Hc, N, Dc]
  at::Tensor out =
      at::zeros({heads_, n, dc}, q.options());  // Rows of chunks without an image stay zero.
  const double scale = 1.0 / std::sqrt(static_cast<double>(dc));
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (memory[c] == nullptr) continue;
    // Every row attends to every HR token: no mask (causal_offset -1).
    out.narrow(1, chunks[c].row_begin, chunks[c].length)
        .copy_(Attention(q.narrow(1, chunks[c].row_begin, chunks[c].length), memory[c]->keys[layer],
                         memory[c]->values[layer], scale, /*causal_offset=*/-1));
  }
  return Linear(out.transpose(0, 1).reshape({n, width_}), l.o_proj);  // [N, D]
}

}  // namespace flexvqa
