// OpenAI's chat-completions API over flexvqa's own (proto/flexvqa/v1/vqa.proto): the one conversion
// layer. ParseChatRequest turns a request body into the v1::GenerateRequest the gRPC API would
// receive, so both protocols go through the same SubmitCall (server/call.h), the same validation
// and the same scheduler; the builders turn the scheduler's items into OpenAI's JSON, and ErrorFor
// maps every Status onto OpenAI's error shape and an HTTP status, in one place. Pure functions; any
// thread. docs/openai.md lists what is accepted and what is refused.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flexvqa/v1/vqa.pb.h"
#include "model/status.h"
#include "server/scheduler.h"

namespace flexvqa {

// {"error": {"message", "type", "param", "code"}} with its HTTP status.
struct OpenAiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // The request field at fault; empty: null.
  std::string code;   // Empty: null.
  // Seconds a client should wait before retrying (429, 503); 0: no Retry-After header.
  int retry_after_s = 0;
};

struct ChatRequest {
  v1::GenerateRequest request;  // What the same question over gRPC would send.
  std::string model;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage.
  // Where each field the engine checks came from, to name it in OpenAI's terms when it is refused.
  std::string max_tokens_param;  // "max_tokens" or "max_completion_tokens"; empty: unset.
  std::string image_param;       // "messages[i].content[j].image_url"; empty: no image.
};

// Parses and converts `body`. `served_model` is the only model accepted. Returns nullopt on
// success, else a 400 naming the field (n != 1, logprobs, tools, remote image URLs, unknown models,
// types).
std::optional<OpenAiError> ParseChatRequest(std::string_view body, const std::string& served_model,
                                            ChatRequest* out);

// The request's deadline from its timeout header's value, in seconds (decimal): OpenAI's SDKs send
// X-Stainless-Timeout; curl users X-Request-Timeout. INVALID_ARGUMENT for anything but a positive
// finite number.
StatusOr<std::chrono::milliseconds> ParseTimeoutSeconds(const std::string& value);

// The one map from a Status to OpenAI's error shape: INVALID_ARGUMENT and OUT_OF_RANGE 400 (the
// param named from the message's field where the engine named it), UNAUTHENTICATED 401, NOT_FOUND
// 404, RESOURCE_EXHAUSTED 429 + Retry-After (gRPC's full queue and
// per-client limit), CANCELLED 499, UNAVAILABLE 503 + Retry-After (draining), DEADLINE_EXCEEDED
// 504, the rest 500. `request` (may be null) names fields.
OpenAiError ErrorFor(const Status& status, const ChatRequest* request);
nlohmann::json ErrorBody(const OpenAiError& error);

// A finished request's response ("chat.completion"), from its text and its final item.
nlohmann::json CompletionBody(const std::string& id, int64_t created, const std::string& model,
                              const std::string& text, const StreamItem& final_item);

// One "chat.completion.chunk" of a stream. `content` empty and `role` false: an empty delta.
// `finish` (the final item, with our figures) only on the last choice chunk.
nlohmann::json ChunkBody(const std::string& id, int64_t created, const std::string& model,
                         bool role, const std::string& content, const StreamItem* finish,
                         bool include_usage);
// The usage chunk after the last choice chunk (stream_options.include_usage): no choices.
nlohmann::json UsageChunkBody(const std::string& id, int64_t created, const std::string& model,
                              const StreamItem& final_item);

// One server-sent event holding `json`, and the stream's end.
std::string SseEvent(const nlohmann::json& json);
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

// GET /v1/models: the served checkpoint.
nlohmann::json ModelsBody(const std::string& model, int64_t created);

}  // namespace flexvqa
