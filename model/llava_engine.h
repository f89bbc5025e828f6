// The LLaVA engine's test and debug surface, beside the Engine interface (model/engine.h) the
// server uses: a logits sink that sees the fp32 logits every sampled token was drawn from, and a
// Prepare that starts from token ids and preprocessed pixels (for reference fixtures whose prompt
// and pixels are given, not built from turns and image bytes). Everything after Prepare is the
// engine's own path: Admit, Prefill, Decode, its sampler. Not for serving.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "model/engine.h"
#include "model/status.h"

namespace flexvqa {

// Called on the worker thread, inside Prefill and Decode, before the step's tokens are emitted.
class LogitsSink {
 public:
  virtual ~LogitsSink() = default;
  // `logits` [vocab]: what `sequence` samples its token at `position` from (position = the row's
  // place in the sequence: prompt length - 1 at prefill, then one more per decode step). Also
  // called for every other prompt row when prompt_rows() (those logits are computed only then).
  virtual void OnLogits(SequenceId sequence, int position, const float* logits, int vocab) = 0;
  virtual bool prompt_rows() const { return false; }
};

// CreateLlavaEngine with a sink (not owned; it must outlive the engine).
StatusOr<std::unique_ptr<Engine>> CreateLlavaEngine(const EngineOptions& options, LogitsSink* sink);

// What Prepare would produce for `tokens` (the prompt with image placeholders expanded, as
// BuildLlavaPrompt makes it) and, when the prompt has placeholders, an image: either `image`
// (decoded and preprocessed as Prepare does) or `pixels` (single-view modes: [3, S, S] already
// normalised). Sampling and the mode's options are validated as in Prepare. INVALID_ARGUMENT when
// `engine` is not a LLaVA engine or the inputs do not fit the model.
StatusOr<std::shared_ptr<const PreparedRequest>> PrepareTokens(
    const Engine& engine, const std::vector<int32_t>& tokens,
    const std::optional<ImageInput>& image, const std::vector<float>& pixels,
    const GenerationRequest& options);

}  // namespace flexvqa
