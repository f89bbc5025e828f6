// FlexAttention for the newest row of every sequence of a batch, per decoder layer, as fixed-shape
// device code with no host read (flexattention.md §3-4; modeling_llama.py:417-572): the selection a
// layer computes for the next one, from the row's causal softmax over its LR image keys, and the
// hierarchical attention that merges the row's causal part with its selected HR part. What a
// LayerHooks implementation calls once per layer with tensors gathered for the whole batch (the
// decoder supplies the causal output and its log-sum-exp). Pure functions; any thread, any device.
// Shapes: C sequences, H query heads, KV key/value heads, n = lr_side^2 LR image tokens, T HR
// tokens, D model width, Dh head width.
#pragma once

#include <ATen/core/Tensor.h>

#include "model/modes/attention_merge.h"
#include "model/modes/highres_attention.h"

namespace flexvqa {

// What a batch's sequences brought at admission, gathered by slot once per Forward.
struct FlexRowInputs {
  at::Tensor band;  // [C, n] bool: padding-band cells (PaddingBandMask).
  // [C] fp32, 0-255; 255 for a row without an image (text only, or padding), which selects
  // nothing.
  at::Tensor threshold;
  int lr_side = 24;
};

// The selection layer l computes for layer l + 1 (modeling_llama.py:523-572). q [C, H, Dh]: the
// newest rows after RoPE; image_keys [C, KV, n, Dh]: each row's LR image keys (a subset of its
// causal keys); causal_lse [C, H]: the log-sum-exp of the row's scaled scores over ALL its causal
// keys (text + LR, no HR key: the reference masks those out of this softmax,
// modeling_llama.py:455-470). The image columns' probabilities are exp(score - lse), summed over
// heads -> [C, 81] bool.
at::Tensor SelectForNextLayer(const at::Tensor& q, const at::Tensor& image_keys,
                              const at::Tensor& causal_lse, const FlexRowInputs& rows,
                              double scale);

// The hierarchical attention of the newest rows (modeling_llama.py:444-499): causal_out [C, H, Dh]
// and causal_lse [C, H] (the decoder's attention over the row's causal keys), merged with the part
// over the HR tokens of the blocks `active` [C, 81] bool (the selection the layer before computed)
// -> [C, H, Dh] in causal_out's dtype. hr_keys [C, KV, T, Dh], features [C, T, D], token_blocks and
// v_weights as HighResPart (highres_attention.h). A row with no active block keeps causal_out bit
// for bit.
at::Tensor HierarchicalRows(const at::Tensor& q, const at::Tensor& causal_out,
                            const at::Tensor& causal_lse, const at::Tensor& hr_keys,
                            const at::Tensor& features, const at::Tensor& active,
                            const at::Tensor& token_blocks, const at::Tensor& v_weights,
                            double scale);

// The head-summed image attention SelectForNextLayer thresholds: [C, n] fp32.
at::Tensor ImageAttentionFromLse(const at::Tensor& q, const at::Tensor& image_keys,
                                 const at::Tensor& causal_lse, double scale);

}  // namespace flexvqa
