// Layer functions against their definitions written out by hand.
#include "model/nn/layers.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "model/nn/torch_compat.h"

namespace flexvqa {
namespace {

TEST(LayersTest, RmsNormMatchesDefinition) {
  at::manual_seed(0);
  const at::Tensor x = at::randn({3, 8});
  const at::Tensor w = at::randn({8});
  const at::Tensor expected = w * x / at::sqrt((x * x).mean(-1, true) + 1e-5);
  EXPECT_TRUE(at::allclose(RmsNorm(x, w, 1e-5), expected, 1e-5, 1e-6));
}

TEST(LayersTest, RotaryRotatesPairsByPositionTimesFrequency) {
  const int64_t dh = 4;
  const RotaryTables t = BuildRotaryTables(10, dh, 10000.0, at::kFloat, at::Device(at::kCPU));
  // Position 3: angles 3 * theta^(-0/4) = 3 and 3 * theta^(-2/4) = 0.03.
  EXPECT_NEAR(t.cos[3][0].item<float>(), std::cos(3.0), 1e-6);
  EXPECT_NEAR(t.cos[3][2].item<float>(), std::cos(3.0), 1e-6);
  EXPECT_NEAR(t.sin[3][1].item<float>(), std::sin(0.03), 1e-6);
  // rotate_half pairs element i with i + Dh/2.
  const at::Tensor x = at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 4});
  const at::Tensor y = ApplyRotary(x, t.cos.narrow(0, 3, 1), t.sin.narrow(0, 3, 1));
  EXPECT_NEAR(y[0][0].item<float>(), 1 * std::cos(3.0) - 3 * std::sin(3.0), 1e-5);
  EXPECT_NEAR(y[0][2].item<float>(), 3 * std::cos(3.0) + 1 * std::sin(3.0), 1e-5);
  EXPECT_NEAR(y[0][1].item<float>(), 2 * std::cos(0.03) - 4 * std::sin(0.03), 1e-5);
}

TEST(LayersTest, QuickGeluAndGelu) {
  const at::Tensor x = at::tensor({-1.0f, 0.5f, 2.0f});
  EXPECT_TRUE(at::allclose(Activation(x, "quick_gelu"), x * at::sigmoid(1.702 * x)));
  EXPECT_NEAR(Activation(x, "gelu")[2].item<float>(),
              2.0 * 0.5 * (1 + std::erf(2.0 / std::sqrt(2.0))), 1e-6);
}

TEST(LayersTest, AttentionWithCausalOffsetMatchesMaskedSoftmax) {
  at::manual_seed(1);
  const int64_t heads = 2, cached = 5, t = 3, dh = 8;
  const at::Tensor q = at::randn({heads, t, dh});
  const at::Tensor k = at::randn({heads, cached + t, dh});
  const at::Tensor v = at::randn({heads, cached + t, dh});
  const at::Tensor out = Attention(q, k, v, 0.25, cached);
  for (int64_t i = 0; i < t; ++i) {
    // Row i sees keys 0 .. cached + i.
    const int64_t n = cached + i + 1;
    const at::Tensor p =
        at::softmax(at::matmul(q.narrow(1, i, 1), k.narrow(1, 0, n).transpose(1, 2)) * 0.25, -1);
    const at::Tensor expected = at::matmul(p, v.narrow(1, 0, n));
    EXPECT_TRUE(at::allclose(out.narrow(1, i, 1), expected, 1e-5, 1e-6)) << "row " << i;
  }
}

TEST(LayersTest, NegativeOffsetIsBidirectional) {
  at::manual_seed(2);
  const at::Tensor q = at::randn({1, 4, 8}), k = at::randn({1, 4, 8}), v = at::randn({1, 4, 8});
  const at::Tensor expected =
      at::matmul(at::softmax(at::matmul(q, k.transpose(1, 2)) * 0.5, -1), v);
  EXPECT_TRUE(at::allclose(Attention(q, k, v, 0.5, -1), expected, 1e-5, 1e-6));
}

TEST(LayersTest, DtypeAndDeviceParsing) {
  const at::Device cpu(at::kCPU);
  EXPECT_EQ(*ParseDtype("auto", cpu), at::kFloat);
  EXPECT_EQ(*ParseDtype("bf16", cpu), at::kBFloat16);
  EXPECT_EQ(ParseDtype("int8", cpu).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseDevice("cpu").ok());
  EXPECT_EQ(ParseDevice("tpu").status().code(), StatusCode::kInvalidArgument);
  if (!CudaAvailable())
    EXPECT_EQ(ParseDevice("cuda").status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace flexvqa
