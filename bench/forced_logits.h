// SIDE DOOR, for the device parity runner only (bench/device_parity.cc): teacher-forced logits of a
// LLaVA checkpoint on any device and dtype. The public Engine (model/engine.h) exposes neither the
// logits of a step nor a way to force the next token, and the parity checks need both (Hugging
// Face's greedy tokens forced into our model, logits compared per position). This file is the only
// bench code that reaches below model/engine.h (LlavaModel::PrefillLogits / DecodeLogits and the KV
// cache); when the engine grows a logits sink and forced tokens, it should move onto those.
// Worker-thread only, like the model; never throws (LibTorch errors become a Status).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "model/status.h"

namespace flexvqa {

class LlavaModel;
class KvCache;

class ForcedLogitsRunner {
 public:
  // Loads model_dir (either public layout) on `device` ("cpu", "cuda", "cuda:N") in `dtype`
  // ("float32", "bfloat16", ...; "auto" as the engine reads it), with one KV-cache slot of
  // `max_positions` positions.
  static StatusOr<std::unique_ptr<ForcedLogitsRunner>> Open(const std::string& model_dir,
                                                            const std::string& device,
                                                            const std::string& dtype,
                                                            int64_t max_positions);
  ~ForcedLogitsRunner();

  struct Result {
    at::Tensor prompt_logits;  // [T, V] fp32 on the CPU: every prompt position.
    at::Tensor step_logits;    // [n, V] fp32 on the CPU: row i chose forced[i] (row 0 = last
                               // prompt row; row i > 0 follows forced[0..i-1] through the cache).
  };
  // ids [T] with the image placeholders expanded; pixels [1, 3, S, S] fp32 (or undefined).
  StatusOr<Result> Run(const std::vector<int64_t>& ids, const at::Tensor& pixels,
                       const std::vector<int64_t>& forced);

  std::string dtype_name() const;

 private:
  ForcedLogitsRunner() = default;
  std::unique_ptr<LlavaModel> model_;
  std::unique_ptr<KvCache> cache_;
};

}  // namespace flexvqa
