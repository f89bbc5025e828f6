#include "model/nn/batch_sampler.h"

#include <limits>
#include <string>

#include "model/nn/sampler.h"

namespace flexvqa {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Host staging buffer: pinned on CUDA, so that a non_blocking upload is really asynchronous.
at::Tensor HostBuffer(int64_t n, at::ScalarType dtype, const at::Device& device) {
  return at::zeros({n}, at::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda()));
}

}  // namespace

BatchSampler::BatchSampler(int slots, int vocab, int max_batch, at::Device device)
    : slots_(slots), vocab_(vocab), max_batch_(max_batch), device_(device), host_(slots + 1) {
  const auto on = at::TensorOptions().device(device);
  seen_ = at::zeros({slots + 1, vocab}, on.dtype(at::kBool));
  fparams_ = at::ones({slots + 1, 2}, on.dtype(at::kFloat));
  pthresh_ = at::full({slots + 1, 1}, -1.0, on.dtype(at::kDouble));
  kindex_ = at::zeros({slots + 1, 1}, on.dtype(at::kLong));
  greedy_ = at::ones({slots + 1, 1}, on.dtype(at::kBool));
  host_slots_ = HostBuffer(max_batch, at::kLong, device);
  host_uniform_ = HostBuffer(max_batch, at::kDouble, device);
  // On CPU the step reads the host buffers themselves (no upload to make).
  slots_dev_ = device.is_cpu() ? host_slots_ : at::zeros({max_batch}, on.dtype(at::kLong));
  uniform_dev_ = device.is_cpu() ? host_uniform_ : at::zeros({max_batch}, on.dtype(at::kDouble));
  arange_ = at::arange(vocab, on.dtype(at::kLong)).unsqueeze(0);
}

Status BatchSampler::Admit(int slot, const SamplingParams& params,
                           const std::vector<int32_t>& history) {
  if (slot < 0 || slot >= slots_) {
    return InvalidArgumentError("BatchSampler::Admit: slot " + std::to_string(slot) +
                                " outside [0, " + std::to_string(slots_) + ")");
  }
  HostSlot& host = host_[slot];
  host.admitted = true;
  host.greedy = params.temperature == 0.0f;
  host.rng.seed(params.seed);
  // The processors' constants per slot, in the dtypes SequenceSampler computes them in.
  const float divisor = host.greedy ? 1.0f : params.temperature;
  fparams_.select(0, slot).copy_(at::tensor({divisor, params.repetition_penalty}));
  // TopPLogitsWarper removes while cumulative <= 1 - top_p (double, as the host loop); top_p >= 1
  // is off, and no cumulative probability is <= -1.
  pthresh_.select(0, slot).fill_(params.top_p >= 1.0f ? -1.0 : 1.0 - double{params.top_p});
  // TopKLogitsWarper is off for top_k <= 0 or >= vocab: index 0 is the minimum, nothing is below.
  const bool top_k_on = params.top_k > 0 && params.top_k < vocab_;
  kindex_.select(0, slot).fill_(top_k_on ? vocab_ - params.top_k : 0);
  greedy_.select(0, slot).fill_(host.greedy);
  std::vector<int64_t> tokens;
  for (int32_t t : history) {
    if (t >= 0 && t < vocab_) tokens.push_back(t);
  }
  at::Tensor row = seen_.select(0, slot);
  row.zero_();
  if (!tokens.empty()) row.index_fill_(0, at::tensor(tokens).to(device_), true);
  return Status::Ok();
}

Status BatchSampler::Stage(const std::vector<int>& slots) {
  const int rows = static_cast<int>(slots.size());
  if (rows < 1 || rows > max_batch_) {
    return InvalidArgumentError("BatchSampler::Stage: " + std::to_string(rows) +
                                " rows, expected 1.." + std::to_string(max_batch_));
  }
  int64_t* slot_data = host_slots_.data_ptr<int64_t>();
  double* uniform = host_uniform_.data_ptr<double>();
  for (int i = 0; i < rows; ++i) {
    const int slot = slots[i];
    if (slot < 0 || slot > slots_ || (slot < slots_ && !host_[slot].admitted)) {
      return InvalidArgumentError("BatchSampler::Stage: slot " + std::to_string(slot) +
                                  " is not admitted");
    }
    HostSlot& host = host_[slot];
    slot_data[i] = slot;
    // One draw per sampled token, as SequenceSampler::Sample: the stream depends only on the seed.
    uniform[i] = host.greedy ? 0.0 : NextUniform(host.rng);
  }
  staged_ = rows;
  if (!device_.is_cpu()) {
    slots_dev_.narrow(0, 0, rows).copy_(host_slots_.narrow(0, 0, rows), /*non_blocking=*/true);
    uniform_dev_.narrow(0, 0, rows).copy_(host_uniform_.narrow(0, 0, rows), /*non_blocking=*/true);
  }
  return Status::Ok();
}

