// Between the API (proto/flexvqa/v1/vqa.proto) and the engine's plain structs, with the API-level
// checks the engine cannot make (question vs. turns, number of images, MIME type, request id).
// The conversation (roles, order, text), sampling ranges, the selection threshold, image contents
// and prompt length are the engine's to check (Engine::Prepare, model/request_validation.h). Pure
// functions; any thread.
#pragma once

#include <string>

#include "flexvqa/v1/vqa.pb.h"
#include "model/engine.h"
#include "model/status.h"
#include "server/scheduler.h"

namespace flexvqa {

inline constexpr int kMaxImagesPerRequest = 1;  // LLaVA-1.5 takes one image.
inline constexpr int kMaxRequestIdBytes = 128;
inline constexpr const char* kImageMimeTypes[] = {"image/jpeg", "image/png"};

// INVALID_ARGUMENT when the question, or all turns together, exceed `max_prompt_bytes`. Cheap:
// call it first, before any conversion or tokenising work.
Status CheckPromptBytes(const v1::GenerateRequest& request, int64_t max_prompt_bytes);

// INVALID_ARGUMENT naming the field when the request breaks the API's rules.
StatusOr<GenerationRequest> FromProto(const v1::GenerateRequest& request);

// A flex request's selection summary (GenerateFinal.selection).
void ToProto(const SelectionSummary& summary, v1::SelectionSummary* out);

// The final message of a request that reached the scheduler.
void ToProto(const StreamItem& final_item, const std::string& request_id, v1::GenerateFinal* out);

// What ModelInfo returns: the engine's description and the server's own limits.
struct ServerLimits {
  int64_t max_message_bytes = 0;
  int max_queued = 0;
  int max_running = 0;
  int max_calls_per_client = 0;
};
void ToProto(const ModelInfo& info, const ServerLimits& limits, v1::ModelInfoResponse* out);

const char* FinishReasonName(FinishReason reason);

}  // namespace flexvqa
