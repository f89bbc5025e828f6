// The checks a generation request must pass before any tokenising or image decoding, in one place
// for every Engine (LlavaEngine::Prepare and the service tests' fake engine call it, so the same
// bad request gets the same status and message from both): the conversation, the sampling
// parameters and stop strings, the selection threshold. Torch-free pure functions, thread-safe.
// Errors: INVALID_ARGUMENT with a message fit for the API caller, naming the field.
#pragma once

#include <vector>

#include "model/engine.h"
#include "model/status.h"

namespace flexvqa {

// The literal the prompt templates put where the image goes; a turn may not contain it.
inline constexpr char kImagePlaceholder[] = "<image>";

// Non-empty; roles alternate user, assistant, ... starting and ending with the user; every turn
// valid UTF-8, not blank, free of kImagePlaceholder. `limits` is for per-turn size limits.
Status ValidateConversation(const std::vector<ChatTurn>& turns, const EngineLimits& limits);

// The ranges documented on SamplingParams; max_new_tokens and the stop strings (count, 1 to
// max_stop_string_bytes bytes each, valid UTF-8) within `limits`.
Status ValidateSampling(const SamplingParams& sampling, const EngineLimits& limits);

// All of the above, then the selection threshold: only where the model takes one
// (`takes_selection_threshold`, FlexAttention), and then within [0, 255]. model.limits bound the
// request; model.mode names the attention mode in the message.
Status ValidateRequest(const GenerationRequest& request, const ModelInfo& model,
                       bool takes_selection_threshold);

}  // namespace flexvqa
