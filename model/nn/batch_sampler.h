// Next-token choice for every row of a decode (or prefill) step on the model's device, with the
// numbers of SequenceSampler (model/nn/sampler.h, Hugging Face's processors): the same token for
// the same logits, seed and history. Worker thread only; owns per-slot device buffers (parameters
// and a seen-token mask) and each slot's seeded host generator. Sample has no host sync and
// dispatches the same ops with the same shapes whatever the parameters (CUDA-graph capturable).
//
// Per step, with B rows (bucket size; padding rows use scratch_slot()):
//   sampler.Stage(slots);                       // host: slot per row, one uniform draw per
//                                               // sampling row, uploaded (pinned, non_blocking)
//   ... the step body: logits [B, V] fp32 ...
//   at::Tensor ids = sampler.Sample(logits);    // device [B] int64; seen masks updated
//   ids.to(at::kCPU)                            // the caller's one sync per step
// Stage must not run again before the previous step's ids were read (its host buffer is reused).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <vector>

#include "model/engine.h"
#include "model/status.h"

namespace flexvqa {

class BatchSampler {
 public:
  // `slots`: the KV cache's slot count (rows name slots 0..slots-1); `vocab`: V of the logits;
  // `max_batch`: the largest B of a step. Allocates (slots + 1) x vocab bytes of seen mask on
  // `device`.
  BatchSampler(int slots, int vocab, int max_batch, at::Device device);

  // A new sequence in `slot`: its parameters, its generator seeded from params.seed, and its seen
  // mask set to the `history` tokens in [0, vocab) (others, e.g. image placeholders, are ignored).
  // A few small uploads; call at admission, not inside a step. INVALID_ARGUMENT for a bad slot.
  Status Admit(int slot, const SamplingParams& params, const std::vector<int32_t>& history);

  // Host part of a step: row i samples for `slots[i]` (scratch_slot() for padding). Draws one
  // uniform number from each sampling row's generator (as SequenceSampler::Sample does) and
  // uploads the slots and numbers into the static device buffers Sample reads. INVALID_ARGUMENT
  // for more than max_batch rows, a slot out of range or never admitted.
  Status Stage(const std::vector<int>& slots);

  // Device part: logits [B, V] fp32 on the device, B = the staged row count (checked; throws
  // c10::Error otherwise, as every LibTorch op may). Returns the chosen ids [B] int64 on the device
  // and marks them seen. Greedy and sampling rows share every op (selected by masks).
  at::Tensor Sample(const at::Tensor& logits);

  // The slot padding rows use: greedy, never admitted, its seen row is scratch.
  int scratch_slot() const { return slots_; }
  int staged_rows() const { return staged_; }

 private:
  struct HostSlot {
    bool admitted = false;
    bool greedy = true;  // temperature == 0: no draw.
    std::mt19937_64 rng;
  };

  int slots_;
  int vocab_;
  int max_batch_;
  at::Device device_;
  std::vector<HostSlot> host_;
  int staged_ = 0;
  // Per slot (slots + 1 rows), written at Admit.
  at::Tensor seen_;     // [S + 1, V] bool: tokens the repetition penalty applies to.
  at::Tensor fparams_;  // [S + 1, 2] float: temperature divisor (1 when greedy), penalty.
  at::Tensor pthresh_;  // [S + 1, 1] double: remove while cumulative p <= this (-1: top-p off).
  at::Tensor kindex_;   // [S + 1, 1] int64: ascending-sort index of the k-th largest (0: off).
  at::Tensor greedy_;   // [S + 1, 1] bool.
  // Per step: pinned host staging (CPU memory on CPU) and the static device buffers.
  at::Tensor host_slots_, host_uniform_;  // [max_batch] int64, double
  at::Tensor slots_dev_, uniform_dev_;    // [max_batch] int64, double
  at::Tensor arange_;                     // [1, V] int64
};

}  // namespace flexvqa
