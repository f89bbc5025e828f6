// The decode step's structure (issue 9) cannot regress: on tiny checkpoints written here, counted
// as bench/step_ops counts (bench/step_counter.h: kernel-launching ATen leaf ops and host syncs on
// the calling thread), every mode's decode step dispatches the identical op sequence with
// identical shapes at different context lengths within a batch bucket ("static"), at most one
// host sync (the sampled ids), and no more than 1.1x the ops of batch 1 at batch 32, the same
// ops whichever requests (with or without an image) fill a bucket; and a
// decoder layer costs at most the budget of ops per decode step (full: 40 per layer;
// flex: 60 per FlexAttention layer), from two depths of the tiny model as step_ops measures it.
// Deterministic: op counts, not times.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "bench/step_counter.h"
#include "model/engine.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

constexpr int kBatch = 32;
constexpr int kSteps = 3;  // Counted decode steps: the first and the last are compared.

// A tiny engine of `mode` at `depth` layers (0: the tiny default) and its prepared request.
struct TinyEngine {
  std::unique_ptr<Engine> engine;
  std::shared_ptr<const PreparedRequest> request;
  std::shared_ptr<const PreparedRequest> text_request;  // The same question, no image.
};

TinyEngine MakeEngine(const std::string& mode, int depth, int max_sequences) {
  TinyLlavaOptions options = mode == "flex" ? TinyFlexLlavaOptions() : TinyLlavaOptions();
  options.mode = mode;
  if (depth > 0) options.num_layers = depth;
  const std::string dir = ::testing::TempDir() + "flexvqa_step_structure_" + mode + "_L" +
                          std::to_string(options.num_layers) + "_" + std::to_string(getpid());
  TinyEngine out;
  EXPECT_TRUE(WriteTinyLlava(dir, options).ok());
  EngineOptions engine_options;
  engine_options.model_dir = dir;
  engine_options.max_sequences = max_sequences;
  auto engine = CreateLlavaEngine(engine_options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  if (!engine.ok()) return out;
  GenerationRequest request;
  request.turns.push_back({ChatTurn::Role::kUser, "Describe this picture in detail."});
  std::ifstream in(FLEXVQA_SOURCE_DIR "/client/examples/shapes.jpg", std::ios::binary);
  EXPECT_TRUE(in.good());
  request.image = ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
  request.sampling.max_new_tokens = kSteps + 2;  // Prefill's token, one warm step, kSteps.
  request.sampling.ignore_eos = true;            // Greedy, never finished early.
  auto prepared = (*engine)->Prepare(request);
  EXPECT_TRUE(prepared.ok()) << prepared.status().ToString();
  if (!prepared.ok()) return out;
  request.image.reset();
  request.turns[0].text = "Hi.";
  auto text = (*engine)->Prepare(request);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  if (!text.ok()) return out;
  out.engine = std::move(*engine);
  out.request = *prepared;
  out.text_request = *text;
  return out;
}

class StepStructureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(StepStructureTest, DecodeIsStaticFlatInTheBatchAndSyncsOnce) {
  const std::string mode = GetParam();
  TinyEngine tiny = MakeEngine(mode, 0, kBatch);
  ASSERT_TRUE(tiny.engine && tiny.request);
  InstallStepCounter();
  MeasuredSteps one, many;
  ASSERT_TRUE(MeasureSteps(*tiny.engine, tiny.request, 1, kSteps, &one));
  ASSERT_TRUE(MeasureSteps(*tiny.engine, tiny.request, kBatch, kSteps, &many));
  ASSERT_EQ(many.decode.size(), static_cast<size_t>(kSteps));
  // The first and last counted steps run at context lengths kSteps - 1 apart.
  EXPECT_TRUE(DecodeIsStatic(one)) << mode << ": batch 1 decode differs between steps";
  EXPECT_TRUE(DecodeIsStatic(many)) << mode << ": batch " << kBatch << " decode differs";
  const double ops_one = MeanDecode(one, &StepCounts::leaf_ops);
  const double ops_many = MeanDecode(many, &StepCounts::leaf_ops);
  EXPECT_GT(ops_one, 0);
  EXPECT_LE(ops_many, 1.1 * ops_one) << mode << ": " << ops_many << " ops per step at batch "
                                     << kBatch << ", " << ops_one << " at batch 1";
  for (const MeasuredSteps* m : {&one, &many}) {
    for (const StepCounts& step : m->decode) EXPECT_LE(step.syncs, 1) << mode;
  }
}

// What a replayed CUDA graph needs beyond "static": a bucket's decode step dispatches the same ops
// with the same shapes whichever requests fill it (here an image request and a text-only one with
// another prompt length), so one capture per bucket serves every batch (flex and xattn read their
// per-request state from slot pools by slot index, model/modes/mode.h SlotPools).
TEST_P(StepStructureTest, DecodeIsTheSameWhicheverRequestsRun) {
  const std::string mode = GetParam();
  TinyEngine tiny = MakeEngine(mode, 0, 2);
  ASSERT_TRUE(tiny.engine && tiny.request && tiny.text_request);
  EXPECT_NE(tiny.request->prompt_tokens, tiny.text_request->prompt_tokens);
  InstallStepCounter();
  MeasuredSteps image, text;
  ASSERT_TRUE(MeasureSteps(*tiny.engine, tiny.request, 2, kSteps, &image));
  ASSERT_TRUE(MeasureSteps(*tiny.engine, tiny.text_request, 2, kSteps, &text));
  ASSERT_FALSE(image.decode.back().signature.empty());
  EXPECT_EQ(image.decode.back().signature, text.decode.back().signature)
      << mode << ": the decode step of bucket 2 depends on the requests it runs";
}

INSTANTIATE_TEST_SUITE_P(Modes, StepStructureTest,
                         ::testing::Values("full", "flex", "hd", "composite", "xattn", "pooled"),
                         [](const auto& info) { return std::string(info.param); });

// Ops per decoder layer per decode step: (deep - shallow) / 2 at batch 1, as step_ops. flex's
// shallow depth is 4 with N_SA = 2, so the two added layers are FlexAttention layers that both
// attend to HR keys and select for the next one.
struct LayerBudget {
  const char* mode;
  int shallow;
  double max_ops;
};

class LayerBudgetTest : public ::testing::TestWithParam<LayerBudget> {};

TEST_P(LayerBudgetTest, DecodeOpsPerLayerWithinTheBudget) {
  const LayerBudget budget = GetParam();
  InstallStepCounter();
  double ops[2];
  for (int i = 0; i < 2; ++i) {
    TinyEngine tiny = MakeEngine(budget.mode, budget.shallow + 2 * i, 1);
    ASSERT_TRUE(tiny.engine && tiny.request);
    MeasuredSteps m;
    ASSERT_TRUE(MeasureSteps(*tiny.engine, tiny.request, 1, kSteps, &m));
    ops[i] = MeanDecode(m, &StepCounts::leaf_ops);
  }
  const double per_layer = (ops[1] - ops[0]) / 2;
  EXPECT_GT(per_layer, 0);
  EXPECT_LE(per_layer, budget.max_ops) << budget.mode << ": " << per_layer << " ops per layer";
}

INSTANTIATE_TEST_SUITE_P(Modes, LayerBudgetTest,
                         ::testing::Values(LayerBudget{"full", 2, 40}, LayerBudget{"flex", 4, 60}),
                         [](const auto& info) { return std::string(info.param.mode); });

}  // namespace
}  // namespace flexvqa
