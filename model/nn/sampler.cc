#include "model/nn/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace flexvqa {
namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

void ApplyRepetitionPenalty(float* logits, int vocab, const std::unordered_set<int32_t>& tokens,
                            float penalty) {
  // RepetitionPenaltyLogitsProcessor: a seen token's positive logit is divided by the penalty, a
  // negative one multiplied, so the penalty always lowers its probability.
  for (int32_t t : tokens) {
    if (t < 0 || t >= vocab) continue;
    logits[t] = logits[t] < 0 ? logits[t] * penalty : logits[t] / penalty;
  }
}

void ApplyTopK(float* logits, int vocab, int top_k) {
  // TopKLogitsWarper: remove every logit below the k-th largest (ties with it are kept).
  if (top_k <= 0 || top_k >= vocab) return;
  std::vector<float> sorted(logits, logits + vocab);
  std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(),
                   std::greater<float>());
  const float kth = sorted[top_k - 1];
  for (int i = 0; i < vocab; ++i) {
    if (logits[i] < kth) logits[i] = kNegInf;
  }
}

void ApplyTopP(float* logits, int vocab, float top_p) {
  // TopPLogitsWarper: sort ascending, remove the tokens whose cumulative probability is <= 1 -
  // top_p, always keeping the most likely one.
  if (top_p >= 1.0f) return;
  std::vector<int> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] < logits[b]; });
  const float max_logit = logits[order.back()];
  double total = 0.0;
  std::vector<double> probs(vocab);
  for (int i = 0; i < vocab; ++i) {
    probs[i] = std::exp(static_cast<double>(logits[order[i]]) - max_logit);
    total += probs[i];
  }
  double cumulative = 0.0;
  for (int i = 0; i < vocab - 1; ++i) {
    cumulative += probs[i] / total;
    if (cumulative <= 1.0 - top_p) logits[order[i]] = kNegInf;
  }
}

int32_t ArgMax(const float* logits, int vocab) {
  return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
}

int32_t DrawFromLogits(const float* logits, int vocab, double u) {
  const float max_logit = *std::max_element(logits, logits + vocab);
  std::vector<double> cumulative(vocab);
  double total = 0.0;
  for (int i = 0; i < vocab; ++i) {
    total += logits[i] == kNegInf ? 0.0 : std::exp(static_cast<double>(logits[i]) - max_logit);
    cumulative[i] = total;
  }
  const double target = u * total;
  const auto it = std::upper_bound(cumulative.begin(), cumulative.end(), target);
  int32_t index = static_cast<int32_t>(it - cumulative.begin());
  if (index >= vocab) index = vocab - 1;
  // Never land on a removed token (possible only through rounding at the very end).
  while (index > 0 && logits[index] == kNegInf) --index;
  return index;
}

double NextUniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

SequenceSampler::SequenceSampler(const SamplingParams& params, const std::vector<int32_t>& history)
    : params_(params), rng_(params.seed) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : history) seen_.insert(t);
  }
}

bool SequenceSampler::IsPlainGreedy() const {
  return params_.temperature == 0.0f && params_.repetition_penalty == 1.0f;
}

void SequenceSampler::Accept(int32_t token) {
  if (params_.repetition_penalty != 1.0f) seen_.insert(token);
}

int32_t SequenceSampler::Sample(float* logits, int vocab) {
  if (params_.repetition_penalty != 1.0f) {
    ApplyRepetitionPenalty(logits, vocab, seen_, params_.repetition_penalty);
  }
  int32_t token;
  if (params_.temperature == 0.0f) {
    token = ArgMax(logits, vocab);
  } else {
    for (int i = 0; i < vocab; ++i) logits[i] /= params_.temperature;
    ApplyTopK(logits, vocab, params_.top_k);
    ApplyTopP(logits, vocab, params_.top_p);
    token = DrawFromLogits(logits, vocab, NextUniform(rng_));
  }
  Accept(token);
  return token;
}

}  // namespace flexvqa
