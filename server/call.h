// One API call's bookkeeping, shared by the gRPC service (server/vqa_service.cc) and the OpenAI
// endpoint (server/openai_endpoint.cc), so that both reach the scheduler the same way: SubmitCall
// is the one path from a v1::GenerateRequest to Scheduler::Submit (prompt-size check before any
// conversion, then FromProto), EndCall the one place a finished call is counted, logged and gives
// its client's slot back. Any thread; a Call is owned by one request's handler.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "flexvqa/v1/vqa.pb.h"
#include "model/status.h"
#include "server/client_limiter.h"
#include "server/metrics.h"
#include "server/scheduler.h"

namespace flexvqa {

struct Call {
  Protocol protocol = Protocol::kGrpc;
  std::string method;  // Generate | Answer (gRPC), chat_completions (OpenAI).
  std::string id;
  std::string peer;
  Clock::time_point arrival;
  Clock::time_point deadline = Clock::time_point::max();
  ServerMetrics* metrics = nullptr;  // Counts the call when it ends; may be null.
  int64_t max_prompt_bytes = 0;      // The engine's limit, checked before conversion.
  std::string client;                // Identity for per-client limits (server/auth.h).
  // This call's place in the client's share; EndCall releases it.
  std::shared_ptr<ClientLimiter::Slot> slot;
};

// Checks the prompt's size, converts and submits. On OK the scheduler owns the request and
// `on_item` receives its items; otherwise the status says why (INVALID_ARGUMENT,
// RESOURCE_EXHAUSTED, UNAVAILABLE) and `on_item` is never called.
StatusOr<std::shared_ptr<RequestHandle>> SubmitCall(const v1::GenerateRequest& request,
                                                    const Call& call, Scheduler* scheduler,
                                                    ItemCallback on_item);

// Everything a finished call reports, once: its metrics, then its log line; and it gives its
// client's slot back (before the client can see the status). `final_item` is null for a call that
// never reached the scheduler.
void EndCall(Call& call, const Status& status, const StreamItem* final_item);

}  // namespace flexvqa
