// The VqaService's gRPC handlers (callback API). Generate is a ServerWriteReactor that streams the
// scheduler's items, one write in flight at a time (deltas that arrive meanwhile are merged into
// the next write); Answer collects them into one response. OnCancel cancels the request in the
// scheduler. Handlers run on gRPC threads, never touch the engine beyond its Info(), and log one
// line per request. Generate and Answer take the request as raw bytes and parse it themselves, so
// that a request protobuf rejects (a string that is not UTF-8) gets INVALID_ARGUMENT rather than
// gRPC's bare UNIMPLEMENTED.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <cstdint>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "model/engine.h"
#include "server/api_convert.h"
#include "server/auth.h"
#include "server/client_limiter.h"
#include "server/metrics.h"
#include "server/scheduler.h"

namespace flexvqa {

using VqaServiceBase =
    v1::VqaService::WithRawCallbackMethod_Generate<v1::VqaService::WithRawCallbackMethod_Answer<
        v1::VqaService::WithCallbackMethod_ModelInfo<v1::VqaService::Service>>>;

// Who may call, and how much of the server one caller may hold. Null members: no such check.
struct CallGate {
  const TokenSet* tokens = nullptr;  // Bearer tokens required (server/auth.h).
  ClientLimiter* limiter = nullptr;  // Calls in flight per client identity.
};

class VqaService final : public VqaServiceBase {
 public:
  // `info` describes the engine behind `scheduler`; both (and `metrics` when not null, which counts
  // every call once as it ends, and `gate`'s members) must outlive the service. Every method checks
  // the bearer token (UNAUTHENTICATED); Generate and Answer also take a slot of the client's share
  // (RESOURCE_EXHAUSTED) until the call ends.
  VqaService(const ::flexvqa::ModelInfo& info, Scheduler* scheduler, const ServerLimits& limits,
             ServerMetrics* metrics = nullptr, CallGate gate = {});

  // Request: v1::GenerateRequest; responses: v1::GenerateResponse.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  // Request: v1::GenerateRequest; response: v1::AnswerResponse.
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* context,
                                      const v1::ModelInfoRequest* request,
                                      v1::ModelInfoResponse* response) override;

  // Shared by the reactors (vqa_service.cc).
  struct CallInfo;

 private:
  // Fills *call, authenticates, takes the client's slot and parses the request.
  Status Accept(grpc::CallbackServerContext* context, const grpc::ByteBuffer& raw,
                v1::GenerateRequest* request, CallInfo* call);

  const ::flexvqa::ModelInfo& info_;
  Scheduler* const scheduler_;
  const ServerLimits limits_;
  ServerMetrics* const metrics_;  // May be null.
  const CallGate gate_;
  std::atomic<int64_t> next_id_{1};
};

}  // namespace flexvqa
