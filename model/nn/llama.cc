#include "model/nn/llama.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "model/nn/torch_compat.h"

namespace flexvqa {

StatusOr<std::unique_ptr<LlamaDecoder>> LlamaDecoder::Load(const WeightLoader& weights,
                                                           const TextConfig& config,
                                                           at::ScalarType dtype, at::Device device,
                                                           int64_t max_positions) {
  auto decoder = std::unique_ptr<LlamaDecoder>(new LlamaDecoder());
  decoder->config_ = config;
  const int64_t d = config.hidden_size;
  const int64_t dh = config.head_dim();
  const int64_t h = config.num_attention_heads;
  const int64_t kv = config.num_key_value_heads;
  const int64_t inter = config.intermediate_size;
  const int64_t vocab = config.vocab_size;
  auto get = [&](WeightSection section, const std::string& name,
                 std::vector<int64_t> shape) -> StatusOr<at::Tensor> {
    return weights.Get(section, name, shape, dtype, device);
  };
  FLEXVQA_ASSIGN_OR_RETURN(decoder->embed_tokens_,
                           get(WeightSection::kText, "embed_tokens.weight", {vocab, d}));
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    Layer layer;
    FLEXVQA_ASSIGN_OR_RETURN(layer.input_norm,
                             get(WeightSection::kText, p + "input_layernorm.weight", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(at::Tensor q,
                             get(WeightSection::kText, p + "self_attn.q_proj.weight", {h * dh, d}));
    FLEXVQA_ASSIGN_OR_RETURN(
        at::Tensor k, get(WeightSection::kText, p + "self_attn.k_proj.weight", {kv * dh, d}));
    FLEXVQA_ASSIGN_OR_RETURN(
        at::Tensor v, get(WeightSection::kText, p + "self_attn.v_proj.weight", {kv * dh, d}));
    FLEXVQA_ASSIGN_OR_RETURN(layer.o_proj,
                             get(WeightSection::kText, p + "self_attn.o_proj.weight", {d, h * dh}));
    FLEXVQA_ASSIGN_OR_RETURN(layer.post_attn_norm,
                             get(WeightSection::kText, p + "post_attention_layernorm.weight", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(at::Tensor gate,
                             get(WeightSection::kText, p + "mlp.gate_proj.weight", {inter, d}));
    FLEXVQA_ASSIGN_OR_RETURN(at::Tensor up,
                             get(WeightSection::kText, p + "mlp.up_proj.weight", {inter, d}));
    FLEXVQA_ASSIGN_OR_RETURN(layer.down_proj,
                             get(WeightSection::kText, p + "mlp.down_proj.weight", {d, inter}));
    layer.qkv_proj = at::cat({q, k, v}, 0);
    layer.gate_up_proj = at::cat({gate, up}, 0);
    decoder->layers_.push_back(std::move(layer));
  }
  FLEXVQA_ASSIGN_OR_RETURN(decoder->norm_, get(WeightSection::kText, "norm.weight", {d}));
  if (weights.Has(WeightSection::kLmHead, "weight") || !config.tie_word_embeddings) {
    FLEXVQA_ASSIGN_OR_RETURN(decoder->lm_head_, get(WeightSection::kLmHead, "weight", {vocab, d}));
  } else {
    decoder->lm_head_ = decoder->embed_tokens_;
  }
  decoder->rotary_ = BuildRotaryTables(max_positions, dh, config.rope_theta, dtype, device);
  return decoder;
}

at::Tensor LlamaDecoder::Embed(const at::Tensor& token_ids) const {
  const at::Tensor in_range = (token_ids >= 0) & (token_ids < config_.vocab_size);
  const at::Tensor ids = at::where(in_range, token_ids, at::zeros_like(token_ids));
  return at::embedding(embed_tokens_, ids);  // [N, D]
}

std::pair<at::Tensor, at::Tensor> ChunkKeysValues(int layer, const DecoderBatch& batch,
                                                  size_t chunk) {
  const ChunkSpan& c = batch.chunks[chunk];
  const int64_t total = c.start + c.length;
  at::Tensor keys = batch.cache.Keys(layer, c.slot, total);      // [KV, total, Dh]
  at::Tensor values = batch.cache.Values(layer, c.slot, total);  // [KV, total, Dh]
  if (keys.size(0) != batch.heads) {  // Grouped-query attention: each KV head serves H / KV heads.
    keys = keys.repeat_interleave(batch.heads / keys.size(0), 0);
    values = values.repeat_interleave(batch.heads / values.size(0), 0);
  }
  return {keys, values};
}

at::Tensor CausalChunkAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
                                size_t chunk) {
  const ChunkSpan& c = batch.chunks[chunk];
  const auto [keys, values] = ChunkKeysValues(layer, batch, chunk);
  return Attention(q.narrow(1, c.row_begin, c.length), keys, values, batch.scale,
                   /*causal_offset=*/c.start);  // [H, T, Dh]
}

at::Tensor LayerHooks::SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) {
  std::vector<at::Tensor> outputs;
  outputs.reserve(batch.chunks.size());
  for (size_t c = 0; c < batch.chunks.size(); ++c) {
    outputs.push_back(CausalChunkAttention(layer, q, batch, c));
  }
  return at::cat(outputs, 1);  // [H, N, Dh]
}

at::Tensor LlamaDecoder::AttentionBlock(const Layer& layer, int layer_index, const at::Tensor& x,
                                        const at::Tensor& positions, const DecoderBatch& batch,
                                        KvCache& cache, LayerHooks& hooks) const {
  const int64_t h = config_.num_attention_heads;
  const int64_t kv = config_.num_key_value_heads;
  const int64_t dh = config_.head_dim();
  const int64_t n = x.size(0);
  const at::Tensor qkv = Linear(x, layer.qkv_proj);  // [N, (H + 2 KV) Dh]
  // [N, heads, Dh] -> [heads, N, Dh]
  at::Tensor q = qkv.narrow(1, 0, h * dh).view({n, h, dh}).transpose(0, 1);
  at::Tensor k = qkv.narrow(1, h * dh, kv * dh).view({n, kv, dh}).transpose(0, 1);
  const at::Tensor v = qkv.narrow(1, (h + kv) * dh, kv * dh).view({n, kv, dh}).transpose(0, 1);
  const at::Tensor cos = rotary_.cos.index_select(0, positions);  // [N, Dh]
  const at::Tensor sin = rotary_.sin.index_select(0, positions);
  q = ApplyRotary(q, cos, sin);
  k = ApplyRotary(k, cos, sin);
  for (const ChunkSpan& c : batch.chunks) {
    cache.Write(layer_index, c.slot, c.start, k.narrow(1, c.row_begin, c.length),
                v.narrow(1, c.row_begin, c.length));
  }
  // [H, N, Dh] -> [N, H Dh]
  const at::Tensor attn =
      hooks.SelfAttention(layer_index, q, batch).transpose(0, 1).reshape({n, h * dh});
  return Linear(attn, layer.o_proj);
}

at::Tensor LlamaDecoder::Forward(const at::Tensor& x_in, const std::vector<ChunkSpan>& chunks,
                                 KvCache& cache, LayerHooks* hooks_in) const {
  LayerHooks plain;
  LayerHooks& hooks = hooks_in != nullptr ? *hooks_in : plain;
  // Positions of every packed row, for RoPE.
  std::vector<int64_t> pos;
  pos.reserve(x_in.size(0));
  for (const ChunkSpan& c : chunks) {
    for (int64_t i = 0; i < c.length; ++i) pos.push_back(c.start + i);
  }
  const at::Tensor positions =
      at::tensor(pos, at::TensorOptions().dtype(at::kLong)).to(x_in.device());
  const int64_t inter = config_.intermediate_size;
  const double scale = 1.0 / std::sqrt(static_cast<double>(config_.head_dim()));
  const DecoderBatch batch{chunks, cache, config_.num_attention_heads, scale};
  at::Tensor x = x_in;  // [N, D]
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const int li = static_cast<int>(l);
    const at::Tensor h = RmsNorm(x, layer.input_norm, config_.rms_norm_eps);
    hooks.BeginLayer(li);
    x = x + AttentionBlock(layer, li, h, positions, batch, cache, hooks);
    const at::Tensor residual = hooks.AfterSelfAttention(li, x, batch);
    if (residual.defined()) x = x + residual;
    const at::Tensor h2 = RmsNorm(x, layer.post_attn_norm, config_.rms_norm_eps);
    const at::Tensor gate_up = Linear(h2, layer.gate_up_proj);  // [N, 2I]
    const at::Tensor act = Activation(gate_up.narrow(1, 0, inter), config_.hidden_act) *
                           gate_up.narrow(1, inter, inter);
    x = x + Linear(act, layer.down_proj);
  }
  for (const ChunkSpan& c : chunks) cache.set_length(c.slot, static_cast<int>(c.start + c.length));
  return RmsNorm(x, norm_, config_.rms_norm_eps);
}

at::Tensor LlamaDecoder::Logits(const at::Tensor& hidden) const {
  return Linear(hidden, lm_head_).to(at::kFloat);
}

}  // namespace flexvqa
