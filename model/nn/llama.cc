#include "model/nn/llama.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "model/nn/batched_attention.h"
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

at::Tensor LlamaDecoder::EmbedInVocabulary(const at::Tensor& token_ids) const {
  return at::embedding(embed_tokens_, token_ids);  // [N, D]
}

std::pair<at::Tensor, at::Tensor> ChunkKeysValues(int layer, const DecoderBatch& batch,
                                                  size_t chunk) {
  const ChunkSpan& c = batch.chunks[chunk];
  const int64_t total = c.start + c.length;
  at::Tensor keys = batch.cache->Keys(layer, c.slot, total);      // [KV, total, Dh]
  at::Tensor values = batch.cache->Values(layer, c.slot, total);  // [KV, total, Dh]
  if (keys.size(0) != batch.heads) {  // Grouped-query attention: each KV head serves H / KV heads.
    keys = keys.repeat_interleave(batch.heads / keys.size(0), 0);
    values = values.repeat_interleave(batch.heads / values.size(0), 0);
  }
  return {keys, values};
}

at::Tensor LayerHooks::SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) {
  return CausalAttention(layer, q, batch);
}

at::Tensor LlamaDecoder::AttentionBlock(const Layer& layer, int layer_index, const at::Tensor& x,
                                        const DecoderBatch& batch, KvCache& cache,
                                        LayerHooks& hooks) const {
  const int64_t h = config_.num_attention_heads;
  const int64_t kv = config_.num_key_value_heads;
  const int64_t dh = config_.head_dim();
  const int64_t n = x.size(0);
  const at::Tensor qkv = Linear(x, layer.qkv_proj);  // [N, (H + 2 KV) Dh]
  // RoPE on the queries and keys together, in place: [N, H + KV, Dh].
  ApplyRotaryInPlace(qkv.narrow(1, 0, (h + kv) * dh).view({n, h + kv, dh}), batch.rope);
  // Keys and values are adjacent in qkv: [N, 2, KV, Dh], one indexed copy into the pool.
  cache.Write(layer_index, qkv.narrow(1, h * dh, 2 * kv * dh).view({n, 2, kv, dh}),
              batch.write_rows);
  const at::Tensor q = qkv.narrow(1, 0, h * dh).view({n, h, dh});  // [N, H, Dh]
  const at::Tensor attn = hooks.SelfAttention(layer_index, q, batch).reshape({n, h * dh});
  return Linear(attn, layer.o_proj);
}

at::Tensor LlamaDecoder::Forward(const at::Tensor& x, const DecoderBatch& batch, KvCache& cache,
                                 LayerHooks* hooks) const {
  at::Tensor hidden = ForwardOnDevice(x, batch, cache, hooks);
  CommitLengths(batch, cache);
  return hidden;
}

void LlamaDecoder::CommitLengths(const DecoderBatch& batch, KvCache& cache) {
  for (const ChunkSpan& c : batch.chunks) {
    cache.set_length(c.slot, static_cast<int>(c.start + c.length));
  }
}

at::Tensor LlamaDecoder::ForwardOnDevice(const at::Tensor& x_in, const DecoderBatch& batch_in,
                                         KvCache& cache, LayerHooks* hooks_in) const {
  LayerHooks plain;
  LayerHooks& hooks = hooks_in != nullptr ? *hooks_in : plain;
  DecoderBatch batch = batch_in;
  batch.rope = rotary_.table.index_select(0, batch.positions);  // [N, 2, Dh], once per Forward.
  batch.cache = &cache;
  batch.heads = config_.num_attention_heads;
  batch.scale = 1.0 / std::sqrt(static_cast<double>(config_.head_dim()));
  const int64_t inter = config_.intermediate_size;
  at::Tensor x = x_in;  // [N, D]
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const int li = static_cast<int>(l);
    const at::Tensor h = RmsNorm(x, layer.input_norm, config_.rms_norm_eps);
    hooks.BeginLayer(li);
    x = x + AttentionBlock(layer, li, h, batch, cache, hooks);
    const at::Tensor residual = hooks.AfterSelfAttention(li, x, batch);
    if (residual.defined()) x = x + residual;
    const at::Tensor h2 = RmsNorm(x, layer.post_attn_norm, config_.rms_norm_eps);
    const at::Tensor gate_up = Linear(h2, layer.gate_up_proj);  // [N, 2I]
    const at::Tensor act = Activation(gate_up.narrow(1, 0, inter), config_.hidden_act) *
                           gate_up.narrow(1, inter, inter);
    x = x + Linear(act, layer.down_proj);
  }
  return RmsNorm(x, norm_, config_.rms_norm_eps);
}

at::Tensor LlamaDecoder::Logits(const at::Tensor& hidden) const {
  return Linear(hidden, lm_head_).to(at::kFloat);
}

}  // namespace flexvqa
