// StepGraphs where graphs are unavailable (CPU; this machine's LibTorch 1.13): every Run is the
// eager body, outputs are the body's, errors propagate. Capture and replay are checked on the GPU
// machine by bench/graph_check (scripts/gpu/check.sh, stage graphs).
#include "model/nn/cuda/step_graph.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include "model/nn/cuda/varlen_attention.h"

namespace flexvqa {
namespace {

TEST(StepGraphTest, OnCpuEveryRunIsTheEagerBody) {
  StepGraphs graphs(at::Device(at::kCPU), StepGraphs::Options{});
  EXPECT_FALSE(graphs.Supported());
  const at::Tensor input = at::arange(4, at::kFloat);
  int calls = 0;
  for (int step = 0; step < 5; ++step) {
    input.add_(1);  // A static input refilled between steps.
    StepGraphs::How how = StepGraphs::How::kReplayed;
    const std::vector<at::Tensor> out = graphs.Run(
        8,
        [&] {
          ++calls;
          return std::vector<at::Tensor>{input * 2};
        },
        &how);
    EXPECT_EQ(how, StepGraphs::How::kEager);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_TRUE(out[0].equal(input * 2));
  }
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(graphs.captured_buckets(), 0);
  EXPECT_STREQ(HowName(StepGraphs::How::kReplayed), "replayed");
}

TEST(StepGraphTest, ABodysErrorReachesTheCaller) {
  StepGraphs graphs(at::Device(at::kCPU), StepGraphs::Options{});
  EXPECT_THROW(graphs.Run(1,
                          []() -> std::vector<at::Tensor> {
                            return {at::ones({2}) + at::ones({3})};  // Shapes do not broadcast.
                          }),
               c10::Error);
  EXPECT_TRUE(graphs.last_error().empty());  // Not a capture failure.
}

TEST(StepGraphTest, VarlenAttentionSaysItIsNotBuiltHere) {
  if (VarlenAttentionCudaBuilt()) GTEST_SKIP() << "a CUDA build: bench/graph_check covers it";
  VarlenBatch batch;
  batch.max_k = 4;
  EXPECT_THROW(VarlenAttentionCuda(at::zeros({1, 2, 8}), at::zeros({1, 4, 2, 8}),
                                   at::zeros({1, 4, 2, 8}), batch, 1.0, false),
               c10::Error);
}

}  // namespace
}  // namespace flexvqa
