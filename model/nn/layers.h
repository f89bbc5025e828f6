// Stateless building blocks shared by the vision tower and the decoder, each matching the Hugging
// Face module it names (numerics included: RMSNorm in fp32, RoPE tables built in fp32 then cast).
// Shapes in comments: B batch, T tokens, D model width, H heads, Dh head width.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace flexvqa {

// LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) computed in fp32, cast back, times weight.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// nn.LayerNorm over the last dimension.
at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps);

// x W^T + b (bias may be undefined).
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// Activations by their config names: quick_gelu (CLIP: x * sigmoid(1.702 x)), gelu (exact, erf),
// silu. Unknown names are rejected at config time.
at::Tensor Activation(const at::Tensor& x, const std::string& name);
bool IsKnownActivation(const std::string& name);

// Rotary position embedding tables for LLaMA (HF LlamaRotaryEmbedding, default rope type):
// inv_freq[i] = theta^(-2i/Dh); cos/sin of pos * inv_freq, duplicated to width Dh ("rotate_half"
// form).
struct RotaryTables {
  at::Tensor cos;    // [max_positions, Dh], model dtype
  at::Tensor sin;    // [max_positions, Dh]
  at::Tensor table;  // [max_positions, 2, Dh]: cos and sin side by side, one gather for both.
};
RotaryTables BuildRotaryTables(int64_t max_positions, int64_t head_dim, double theta,
                               at::ScalarType dtype, at::Device device);

// x * cos + rotate_half(x) * sin, with x [.., T, Dh] and cos/sin [T, Dh] (rows for x's positions).
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// The same in place on x [N, heads, Dh] with rope [N, 2, Dh] (RotaryTables::table rows): 4 ops
// for queries and keys together.
void ApplyRotaryInPlace(const at::Tensor& x, const at::Tensor& rope);

}  // namespace flexvqa
