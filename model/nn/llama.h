// The LLaMA decoder of LLaVA-1.5 (HF LlamaForCausalLM): token embeddings, N pre-norm blocks of
// (RMSNorm, RoPE self-attention, RMSNorm, SwiGLU MLP), final RMSNorm, lm_head. One forward entry
// point serves prefill and decode alike: a packed batch of sequence chunks ([N, D] rows, each chunk
// placed at its own start position in its own KV-cache slot), as vLLM's varlen batches, described
// by a DecoderBatch (model/nn/decoder_batch.h). The projections run as one GEMM over all rows, RoPE
// rows are gathered once per Forward, keys/values are written with one indexed copy per layer and
// attention is one batched call per layer (model/nn/batched_attention.h). What an attention mode
// changes comes in through LayerHooks, per layer for the whole batch. Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>
#include <vector>

#include "model/nn/decoder_batch.h"
#include "model/nn/kv_cache.h"
#include "model/nn/layers.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

// What an attention mode changes in the decoder (model/modes/mode.h creates one per Forward).
// Every hook sees the whole batch of one layer at once (DecoderBatch, model/nn/decoder_batch.h:
// the host chunks, and on the device the rows' slots, positions and flat KV-pool rows, each
// sequence's length, the causal key mask, the padded bucket), so that a mode runs one attention
// call per layer for the whole batch and stays free of host syncs and data-dependent shapes. The
// layer's whole K/V pool is batch.cache->pool(layer) ([2, slots + 1, max_context, KV, Dh]): one
// index_select by batch.slots of its keys (values) serves the batch. The defaults are LLaVA-1.5's
// plain decoder. Rows are packed [N, ...] with N = batch.rows (padding rows included: whatever a
// hook computes for them is discarded). Worker thread only.
class LayerHooks {
 public:
  virtual ~LayerHooks() = default;
  // Before layer `layer`'s attention.
  virtual void BeginLayer(int /*layer*/) {}
  // Self-attention of every packed row: q [N, H, Dh] after RoPE -> output [N, H, Dh]. This
  // layer's keys/values of the batch are already in the pool. Default: CausalAttention
  // (model/nn/batched_attention.h), which a mode may call itself, with its log-sum-exp, to merge
  // attention over other keys (model/modes/attention_merge.h).
  virtual at::Tensor SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch);
  // After self-attention's residual: x [N, D] -> a second residual to add [N, D], or an undefined
  // tensor for none (the default).
  virtual at::Tensor AfterSelfAttention(int /*layer*/, const at::Tensor& /*x*/,
                                        const DecoderBatch& /*batch*/) {
    return {};
  }
  // After the last layer, inside the step's device work: the device tensors of this Forward that
  // the host reads afterwards (flex: its selections). A captured step returns them, so that a
  // replay refreshes them. Default: none.
  virtual std::vector<at::Tensor> StepOutputs() { return {}; }
  // On the host after the Forward ran (eagerly, or as a replayed graph without calling the other
  // hooks), with what StepOutputs returned (on replay: the captured tensors, refreshed). Host
  // bookkeeping of the step goes here, never into the hooks above. Default: nothing.
  virtual void AfterStep(const std::vector<at::Tensor>& /*outputs*/) {}
};

// Chunk `chunk`'s cached keys and values of `layer` up to its last row, with grouped KV heads
// repeated to the query heads: {[H, start + length, Dh], [H, start + length, Dh]}. A per-chunk
// host view for code that has not moved to the batched calls (it is not static: its shapes follow
// each sequence's length).
std::pair<at::Tensor, at::Tensor> ChunkKeysValues(int layer, const DecoderBatch& batch,
                                                  size_t chunk);

class LlamaDecoder {
 public:
  static StatusOr<std::unique_ptr<LlamaDecoder>> Load(const WeightLoader& weights,
                                                      const TextConfig& config,
                                                      at::ScalarType dtype, at::Device device,
                                                      int64_t max_positions);

  const TextConfig& config() const { return config_; }

  // Token embeddings: [N] int64 ids -> [N, D]. Ids outside the table (image placeholders) map to
  // row 0; their rows are overwritten by image features.
  at::Tensor Embed(const at::Tensor& token_ids) const;
  // The same for ids known to be in the vocabulary (PlanDecode clamps them): one gather.
  at::Tensor EmbedInVocabulary(const at::Tensor& token_ids) const;

  // Runs the blocks over packed rows x [batch.rows, D], writing every row's keys/values into the
  // cache and extending the chunks' slot lengths. Returns the final-normed hidden states [N, D].
  // `batch` comes from PlanChunks / PlanDecode over the same cache. `hooks` (optional: null is the
  // plain decoder) is the attention mode's (LayerHooks).
  at::Tensor Forward(const at::Tensor& x, const DecoderBatch& batch, KvCache& cache,
                     LayerHooks* hooks = nullptr) const;
  // Forward in its two parts: the device work alone (what a CUDA graph of the step replays: the
  // cache's host-side lengths stay as they were) and the host bookkeeping after it.
  at::Tensor ForwardOnDevice(const at::Tensor& x, const DecoderBatch& batch, KvCache& cache,
                             LayerHooks* hooks = nullptr) const;
  static void CommitLengths(const DecoderBatch& batch, KvCache& cache);

  // Rows of the RoPE tables (model dtype), for keys placed by position outside the sequence.
  const RotaryTables& rotary() const { return rotary_; }

  // lm_head over hidden rows [R, D] -> fp32 logits [R, V].
  at::Tensor Logits(const at::Tensor& hidden) const;

 private:
  struct Layer {
    at::Tensor input_norm;      // [D]
    at::Tensor qkv_proj;        // [(H + 2 KV) Dh, D]: q, k, v fused into one GEMM.
    at::Tensor o_proj;          // [D, H Dh]
    at::Tensor post_attn_norm;  // [D]
    at::Tensor gate_up_proj;    // [2 I, D]: gate and up fused into one GEMM.
    at::Tensor down_proj;       // [D, I]
  };

  at::Tensor AttentionBlock(const Layer& layer, int layer_index, const at::Tensor& x,
                            const DecoderBatch& batch, KvCache& cache, LayerHooks& hooks) const;

  TextConfig config_;
  at::Tensor embed_tokens_;  // [V, D]
  std::vector<Layer> layers_;
  at::Tensor norm_;     // [D]
  at::Tensor lm_head_;  // [V, D]
  RotaryTables rotary_;
};

}  // namespace flexvqa
