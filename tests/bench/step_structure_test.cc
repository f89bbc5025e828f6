// The decode step's structure (issue 9) cannot regress: on tiny checkpoints written here, counted
// as bench/step_ops counts (bench/step_counter.h: kernel-launching ATen leaf ops and host syncs on
// the calling thread), every mode's decode step dispatches the identical op sequence with
// identical shapes at different context lengths within a batch bucket ("static"), at most one
// host sync (the sampled ids), and no more than 1.1x the ops of batch 1 at batch 32.
// Deterministic: op counts, not times. flex passes once its selection runs on the device.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>

#include "bench/step_counter.h"
#include "model/engine.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

constexpr int kBatch = 32;
constexpr int kSteps = 3;  // Counted decode steps: the first and the last are compared.

class StepStructureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(StepStructureTest, DecodeIsStaticFlatInTheBatchAndSyncsOnce) {
  const std::string mode = GetParam();
  TinyLlavaOptions options = mode == "flex" ? TinyFlexLlavaOptions() : TinyLlavaOptions();
  options.mode = mode;
  const std::string dir =
      ::testing::TempDir() + "flexvqa_step_structure_" + mode + "_" + std::to_string(getpid());
  ASSERT_TRUE(WriteTinyLlava(dir, options).ok());
  EngineOptions engine_options;
  engine_options.model_dir = dir;
  engine_options.max_sequences = kBatch;
  auto engine = CreateLlavaEngine(engine_options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();

  GenerationRequest request;
  request.turns.push_back({ChatTurn::Role::kUser, "Describe this picture in detail."});
  std::ifstream in(FLEXVQA_SOURCE_DIR "/client/examples/shapes.jpg", std::ios::binary);
  ASSERT_TRUE(in.good());
  request.image = ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
  request.sampling.max_new_tokens = kSteps + 2;  // Prefill's token, one warm step, kSteps.
  request.sampling.ignore_eos = true;            // Greedy, never finished early.
  auto prepared = (*engine)->Prepare(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();

  InstallStepCounter();
  MeasuredSteps one, many;
  ASSERT_TRUE(MeasureSteps(**engine, *prepared, 1, kSteps, &one));
  ASSERT_TRUE(MeasureSteps(**engine, *prepared, kBatch, kSteps, &many));
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

INSTANTIATE_TEST_SUITE_P(Modes, StepStructureTest,
                         ::testing::Values("full", "flex", "hd", "composite", "xattn", "pooled"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace flexvqa
