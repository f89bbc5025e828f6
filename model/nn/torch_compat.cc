#include "model/nn/torch_compat.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <limits>

namespace flexvqa {

std::string TorchVersionString() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

bool CudaAvailable() { return at::hasCUDA(); }

StatusOr<at::Device> ParseDevice(const std::string& text) {
  if (text == "cpu") return at::Device(at::kCPU);
  if (text.rfind("cuda", 0) == 0) {
    if (!CudaAvailable()) {
      return FailedPreconditionError("device '" + text +
                                     "' requested but this build of LibTorch (" +
                                     TorchVersionString() + ") has no CUDA device available");
    }
    try {
      return at::Device(text);
    } catch (const std::exception& e) {
      return InvalidArgumentError("bad device '" + text + "': " + e.what());
    }
  }
  return InvalidArgumentError("unknown device '" + text + "' (expected cpu, cuda or cuda:N)");
}

StatusOr<at::ScalarType> ParseDtype(const std::string& text, const at::Device& device) {
  if (text == "auto") return device.is_cuda() ? at::kBFloat16 : at::kFloat;
  if (text == "float32" || text == "fp32") return at::kFloat;
  if (text == "bfloat16" || text == "bf16") return at::kBFloat16;
  if (text == "float16" || text == "fp16") return at::kHalf;
  return InvalidArgumentError("unknown dtype '" + text +
                              "' (expected auto, float32, bfloat16, float16)");
}

const char* DtypeName(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return "other";
  }
}

at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     int64_t causal_offset) {
  const int64_t tq = q.size(-2);
  const int64_t tk = k.size(-2);
#if TORCH_VERSION_MAJOR >= 2
  // Fused kernels (flash / memory-efficient on CUDA). They take a top-left-aligned causal mask, so
  // they apply directly only when queries and keys start together; decode rows (tq == 1) need no
  // mask.
  if (q.is_cuda() && (causal_offset <= 0 || tq == 1)) {
    const bool causal = causal_offset >= 0 && tq > 1;
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, causal,
                                            scale);
  }
#endif
  // Eager path, as HF's eager attention: scores in the input dtype, softmax in fp32, cast back.
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;  // [.., Tq, Tk]
  if (causal_offset >= 0 && tq > 1) {
    // Row i may see keys j <= i + causal_offset.
    at::Tensor mask = at::ones({tq, tk}, q.options().dtype(at::kBool)).triu(causal_offset + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);
}

at::Tensor InterpolateBicubic(const at::Tensor& x, int64_t out_h, int64_t out_w) {
  // No scale factors (the defaults): the kernel uses in / out, as F.interpolate does when given a
  // size.
  const std::vector<int64_t> size = {out_h, out_w};
  return at::upsample_bicubic2d(x, at::IntArrayRef(size), /*align_corners=*/false);
}

Status StatusFromTorchError(const std::exception& error, const std::string& context) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr) {
    return ResourceExhaustedError(context + ": out of device memory: " + error.what());
  }
  std::string what = error.what();
  // c10 messages carry a C++ backtrace after the first line; the first line is what a person needs.
  const size_t newline = what.find('\n');
  if (newline != std::string::npos) what.resize(newline);
  return InternalError(context + ": " + what);
}

}  // namespace flexvqa
