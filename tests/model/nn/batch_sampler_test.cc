// BatchSampler against SequenceSampler (the host reference, itself checked against Hugging Face's
// processors in sampler_test.cc): the same token ids, bit for bit, over random batches of mixed
// parameters; and the step's structure (same ops and shapes whatever the parameters, as many ops at
// batch 64 as at batch 1, no host sync) counted with RecordFunction.
#include "model/nn/batch_sampler.h"

#include <ATen/record_function.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/nn/sampler.h"

namespace flexvqa {
namespace {

// Logits [rows, vocab]: normal(0, 2), or rounded to halves so that ties are common.
at::Tensor RandomLogits(int rows, int vocab, bool ties, std::mt19937& gen) {
  std::normal_distribution<float> dist(0.0f, 2.0f);
  at::Tensor t = at::empty({rows, vocab}, at::kFloat);
  float* data = t.data_ptr<float>();
  for (int i = 0; i < rows * vocab; ++i) data[i] = ties ? std::round(dist(gen) * 2) / 2 : dist(gen);
  return t;
}

SamplingParams RandomParams(int vocab, std::mt19937& gen) {
  auto pick = [&](auto values) { return values[gen() % values.size()]; };
  SamplingParams p;
  p.seed = gen();
  const int kind = gen() % 8;
  const bool sample = kind >= 2;
  p.temperature = sample ? pick(std::vector<float>{0.05f, 0.3f, 0.7f, 1.0f, 1.5f}) : 0.0f;
  if (kind == 1 || kind >= 6)
    p.repetition_penalty = pick(std::vector<float>{0.8f, 1.1f, 1.5f, 3.0f});
  if (kind == 3 || kind == 5 || kind == 7)
    p.top_k = pick(std::vector<int>{1, 2, 5, 20, vocab - 1, vocab, vocab + 5});
  if (kind == 4 || kind == 5 || kind == 7)
    p.top_p = pick(std::vector<float>{0.05f, 0.3f, 0.5f, 0.9f, 0.95f, 1.0f});
  return p;
}

std::vector<int32_t> RandomHistory(int vocab, std::mt19937& gen) {
  std::vector<int32_t> h(gen() % 40);
  for (int32_t& t : h) t = static_cast<int32_t>(gen() % (vocab + 10)) - 5;  // Some outside V.
  return h;
}

// Runs `cases` random cases of `steps` steps: `slots` sequences with random parameters, each step
// a random subset of them in random order plus padding rows, every row's token compared with its
// own SequenceSampler's.
void ExpectParity(int vocab, int cases, int steps, uint32_t seed) {
  std::mt19937 gen(seed);
  const int slots = 6, max_batch = 8;
  for (int c = 0; c < cases; ++c) {
    BatchSampler sampler(slots, vocab, max_batch, at::Device(at::kCPU));
    std::vector<std::unique_ptr<SequenceSampler>> host;
    std::vector<SamplingParams> params;
    for (int s = 0; s < slots; ++s) {
      params.push_back(RandomParams(vocab, gen));
      const std::vector<int32_t> history = RandomHistory(vocab, gen);
      host.push_back(std::make_unique<SequenceSampler>(params.back(), history));
      ASSERT_TRUE(sampler.Admit(s, params.back(), history).ok());
    }
    const bool ties = gen() % 2 == 0;
    for (int step = 0; step < steps; ++step) {
      std::vector<int> rows(slots);
      for (int s = 0; s < slots; ++s) rows[s] = s;
      std::shuffle(rows.begin(), rows.end(), gen);
      rows.resize(1 + gen() % slots);
      const int real = static_cast<int>(rows.size());
      for (int pad = gen() % 3; pad > 0; --pad) rows.push_back(sampler.scratch_slot());
      const at::Tensor logits = RandomLogits(static_cast<int>(rows.size()), vocab, ties, gen);
      ASSERT_TRUE(sampler.Stage(rows).ok());
      const at::Tensor ids = sampler.Sample(logits.clone());
      ASSERT_EQ(ids.sizes(), at::IntArrayRef({static_cast<int64_t>(rows.size())}));
      for (int i = 0; i < real; ++i) {
        at::Tensor row = logits[i].clone();
        const int32_t expected = host[rows[i]]->Sample(row.data_ptr<float>(), vocab);
        const SamplingParams& p = params[rows[i]];
        ASSERT_EQ(ids[i].item<int64_t>(), expected)
            << "case " << c << " step " << step << " row " << i << " of " << rows.size()
            << ": temperature " << p.temperature << " top_k " << p.top_k << " top_p " << p.top_p
            << " penalty " << p.repetition_penalty << (ties ? " (ties)" : "");
      }
    }
  }
}

TEST(BatchSamplerTest, SameTokensAsSequenceSamplerSmallVocabularies) { ExpectParity(7, 300, 6, 1); }
TEST(BatchSamplerTest, SameTokensAsSequenceSamplerMediumVocabularies) {
  ExpectParity(257, 150, 6, 2);
}
TEST(BatchSamplerTest, SameTokensAsSequenceSamplerLlamaVocabulary) { ExpectParity(32000, 4, 4, 3); }

TEST(BatchSamplerTest, MixedRowsInOneBatchEachFollowTheirOwnRule) {
  const int vocab = 5;
  BatchSampler sampler(3, vocab, 4, at::Device(at::kCPU));
  SamplingParams greedy;
  SamplingParams penalised;
  penalised.repetition_penalty = 100.0f;
  SamplingParams top1;  // Sampling, but top-k 1 leaves one token.
  top1.temperature = 2.0f;
  top1.top_k = 1;
  ASSERT_TRUE(sampler.Admit(0, greedy, {}).ok());
  ASSERT_TRUE(sampler.Admit(1, penalised, {0}).ok());  // The prompt's token 0 is penalised.
  ASSERT_TRUE(sampler.Admit(2, top1, {}).ok());
  const at::Tensor logits =
      at::tensor({5.0f, 4.0f, 3.0f, 3.0f, 1.0f}).unsqueeze(0).repeat({3, 1});  // [3, 5]
  ASSERT_TRUE(sampler.Stage({0, 1, 2}).ok());
  const at::Tensor first = sampler.Sample(logits);
  EXPECT_EQ(first[0].item<int64_t>(), 0);
  EXPECT_EQ(first[1].item<int64_t>(), 1);
  EXPECT_EQ(first[2].item<int64_t>(), 0);
  ASSERT_TRUE(sampler.Stage({1, 0, 2}).ok());  // Another order: rows follow their slots.
  const at::Tensor second = sampler.Sample(logits);
  EXPECT_EQ(second[0].item<int64_t>(), 2);  // 0 and 1 seen: the first of the tied 3s.
  EXPECT_EQ(second[1].item<int64_t>(), 0);
  EXPECT_EQ(second[2].item<int64_t>(), 0);
}

TEST(BatchSamplerTest, SameSeedSameTokensWhateverElseRuns) {
  const int vocab = 300;
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.seed = 11;
  std::mt19937 gen(5);
  std::vector<at::Tensor> logits;
  for (int s = 0; s < 20; ++s) logits.push_back(RandomLogits(1, vocab, false, gen));
  auto run = [&](int company) {
    BatchSampler sampler(4, vocab, 4, at::Device(at::kCPU));
    EXPECT_TRUE(sampler.Admit(3, p, {1, 2}).ok());
    std::vector<int> rows = {3};
    for (int o = 0; o < company; ++o) {
      SamplingParams other = p;
      other.seed = 100 + o;
      EXPECT_TRUE(sampler.Admit(o, other, {}).ok());
      rows.insert(rows.begin(), o);
    }
    std::vector<int64_t> out;
    for (const at::Tensor& l : logits) {
      EXPECT_TRUE(sampler.Stage(rows).ok());
      const at::Tensor batch = at::cat({RandomLogits(company, vocab, false, gen), l});
      out.push_back(sampler.Sample(batch)[company].item<int64_t>());
    }
    return out;
  };
  const std::vector<int64_t> alone = run(0);
  EXPECT_EQ(run(3), alone);
  EXPECT_EQ(run(1), alone);
}

TEST(BatchSamplerTest, StageAndAdmitRejectWhatTheyCannotServe) {
  BatchSampler sampler(2, 10, 2, at::Device(at::kCPU));
  SamplingParams p;
  EXPECT_EQ(sampler.Admit(2, p, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sampler.Admit(-1, p, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sampler.Stage({0}).code(), StatusCode::kInvalidArgument);  // Not admitted.
  ASSERT_TRUE(sampler.Admit(0, p, {}).ok());
  EXPECT_EQ(sampler.Stage({0, 0, 0}).code(), StatusCode::kInvalidArgument);  // Over max_batch.
  EXPECT_EQ(sampler.Stage({}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sampler.Stage({3}).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(sampler.Stage({0, sampler.scratch_slot()}).ok());
  EXPECT_THROW(sampler.Sample(at::zeros({1, 10})), c10::Error);  // Not the staged row count.
  EXPECT_THROW(sampler.Sample(at::zeros({2, 11})), c10::Error);
  EXPECT_THROW(sampler.Sample(at::zeros({2, 10}, at::kDouble)), c10::Error);
}

// What Sample dispatches on this thread: every op's name and input shapes, in order.
struct OpLog {
  std::vector<std::string> ops;
  int leaves = 0;  // Ops that dispatched no other op.
};
thread_local OpLog* t_log = nullptr;
thread_local std::vector<bool> t_has_child;

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  if (t_log == nullptr) return nullptr;
  std::ostringstream op;
  op << fn.name();
  for (const c10::IValue& v : fn.inputs()) {
    if (v.isTensor() && v.toTensor().defined()) op << " " << v.toTensor().sizes();
  }
  t_log->ops.push_back(op.str());
  if (!t_has_child.empty()) t_has_child.back() = true;
  t_has_child.push_back(false);
  return nullptr;
}

void OnEnd(const at::RecordFunction&, at::ObserverContext*) {
  if (t_log == nullptr || t_has_child.empty()) return;
  if (!t_has_child.back()) ++t_log->leaves;
  t_has_child.pop_back();
}

// The ops of one Sample over `rows` rows, all with `params` (row 0 with `first` when given).
OpLog LogSample(int rows, const SamplingParams& params, const SamplingParams* first = nullptr) {
  const int vocab = 500;
  BatchSampler sampler(64, vocab, 64, at::Device(at::kCPU));
  std::vector<int> slots;
  for (int r = 0; r < rows; ++r) {
    EXPECT_TRUE(sampler.Admit(r, r == 0 && first ? *first : params, {1, 2, 3}).ok());
    slots.push_back(r);
  }
  std::mt19937 gen(rows);
  const at::Tensor logits = RandomLogits(rows, vocab, false, gen);
  EXPECT_TRUE(sampler.Stage(slots).ok());
  sampler.Sample(logits);  // Warm (first-call work, if any, is not the step's).
  EXPECT_TRUE(sampler.Stage(slots).ok());
  OpLog log;
  auto handle = at::addThreadLocalCallback(at::RecordFunctionCallback(&OnStart, &OnEnd)
                                               .needsInputs(true)
                                               .scopes({at::RecordScope::FUNCTION}));
  t_log = &log;
  sampler.Sample(logits);
  t_log = nullptr;
  at::removeCallback(handle);
  return log;
}

TEST(BatchSamplerTest, TheStepIsTheSameOpsWhateverTheParametersAndFlatInTheBatch) {
  SamplingParams greedy;
  SamplingParams mixed;
  mixed.temperature = 0.8f;
  mixed.top_k = 40;
  mixed.top_p = 0.9f;
  mixed.repetition_penalty = 1.2f;
  const OpLog all_greedy = LogSample(8, greedy);
  ASSERT_GT(all_greedy.ops.size(), 10u);
  EXPECT_EQ(LogSample(8, mixed).ops, all_greedy.ops);
  EXPECT_EQ(LogSample(8, greedy, &mixed).ops, all_greedy.ops);
  const OpLog one = LogSample(1, mixed), many = LogSample(64, mixed);
  EXPECT_EQ(one.ops.size(), many.ops.size());
  EXPECT_EQ(one.leaves, many.leaves);
  for (const std::string& op : many.ops) {
    for (const char* sync : {"aten::item", "aten::_local_scalar_dense", "aten::nonzero"}) {
      EXPECT_NE(op.rfind(std::string(sync) + " ", 0), 0u) << op;
      EXPECT_NE(op, sync);
    }
  }
  std::printf("BatchSampler::Sample: %zu ops, %d leaves (batch 1 and 64)\n", many.ops.size(),
              many.leaves);
}

}  // namespace
}  // namespace flexvqa
