// FlexAttention of one decoder layer for a decode step's rows (one newest row per sequence, Tq = 1)
// as fixed-shape device code with no host read (flexattention.md §3-4): the row's causal keys and
// its image's HR keys under ONE fp32 softmax, as the reference concatenates them
// (modeling_llama.py:444-499), and the selection for the next layer read from the same
// probabilities (:523-572) instead of rescoring the LR image keys. Fewer kernels than the prefill
// path's log-sum-exp merge (flex_rows.h), which stays where only the last of many rows attends to
// HR keys. Pure functions of their inputs; any thread, any device. Shapes: C sequences (the decode
// bucket), H query heads, KV key/value heads, G = H / KV, Tk = the cache's max_context, n =
// lr_side^2 LR image tokens, T HR tokens, D model width, Dh head width.
#pragma once

#include <ATen/core/Tensor.h>

#include "model/nn/decoder_batch.h"

namespace flexvqa {

// What a step's rows bring, gathered once per Forward (model/modes/flex.cc).
struct FlexDecodeInputs {
  // [C, KV, G, n] int64 (an expanded view is fine): the column of each LR image cell in the
  // joint probabilities, image_begin + j, or Tk (the always-masked pad column: probability 0) for
  // a padding-band cell, so that the gather zeroes the bands (modeling_llama.py:548-558).
  at::Tensor image_columns;
  at::Tensor threshold;     // [C] fp32 0-255; 255 selects nothing (a row without an image).
  at::Tensor neg_inf;       // [1, 1, 1, 1] -inf in the model dtype on the device.
  at::Tensor token_blocks;  // [T] int64 (TokenBlocks).
  int lr_side = 24;
};

// One layer's HR side; undefined hr_keys: the layer does not attend to HR keys.
struct FlexDecodeLayer {
  at::Tensor hr_keys;    // [C, KV, T, Dh] this layer's HR keys of each row's image.
  at::Tensor features;   // [C, T, D] raw HR features (values through v_weights).
  at::Tensor v_weights;  // [H, Dh, D] (ValueWeightsPerQueryHead).
  at::Tensor active;     // [C, 81] bool: the selection this layer uses.
};

struct FlexDecodeRows {
  at::Tensor out;   // [C, H, Dh] model dtype.
  at::Tensor next;  // [C, 81] bool: the selection for the next layer (when asked for).
};

// q [C, H, Dh] after RoPE, this layer's K/V of the batch already in the pool. Scores of the causal
// keys (masked as CausalAttention), one pad column (-inf) and, when layer.hr_keys is defined, the
// HR keys (those outside the active blocks -inf) in one softmax; its causal columns times the
// values, its HR columns times the raw features then v_proj_hd per head (highres_attention.h);
// with `selects`, the head-summed image columns normalised over the causal keys alone (the
// reference masks HR keys out of the selection's softmax, :455-470) thresholded into `next`
// (ThresholdBlocks).
FlexDecodeRows FlexDecodeAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
                                   const FlexDecodeInputs& inputs, const FlexDecodeLayer& hr,
                                   bool selects);

}  // namespace flexvqa
