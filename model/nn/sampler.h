// Next-token choice for one sequence, as Hugging Face's generate applies its processors: repetition
// penalty over the prompt's and generated tokens, then (when sampling) temperature, top-k, top-p,
// and a draw. The draw uses the sequence's own generator seeded from SamplingParams::seed, so the
// same request with the same seed gives the same tokens whatever else is in the batch. Torch-free
// (works on a host row of fp32 logits); one instance per sequence, worker thread only.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_set>
#include <vector>

#include "model/engine.h"

namespace flexvqa {

class SequenceSampler {
 public:
  // `history`: the prompt's token ids (placeholders outside the vocabulary are ignored).
  SequenceSampler(const SamplingParams& params, const std::vector<int32_t>& history);

  // True when the choice is a plain argmax of the raw logits (greedy, no penalty): callers may then
  // take the argmax on the device and skip copying logits.
  bool IsPlainGreedy() const;

  // Chooses the next token from `logits` [vocab] (modified in place) and records it in the history.
  int32_t Sample(float* logits, int vocab);
  // Records a token chosen elsewhere (device argmax) in the history.
  void Accept(int32_t token);

 private:
  SamplingParams params_;
  std::unordered_set<int32_t> seen_;  // Tokens the repetition penalty applies to.
  std::mt19937_64 rng_;
};

// The steps, exposed for tests. Each works on one row of logits in place.
void ApplyRepetitionPenalty(float* logits, int vocab, const std::unordered_set<int32_t>& tokens,
                            float penalty);
void ApplyTopK(float* logits, int vocab, int top_k);
void ApplyTopP(float* logits, int vocab, float top_p);
// Index of the first maximum (as torch.argmax).
int32_t ArgMax(const float* logits, int vocab);
// Draws from softmax(logits) by inverse CDF at uniform u in [0, 1).
int32_t DrawFromLogits(const float* logits, int vocab, double u);
// The next uniform number in [0, 1) of a sequence's stream: 53 random bits of one draw (the
// stream BatchSampler reproduces).
double NextUniform(std::mt19937_64& rng);

}  // namespace flexvqa
