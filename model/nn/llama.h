// The LLaMA decoder of LLaVA-1.5 (HF LlamaForCausalLM): token embeddings, N pre-norm blocks of
// (RMSNorm, RoPE self-attention, RMSNorm, SwiGLU MLP), final RMSNorm, lm_head. One forward entry
// point serves prefill and decode alike: a packed batch of sequence chunks ([N, D] rows, each chunk
// placed at its own start position in its own KV-cache slot), as vLLM's varlen batches. The
// projections run as one GEMM over all rows; attention runs per chunk against that slot's cache.
// What an attention mode changes comes in through LayerHooks, per layer for the whole batch.
// Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>
#include <vector>

#include "model/nn/kv_cache.h"
#include "model/nn/layers.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

// One sequence's chunk in a packed batch: rows [row_begin, row_begin + length) of the input go to
// positions [start, start + length) of `slot`.
struct ChunkSpan {
  int slot = 0;
  int64_t start = 0;
  int64_t row_begin = 0;
  int64_t length = 0;
};

// The packed batch of one Forward as the per-layer hooks see it: every chunk, the cache holding
// each chunk's keys/values (this layer's already written), and the attention's geometry.
struct DecoderBatch {
  const std::vector<ChunkSpan>& chunks;
  const KvCache& cache;
  int64_t heads = 0;   // Query heads H.
  double scale = 1.0;  // 1 / sqrt(Dh).
};

// What an attention mode changes in the decoder (model/modes/mode.h creates one per Forward).
// Every hook sees the whole batch of one layer at once, so a mode can run one attention call per
// layer for the whole batch. The defaults are LLaVA-1.5's plain decoder. Worker thread only.
class LayerHooks {
 public:
  virtual ~LayerHooks() = default;
  // Before layer `layer`'s attention.
  virtual void BeginLayer(int /*layer*/) {}
  // Self-attention of every packed row: q [H, N, Dh] after RoPE -> output [H, N, Dh]. Each chunk's
  // keys/values for this layer are in batch.cache up to start + length. Default: causal.
  virtual at::Tensor SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch);
  // After self-attention's residual: x [N, D] -> a second residual to add [N, D], or an undefined
  // tensor for none (the default).
  virtual at::Tensor AfterSelfAttention(int /*layer*/, const at::Tensor& /*x*/,
                                        const DecoderBatch& /*batch*/) {
    return {};
  }
};

// Chunk `chunk`'s cached keys and values of `layer` up to its last row, with grouped KV heads
// repeated to the query heads: {[H, start + length, Dh], [H, start + length, Dh]}.
std::pair<at::Tensor, at::Tensor> ChunkKeysValues(int layer, const DecoderBatch& batch,
                                                  size_t chunk);
// Plain causal attention of one chunk's rows of q [H, N, Dh] -> [H, length, Dh].
at::Tensor CausalChunkAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
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

  // Runs the blocks over packed rows x [N, D], writing each chunk's keys/values into its slot and
  // extending the slot's length. Returns the final-normed hidden states [N, D]. `hooks` (optional:
  // null is the plain decoder) is the attention mode's (LayerHooks).
  at::Tensor Forward(const at::Tensor& x, const std::vector<ChunkSpan>& chunks, KvCache& cache,
                     LayerHooks* hooks = nullptr) const;

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
                            const at::Tensor& positions, const DecoderBatch& batch, KvCache& cache,
                            LayerHooks& hooks) const;

  TextConfig config_;
  at::Tensor embed_tokens_;  // [V, D]
  std::vector<Layer> layers_;
  at::Tensor norm_;     // [D]
  at::Tensor lm_head_;  // [V, D]
  RotaryTables rotary_;
};

}  // namespace flexvqa
