// One attention call per layer for a whole batch over the KV pool, each sequence reading only its
// own length from device tensors (../shared/gpu-step.md item 2): the layout the decode step
// (model/nn/llama.*, whose CPU batched masked attention computes the same numbers) hands to the
// CUDA kernel, LibTorch's FlashAttention-2 varlen entry `at::_flash_attention_forward` with
// `seqused_k` (schema of LibTorch >= 2.5, checked against 2.11/2.12's native_functions.yaml).
// Stateless; no host sync; capturable in a CUDA graph when max_q and max_k are fixed per bucket.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace flexvqa {

// Where each sequence's queries and keys are. All device tensors, int32, contiguous.
struct VarlenBatch {
  // [B + 1]: sequence b's queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1 of q
  // (decode: 0, 1, ..., B).
  at::Tensor cu_seqlens_q;
  // [B + 1]: where sequence b's keys start in the flattened pool, slot(b) * max_context (any slot
  // order; with seqused_k the kernel reads only entry b). Entry B: slots * max_context.
  at::Tensor k_start;
  // [B]: how many keys sequence b attends to: its cache length after this step's K/V write.
  at::Tensor seqused_k;
  int64_t max_q = 1;  // Host: the longest query run (decode: 1). Fixed per bucket for graphs.
  int64_t max_k = 0;  // Host: max_context (static: a graph replays it whatever the lengths).
};

// softmax(q k^T * scale) v per sequence. q [total_q, H, Dh]; k_pool, v_pool [slots, max_context,
// Hkv, Dh], one layer, contiguous, H % Hkv == 0 (grouped-query attention natively), fp16 or bf16,
// Dh % 8 == 0 and <= 256; the step's new K/V already written into the pool. `causal`: bottom-right
// aligned, so query i of a run of n sees keys j < seqused_k - n + i + 1 (a prefill chunk after
// cached keys; decode needs none). Returns [total_q, H, Dh]. Throws c10::Error where
// VarlenAttentionCudaBuilt() is false or the inputs break the contract.
at::Tensor VarlenAttentionCuda(const at::Tensor& q, const at::Tensor& k_pool,
                               const at::Tensor& v_pool, const VarlenBatch& batch, double scale,
                               bool causal);

// True when this binary has the CUDA entry point (FLEXVQA_CUDA and LibTorch >= 2.5).
bool VarlenAttentionCudaBuilt();

}  // namespace flexvqa