at::Tensor BatchSampler::Sample(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == staged_ && logits.size(1) == vocab_,
              "BatchSampler::Sample: logits ", logits.sizes(), ", staged ", staged_, " x ", vocab_);
  TORCH_CHECK(logits.scalar_type() == at::kFloat, "BatchSampler::Sample: fp32 logits expected");
  const int64_t v = vocab_;
  const at::Tensor slots = slots_dev_.narrow(0, 0, staged_);  // [B]
  const at::Tensor params = fparams_.index_select(0, slots);  // [B, 2]
  const at::Tensor divisor = params.narrow(1, 0, 1);          // [B, 1]
  const at::Tensor penalty = params.narrow(1, 1, 1);          // [B, 1]

  // RepetitionPenaltyLogitsProcessor on the seen tokens; x * 1 and x / 1 are x, so a penalty of 1
  // changes nothing and needs no branch.
  const at::Tensor seen = seen_.index_select(0, slots);  // [B, V]
  const at::Tensor penalized =
      at::where(seen, at::where(logits < 0, logits * penalty, logits / penalty), logits);
  const at::Tensor greedy_ids = penalized.argmax(1, /*keepdim=*/true);  // [B, 1], first maximum

  // Temperature, then top-k and top-p, both in one stable ascending order (SequenceSampler's
  // top-p sort): top-k removes a prefix of it, and the removed tokens' probabilities are exact
  // zeros in the cumulative sums, so top-p over that order equals top-p after re-sorting.
  const at::Tensor scaled = penalized / divisor;  // [B, V] fp32, as the host's logits[i] /= t
  auto [sorted, order] = at::sort(scaled, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  const at::Tensor kth = sorted.gather(1, kindex_.index_select(0, slots));  // [B, 1]
  const at::Tensor topk_removed = sorted < kth;                             // ties with kth stay
  const at::Tensor max_logit = sorted.narrow(1, v - 1, 1).to(at::kDouble);  // [B, 1]
  // Probabilities in double, summed in order (CPU cumsum is sequential: the host loop's sums).
  const at::Tensor probs =
      (sorted.masked_fill(topk_removed, kNegInf).to(at::kDouble) - max_logit).exp();
  const at::Tensor total = probs.cumsum(1).narrow(1, v - 1, 1);
  const at::Tensor topp_removed = (probs / total).cumsum(1) <= pthresh_.index_select(0, slots);
  topp_removed.narrow(1, v - 1, 1).fill_(false);  // The most likely token always stays.
  // `order` is a permutation of each row, so scatter_ writes every element.
  const at::Tensor removed =
      at::empty_like(topp_removed).scatter_(1, order, at::logical_or(topk_removed, topp_removed));

  // DrawFromLogits: inverse CDF in vocabulary order at u * total, then back to the last kept token
  // (only reachable when rounding puts the target at the total).
  const at::Tensor weights =
      (scaled.masked_fill(removed, kNegInf).to(at::kDouble) - max_logit).exp();
  const at::Tensor cumulative = weights.cumsum(1);  // [B, V] double
  const at::Tensor target =
      uniform_dev_.narrow(0, 0, staged_).unsqueeze(1) * cumulative.narrow(1, v - 1, 1);
  const at::Tensor index =
      at::searchsorted(cumulative, target, /*out_int32=*/false, /*right=*/true).clamp_max_(v - 1);
  const at::Tensor last_kept = std::get<0>(at::cummax(arange_ * removed.logical_not(), 1));
  const at::Tensor drawn = last_kept.gather(1, index);  // [B, 1]

  const at::Tensor ids = at::where(greedy_.index_select(0, slots), greedy_ids, drawn).squeeze(1);
  // One indexed write marks every row's token seen (padding rows write the scratch row).
  seen_.view({-1}).index_fill_(0, at::add(ids, slots, v), true);
  return ids;  // [B] int64
}

}  // namespace flexvqa
