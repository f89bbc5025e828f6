// The LLaMA decoder of LLaVA-1.5 (HF LlamaForCausalLM): token embeddings, N pre-norm blocks of
// (RMSNorm, RoPE self-attention, RMSNorm, SwiGLU MLP), final RMSNorm, lm_head. One forward entry
// point serves prefill and decode alike: a packed batch of sequence chunks ([N, D] rows, each chunk
// placed at its own start position in its own KV-cache slot), as vLLM's varlen batches. The
// projections run as one GEMM over all rows; attention runs per chunk against that slot's cache.
// Worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "model/nn/kv_cache.h"
#include "model/nn/layers.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

// One sequence's chunk in a packed batch: rows [row_begin, row_begin + length) of the input go to
// positions [start, start + length) of `slot`. composite mode (docs/modes.md): the rows at
// positions [no_attention_begin, no_attention_begin + no_attention_length) run no self-attention
// (their attention output is zero, so the block adds only the MLP), while their keys/values are
// written to the cache as usual.
struct ChunkSpan {
  int slot = 0;
  int64_t start = 0;
  int64_t row_begin = 0;
  int64_t length = 0;
  int64_t no_attention_begin = 0;
  int64_t no_attention_length = 0;
};

// Lets a caller change what the LAST row of each chunk attends to: FlexAttention's hierarchical
// attention, where only the newest token also sees the selected high-resolution keys
// (model/modes/flex_attention.h). Forward calls it on the worker thread; every other row stays
// causal self-attention.
class LastRowAttention {
 public:
  virtual ~LastRowAttention() = default;
  // Called once per layer, before its attention, with the chunks of this Forward.
  virtual void BeginLayer(int layer) = 0;
  // q [H, Dh]: chunk `chunk`'s last row after RoPE; keys/values [H, total, Dh]: the causal keys
  // that row sees (grouped KV heads already repeated). Returns the row's attention output [H, Dh]
  // to use instead of the ordinary one, or an undefined tensor to keep it.
  virtual at::Tensor LastRow(int layer, size_t chunk, const at::Tensor& q, const at::Tensor& keys,
                             const at::Tensor& values, double scale) = 0;
};

// xattn (model/modes/cross_attention.h): an extra residual sub-block between self-attention and the
// MLP.
class CrossAttentionHook {
 public:
  virtual ~CrossAttentionHook() = default;
  // x [N, D]: the packed rows after self-attention's residual. Returns the residual to add [N, D],
  // or an undefined tensor when `layer` has none.
  virtual at::Tensor Residual(int layer, const at::Tensor& x,
                              const std::vector<ChunkSpan>& chunks) = 0;
};

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
  // extending the slot's length. Returns the final-normed hidden states [N, D]. `last_row`
  // (optional) replaces the attention of each chunk's last row (see LastRowAttention); `cross`
  // (optional) adds xattn's cross-attention after self-attention.
  at::Tensor Forward(const at::Tensor& x, const std::vector<ChunkSpan>& chunks, KvCache& cache,
                     LastRowAttention* last_row = nullptr,
                     CrossAttentionHook* cross = nullptr) const;

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
                            const at::Tensor& positions, const std::vector<ChunkSpan>& chunks,
                            KvCache& cache, LastRowAttention* last_row) const;

  TextConfig config_;
  at::Tensor embed_tokens_;  // [V, D]
  std::vector<Layer> layers_;
  at::Tensor norm_;     // [D]
  at::Tensor lm_head_;  // [V, D]
  RotaryTables rotary_;
};

}  // namespace flexvqa
