#include "model/nn/layers.h"

#include <ATen/ATen.h>

namespace flexvqa {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // As LlamaRMSNorm: the statistics in fp32, the product with the weight in the input dtype.
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (x32 * at::rsqrt(variance + eps)).to(x.scalar_type());
}

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps) {
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, weight, bias);
}

bool IsKnownActivation(const std::string& name) {
  return name == "quick_gelu" || name == "gelu" || name == "silu";
}

at::Tensor Activation(const at::Tensor& x, const std::string& name) {
  if (name == "quick_gelu") return x * at::sigmoid(x * 1.702);  // CLIP's QuickGELUActivation.
  if (name == "gelu") return at::gelu(x);                       // Exact erf form (nn.GELU()).
  return at::silu(x);
}

RotaryTables BuildRotaryTables(int64_t max_positions, int64_t head_dim, double theta,
                               at::ScalarType dtype, at::Device device) {
  // inv_freq = 1 / theta^(arange(0, Dh, 2) / Dh), all in fp32 as HF computes it.
  const at::Tensor exponents =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
      static_cast<double>(head_dim);
  const at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(theta, at::kFloat), exponents);
  const at::Tensor positions = at::arange(max_positions, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor freqs = at::outer(positions, inv_freq);  // [P, Dh/2]
  const at::Tensor emb = at::cat({freqs, freqs}, -1);       // [P, Dh]
  RotaryTables tables;
  tables.cos = emb.cos().to(dtype).to(device);
  tables.sin = emb.sin().to(dtype).to(device);
  tables.table = at::stack({tables.cos, tables.sin}, 1);
  return tables;
}

at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor x1 = x.narrow(-1, 0, half);
  const at::Tensor x2 = x.narrow(-1, half, half);
  const at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

void ApplyRotaryInPlace(const at::Tensor& x, const at::Tensor& rope) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor cos = rope.select(1, 0).unsqueeze(1);  // [N, 1, Dh]
  const at::Tensor sin = rope.select(1, 1).unsqueeze(1);
  // rotate_half(x) first: x is overwritten next. Then x * cos + rotate_half(x) * sin, as
  // ApplyRotary computes it.
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  at::Tensor out = x;
  out.mul_(cos).addcmul_(rotated, sin);
}

}  // namespace flexvqa
