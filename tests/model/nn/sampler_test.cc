// SequenceSampler and its steps against hand-worked cases of Hugging Face's logits processors.
#include "model/nn/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>

namespace flexvqa {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::vector<float> RandomLogits(int vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> logits(vocab);
  for (float& x : logits) x = dist(gen);
  return logits;
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 3.0f};
  ApplyRepetitionPenalty(logits.data(), 4, {0, 1, 7, -5}, 2.0f);  // Out-of-range ids are ignored.
  EXPECT_FLOAT_EQ(logits[0], 1.0f);
  EXPECT_FLOAT_EQ(logits[1], -4.0f);
  EXPECT_FLOAT_EQ(logits[2], 1.0f);
  EXPECT_FLOAT_EQ(logits[3], 3.0f);
}

TEST(SamplerTest, TopKKeepsTheKLargestAndTiesWithTheKth) {
  std::vector<float> logits = {1.0f, 5.0f, 3.0f, 3.0f, 0.0f};
  ApplyTopK(logits.data(), 5, 2);
  EXPECT_EQ(logits[0], kNegInf);
  EXPECT_EQ(logits[1], 5.0f);
  EXPECT_EQ(logits[2],
            3.0f);  // Tie with the 2nd largest: kept, as torch's `scores < kth` keeps it.
  EXPECT_EQ(logits[3], 3.0f);
  EXPECT_EQ(logits[4], kNegInf);
}

TEST(SamplerTest, TopPKeepsTheSmallestSetAboveP) {
  // Probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs).
  std::vector<float> logits = {std::log(0.5f), std::log(0.25f), std::log(0.125f), std::log(0.125f)};
  std::vector<float> a = logits;
  ApplyTopP(a.data(), 4, 0.7f);  // Needs 0.5 + 0.25.
  EXPECT_NE(a[0], kNegInf);
  EXPECT_NE(a[1], kNegInf);
  EXPECT_EQ(a[2], kNegInf);
  EXPECT_EQ(a[3], kNegInf);
  std::vector<float> b = logits;
  ApplyTopP(b.data(), 4, 0.01f);  // Always keeps the most likely token.
  EXPECT_NE(b[0], kNegInf);
  EXPECT_EQ(b[1], kNegInf);
  std::vector<float> c = logits;
  ApplyTopP(c.data(), 4, 1.0f);  // Off.
  EXPECT_EQ(c, logits);
}

TEST(SamplerTest, ArgMaxTakesTheFirstMaximum) {
  const std::vector<float> logits = {1.0f, 4.0f, 4.0f, 2.0f};
  EXPECT_EQ(ArgMax(logits.data(), 4), 1);
}

TEST(SamplerTest, DrawFollowsTheCumulativeDistribution) {
  const std::vector<float> logits = {std::log(0.25f), kNegInf, std::log(0.75f)};
  EXPECT_EQ(DrawFromLogits(logits.data(), 3, 0.0), 0);
  EXPECT_EQ(DrawFromLogits(logits.data(), 3, 0.2499), 0);
  EXPECT_EQ(DrawFromLogits(logits.data(), 3, 0.2501), 2);
  EXPECT_EQ(DrawFromLogits(logits.data(), 3, 0.9999999), 2);
}

TEST(SamplerTest, GreedyIsArgMaxAndPlain) {
  SamplingParams params;
  SequenceSampler sampler(params, {});
  EXPECT_TRUE(sampler.IsPlainGreedy());
  std::vector<float> logits = RandomLogits(100, 3);
  const int32_t expected = ArgMax(logits.data(), 100);
  EXPECT_EQ(sampler.Sample(logits.data(), 100), expected);
}

TEST(SamplerTest, GreedyWithPenaltyAvoidsRepeats) {
  SamplingParams params;
  params.repetition_penalty = 100.0f;
  SequenceSampler sampler(params, {});
  EXPECT_FALSE(sampler.IsPlainGreedy());
  const std::vector<float> base = {5.0f, 4.0f, 3.0f};
  std::vector<float> first = base, second = base;
  EXPECT_EQ(sampler.Sample(first.data(), 3), 0);
  EXPECT_EQ(sampler.Sample(second.data(), 3), 1);  // Token 0 was penalised after being chosen.
}

std::vector<int32_t> SampleSteps(const SamplingParams& params, int steps) {
  SequenceSampler sampler(params, {1, 2, 3});
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) {
    std::vector<float> logits = RandomLogits(500, 100 + i);
    out.push_back(sampler.Sample(logits.data(), 500));
  }
  return out;
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  SamplingParams params;
  params.temperature = 1.5f;
  params.top_k = 50;
  params.top_p = 0.95f;
  params.repetition_penalty = 1.1f;
  params.seed = 42;
  const auto a = SampleSteps(params, 64);
  EXPECT_EQ(a, SampleSteps(params, 64));
  params.seed = 43;
  EXPECT_NE(a, SampleSteps(params, 64));
}

TEST(SamplerTest, SamplingFrequenciesFollowTheDistribution) {
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 7;
  SequenceSampler sampler(params, {});
  const std::vector<float> base = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  std::map<int, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    std::vector<float> logits = base;
    ++counts[sampler.Sample(logits.data(), 3)];
  }
  EXPECT_NEAR(counts[0] / static_cast<double>(n), 0.6, 0.02);
  EXPECT_NEAR(counts[1] / static_cast<double>(n), 0.3, 0.02);
  EXPECT_NEAR(counts[2] / static_cast<double>(n), 0.1, 0.02);
}

TEST(SamplerTest, TopKOneIsGreedyEvenWhenSampling) {
  SamplingParams params;
  params.temperature = 5.0f;
  params.top_k = 1;
  params.seed = 1;
  SequenceSampler sampler(params, {});
  for (int i = 0; i < 20; ++i) {
    std::vector<float> logits = RandomLogits(64, i);
    const int32_t best = ArgMax(logits.data(), 64);
    EXPECT_EQ(sampler.Sample(logits.data(), 64), best);
  }
}

}  // namespace
}  // namespace flexvqa
