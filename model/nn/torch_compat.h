// The one place where LibTorch version differences live (Debian's 1.13 CPU build here, the 2.11
// CUDA wheel on the GPU machine). Everything else in model/ calls these instead of version-specific
// APIs.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "model/status.h"

namespace flexvqa {

// "1.13.0": the LibTorch this binary was compiled against.
std::string TorchVersionString();

// True when this build has a usable CUDA device.
bool CudaAvailable();

// Parses "cpu", "cuda", "cuda:N".
StatusOr<at::Device> ParseDevice(const std::string& text);

// Parses "auto" (fp32 on CPU, bf16 on CUDA), "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16".
StatusOr<at::ScalarType> ParseDtype(const std::string& text, const at::Device& device);
const char* DtypeName(at::ScalarType dtype);

// softmax(q k^T * scale + mask) v for q [.., Tq, D], k/v [.., Tk, D]; `causal_offset` >= 0 makes
// row i see keys 0..i+causal_offset (keys already in the cache before the chunk). Softmax in fp32
// (as HF eager). Uses the fused SDPA kernels where the installed LibTorch has them and the inputs
// allow.
at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     int64_t causal_offset);

// F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False) for x [N, C, H, W].
at::Tensor InterpolateBicubic(const at::Tensor& x, int64_t out_h, int64_t out_w);

// Maps a LibTorch exception to a Status: out-of-memory becomes RESOURCE_EXHAUSTED, the rest
// INTERNAL.
Status StatusFromTorchError(const std::exception& error, const std::string& context);

}  // namespace flexvqa
