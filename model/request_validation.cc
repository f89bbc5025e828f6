#include "model/request_validation.h"

#include <cmath>
#include <string>
#include <string_view>

#include "model/text/utf8.h"

namespace flexvqa {
namespace {

bool IsBlank(std::string_view s) { return s.find_first_not_of(" \t\n\r\f\v") == s.npos; }

// "<what> is not valid UTF-8 (first bad byte at offset N)", or OK.
Status CheckUtf8(std::string_view text, const std::string& what) {
  if (IsValidUtf8(text)) return Status::Ok();
  return InvalidArgumentError(what + " is not valid UTF-8 (first bad byte at offset " +
                              std::to_string(ValidUtf8PrefixLength(text)) + ")");
}

}  // namespace

Status ValidateConversation(const std::vector<ChatTurn>& turns, const EngineLimits& limits) {
  (void)limits;  // Per-turn size limits (issue 11) belong here.
  if (turns.empty())
    return InvalidArgumentError("the conversation has no turns; send at least a question");
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string where = "turn " + std::to_string(i);
    const ChatTurn::Role expected = i % 2 == 0 ? ChatTurn::Role::kUser : ChatTurn::Role::kAssistant;
    if (turns[i].role != expected) {
      return InvalidArgumentError(
          where + " must be the " + (expected == ChatTurn::Role::kUser ? "user's" : "assistant's") +
          ": turns alternate user, assistant, user, ... starting with the user");
    }
    FLEXVQA_RETURN_IF_ERROR(CheckUtf8(turns[i].text, where));
    if (turns[i].text.find(kImagePlaceholder) != std::string::npos) {
      return InvalidArgumentError(where +
                                  " contains the reserved text \"<image>\"; send the image in the "
                                  "image field, it is placed in the prompt automatically");
    }
    if (IsBlank(turns[i].text)) return InvalidArgumentError(where + " is empty or only whitespace");
  }
  if (turns.back().role != ChatTurn::Role::kUser) {
    return InvalidArgumentError(
        "the last turn must be the user's question, not an assistant answer");
  }
  return Status::Ok();
}

Status ValidateSampling(const SamplingParams& s, const EngineLimits& limits) {
  if (s.max_new_tokens < 1 || s.max_new_tokens > limits.max_new_tokens) {
    return InvalidArgumentError("max_new_tokens must be between 1 and " +
                                std::to_string(limits.max_new_tokens) + ", got " +
                                std::to_string(s.max_new_tokens));
  }
  if (!std::isfinite(s.temperature) || s.temperature < 0.0f) {
    return InvalidArgumentError("temperature must be a finite number >= 0 (0 means greedy), got " +
                                std::to_string(s.temperature));
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
    return InvalidArgumentError("top_p must be in (0, 1], got " + std::to_string(s.top_p));
  }
  if (s.top_k < 0) {
    return InvalidArgumentError("top_k must be >= 0 (0 disables it), got " +
                                std::to_string(s.top_k));
  }
  if (!std::isfinite(s.repetition_penalty) || s.repetition_penalty <= 0.0f) {
    return InvalidArgumentError(
        "repetition_penalty must be a finite number > 0 (1 disables it), got " +
        std::to_string(s.repetition_penalty));
  }
  if (static_cast<int>(s.stop.size()) > limits.max_stop_strings) {
    return InvalidArgumentError("at most " + std::to_string(limits.max_stop_strings) +
                                " stop strings are allowed, got " + std::to_string(s.stop.size()));
  }
  for (size_t i = 0; i < s.stop.size(); ++i) {
    const std::string& stop = s.stop[i];
    if (stop.empty() || static_cast<int>(stop.size()) > limits.max_stop_string_bytes) {
      return InvalidArgumentError("each stop string must be 1 to " +
                                  std::to_string(limits.max_stop_string_bytes) + " bytes long");
    }
    FLEXVQA_RETURN_IF_ERROR(CheckUtf8(stop, "stop string " + std::to_string(i)));
  }
  return Status::Ok();
}

Status ValidateRequest(const GenerationRequest& request, const ModelInfo& model,
                       bool takes_selection_threshold) {
  FLEXVQA_RETURN_IF_ERROR(ValidateConversation(request.turns, model.limits));
  FLEXVQA_RETURN_IF_ERROR(ValidateSampling(request.sampling, model.limits));
  if (!request.selection_threshold) return Status::Ok();
  if (!takes_selection_threshold) {
    return InvalidArgumentError(
        "selection_threshold applies to FlexAttention models only; this model's attention mode "
        "is '" +
        model.mode + "'");
  }
  const int threshold = *request.selection_threshold;
  if (threshold < 0 || threshold > 255) {
    return InvalidArgumentError("selection_threshold must be between 0 and 255, got " +
                                std::to_string(threshold));
  }
  return Status::Ok();
}

}  // namespace flexvqa
