#include "model/nn/cuda/varlen_attention.h"

#include <torch/version.h>

#include <optional>

#if defined(FLEXVQA_CUDA) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))
#define FLEXVQA_VARLEN_FLASH 1
#endif

namespace flexvqa {

bool VarlenAttentionCudaBuilt() {
#ifdef FLEXVQA_VARLEN_FLASH
  return true;
#else
  return false;
#endif
}

at::Tensor VarlenAttentionCuda(const at::Tensor& q, const at::Tensor& k_pool,
                               const at::Tensor& v_pool, const VarlenBatch& batch, double scale,
                               bool causal) {
  TORCH_CHECK(VarlenAttentionCudaBuilt(),
              "VarlenAttentionCuda: built without FLEXVQA_CUDA on LibTorch >= 2.5");
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 4 && v_pool.sizes() == k_pool.sizes(),
              "VarlenAttentionCuda: q [T, H, D] and pools [S, P, Hkv, D] expected, got ", q.sizes(),
              ", ", k_pool.sizes(), ", ", v_pool.sizes());
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(),
              "VarlenAttentionCuda: contiguous pools expected");
  TORCH_CHECK(batch.max_k == k_pool.size(1), "VarlenAttentionCuda: max_k ", batch.max_k,
              " is not the pool's max_context ", k_pool.size(1));
#ifdef FLEXVQA_VARLEN_FLASH
  // The pool as packed keys [slots * max_context, Hkv, D]: sequence b starts at k_start[b].
  const at::Tensor k = k_pool.view({-1, k_pool.size(2), k_pool.size(3)});
  const at::Tensor v = v_pool.view({-1, v_pool.size(2), v_pool.size(3)});
  // Arguments by position up to seqused_k: the trailing ones (alibi_slopes; block_table and
  // num_splits from 2.12) keep their defaults whichever version is installed.
  auto result = at::_flash_attention_forward(
      q, k, v, batch.cu_seqlens_q, batch.k_start, batch.max_q, batch.max_k, /*dropout_p=*/0.0,
      causal, /*return_debug_mask=*/false, scale, /*window_size_left=*/std::nullopt,
      /*window_size_right=*/std::nullopt, batch.seqused_k);
  return std::get<0>(result);  // [total_q, H, D]
#else
  (void)scale;
  (void)causal;
  return {};
#endif
}

}  // namespace flexvqa
