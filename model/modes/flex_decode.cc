#include "model/modes/flex_decode.h"

#include <ATen/ATen.h>

#include "model/modes/block_selection.h"
#include "model/nn/batched_attention.h"

namespace flexvqa {

FlexDecodeRows FlexDecodeAttention(int layer, const at::Tensor& q, const DecoderBatch& batch,
                                   const FlexDecodeInputs& inputs, const FlexDecodeLayer& hr,
                                   bool selects) {
  const CausalScores causal = CausalAttentionScores(layer, q, batch);  // [C, KV, G, Tk]
  const int64_t c = q.size(0), h = q.size(1), dh = q.size(2);
  const int64_t kv = causal.scores.size(1), g = causal.scores.size(2), tk = causal.scores.size(3);
  const bool hierarchical = hr.hr_keys.defined();
  std::vector<at::Tensor> parts = {causal.scores, inputs.neg_inf.expand({c, kv, g, 1})};
  int64_t t = 0;
  if (hierarchical) {
    // The HR keys' scores as the causal ones: q k * scale in the model dtype
    // (modeling_llama.py:455-462), keys outside the active 8x8 blocks masked.
    t = hr.hr_keys.size(2);
    const at::Tensor valid = hr.active.index_select(1, inputs.token_blocks);  // [C, T]
    const at::Tensor scores =
        at::matmul(q.view({c, kv, g, dh}), hr.hr_keys.transpose(2, 3)) * batch.scale;
    parts.push_back(at::where(valid.view({c, 1, 1, t}), scores, inputs.neg_inf));  // [C,KV,G,T]
  }
  // [C, KV, G, Tk + 1 + T] fp32: one softmax over causal and HR keys (:470), the pad column 0.
  const at::Tensor probs = at::softmax(at::cat(parts, -1), -1, at::kFloat);
  const at::Tensor causal_probs = probs.narrow(-1, 0, tk);
  FlexDecodeRows rows;
  rows.out = AttendCausalValues(causal_probs, causal, batch);  // [C, H, Dh]
  if (hierarchical) {
    // sum_i p_i (W_v x_i) = W_v (sum_i p_i x_i) per head: [C, H, T] x [C, T, D] -> [C, H, D],
    // then [H, C, D] x [H, D, Dh] -> [H, C, Dh].
    const at::Tensor mixed = at::matmul(
        probs.narrow(-1, tk + 1, t).reshape({c, h, t}).to(hr.features.scalar_type()), hr.features);
    rows.out =
        rows.out + at::matmul(mixed.transpose(0, 1), hr.v_weights.transpose(1, 2)).transpose(0, 1);
  }
  if (selects) {
    // The image columns of each head's softmax over the causal keys alone: p_j / sum_causal p
    // where HR keys shared the softmax (exactly 1 / 1 elsewhere: left out). Band cells read the
    // pad column's 0.
    at::Tensor image = probs.gather(-1, inputs.image_columns);  // [C, KV, G, n]
    if (hierarchical) image = image / causal_probs.sum(-1, /*keepdim=*/true);
    rows.next = ThresholdBlocks(image.reshape({c, h, image.size(3)}).sum(1), inputs.threshold,
                                inputs.lr_side);  // [C, 81]
  }
  return rows;
}

}  // namespace flexvqa
