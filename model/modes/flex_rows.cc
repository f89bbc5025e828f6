#include "model/modes/flex_rows.h"

#include <ATen/ATen.h>

#include "model/modes/block_selection.h"

namespace flexvqa {

at::Tensor ImageAttentionFromLse(const at::Tensor& q, const at::Tensor& image_keys,
                                 const at::Tensor& causal_lse, double scale) {
  const int64_t c = q.size(0), h = q.size(1), dh = q.size(2);
  const int64_t kv = image_keys.size(1), n = image_keys.size(2);
  // The softmax's image columns without the other keys' scores: p_j = exp(s_j - lse), lse over
  // every causal key. Grouped heads as in SoftmaxOneRow.
  const at::Tensor scores =
      at::matmul(q.view({c, kv, h / kv, dh}), image_keys.transpose(2, 3)).to(at::kFloat) *
      scale;  // [C, KV, G, n]
  return (scores - causal_lse.view({c, kv, h / kv, 1})).exp().view({c, h, n}).sum(1);  // [C, n]
}

at::Tensor SelectForNextLayer(const at::Tensor& q, const at::Tensor& image_keys,
                              const at::Tensor& causal_lse, const FlexRowInputs& rows,
                              double scale) {
  const at::Tensor attention = ImageAttentionFromLse(q, image_keys, causal_lse, scale);
  return SelectBlocksBatched(attention, rows.band, rows.threshold, rows.lr_side);  // [C, 81]
}

at::Tensor HierarchicalRows(const at::Tensor& q, const at::Tensor& causal_out,
                            const at::Tensor& causal_lse, const at::Tensor& hr_keys,
                            const at::Tensor& features, const at::Tensor& active,
                            const at::Tensor& token_blocks, const at::Tensor& v_weights,
                            double scale) {
  const AttentionPart causal{causal_out.to(at::kFloat), causal_lse};
  const AttentionPart high =
      HighResPart(q, hr_keys, features, active, token_blocks, v_weights, scale);
  return MergeAttentionParts(causal, high).to(causal_out.scalar_type());  // [C, H, Dh]
}

}  // namespace flexvqa
