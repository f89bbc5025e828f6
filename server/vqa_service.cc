#include "server/vqa_service.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "server/call.h"
#include "server/status_map.h"

namespace flexvqa {

// The shared bookkeeping (server/call.h) and what only gRPC knows: the deadline as gRPC holds it.
struct VqaService::CallInfo : Call {
  std::chrono::system_clock::time_point grpc_deadline;  // OnCancel compares.
};

namespace {

using CallInfo = VqaService::CallInfo;

Clock::time_point SteadyDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  const auto remaining = deadline - std::chrono::system_clock::now();
  if (deadline == std::chrono::system_clock::time_point::max() ||
      remaining > std::chrono::hours(24 * 365)) {
    return Clock::time_point::max();
  }
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(remaining);
}

constexpr std::chrono::milliseconds kDeadlineSlack{50};

// OnCancel may run before Submit returns the handle (or never get one): remember it either way.
class CancelLink {
 public:
  void Attach(std::shared_ptr<RequestHandle> handle) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(handle);
    if (cancelled_) Apply();
  }
  // From OnCancel: gRPC cancels the call when the client cancels or when its deadline passes;
  // only the clock tells them apart. The client's copy of the deadline passes first (ours starts
  // when the call arrives), and its cancel (RST_STREAM) may reach us before ours fires: a cancel
  // within kDeadlineSlack of the deadline is the deadline.
  void Cancel(const CallInfo& call) {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    expired_ = std::chrono::system_clock::now() + kDeadlineSlack >= call.grpc_deadline;
    if (handle_) Apply();
  }

 private:
  void Apply() { expired_ ? handle_->Expire() : handle_->Cancel(); }

  std::mutex mu_;
  bool cancelled_ = false;
  bool expired_ = false;
  std::shared_ptr<RequestHandle> handle_;
};

Status ParseRequest(const grpc::ByteBuffer& raw, v1::GenerateRequest* request) {
  grpc::ByteBuffer copy(raw);  // Shares the slices; Deserialize consumes its argument.
  if (!grpc::SerializationTraits<v1::GenerateRequest>::Deserialize(&copy, request).ok()) {
    return InvalidArgumentError(
        "cannot parse the GenerateRequest: not a valid message, or a text field (question, "
        "turns.text, stop, request_id, mime_type) is not valid UTF-8");
  }
  return Status::Ok();
}

template <typename Message>
void Serialize(const Message& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  out->Clear();  // The serialiser fills an empty buffer only.
  (void)grpc::SerializationTraits<Message>::Serialize(message, out, &own_buffer);
}

// Submits through the shared path (server/call.h) and links the handle to the cancel. On error the
// call is finished by the caller with the returned status.
Status SubmitCall(const v1::GenerateRequest& request, const CallInfo& call, Scheduler* scheduler,
                  ItemCallback on_item, CancelLink* cancel) {
  StatusOr<std::shared_ptr<RequestHandle>> handle =
      ::flexvqa::SubmitCall(request, call, scheduler, std::move(on_item));
  if (!handle.ok()) return handle.status();
  cancel->Attach(std::move(handle).value());
  return Status::Ok();
}

class GenerateReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit GenerateReactor(CallInfo call) : call_(std::move(call)) {}

  void Start(std::shared_ptr<GenerateReactor> self, const v1::GenerateRequest* request,
             const Status& parsed, Scheduler* scheduler) {
    self_ = self;
    Status submitted =
        !parsed.ok() ? parsed
                     : SubmitCall(
                           *request, call_, scheduler,
                           [self](StreamItem item) { self->OnItem(std::move(item)); }, &cancel_);
    if (!submitted.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        finished_ = true;
      }
      EndCall(call_, submitted, nullptr);
      Finish(ToGrpcStatus(submitted));
    }
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) broken_ = true;
    }
    Pump();
  }
  void OnCancel() override { cancel_.Cancel(call_); }
  void OnDone() override {
    std::shared_ptr<GenerateReactor> keep = std::move(self_);  // May be the last reference.
  }

 private:
  void OnItem(StreamItem item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (item.final) {
        final_ = std::move(item);
      } else {
        pending_.mutable_text()->append(item.text);
        for (int32_t id : item.token_ids) pending_.add_token_ids(id);
        has_pending_ = true;
      }
    }
    Pump();
  }

  // Starts the next write, or finishes once the final item is out. One write in flight at a time.
  void Pump() {
    bool write = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (writing_ || finished_) return;
      if (has_pending_ && !broken_) {
        v1::GenerateResponse response;
        response.mutable_delta()->Swap(&pending_);
        pending_.Clear();
        has_pending_ = false;
        Serialize(response, &out_);
        write = true;
      } else if (final_ && !final_written_ && final_->reached_model && !broken_) {
        v1::GenerateResponse response;
        ToProto(*final_, call_.id, response.mutable_final());
        Serialize(response, &out_);
        final_written_ = true;
        write = true;
      } else if (final_) {
        finished_ = true;
      } else {
        return;
      }
      writing_ = write;
    }
    if (write) {
      StartWrite(&out_);
      return;
    }
    EndCall(call_, final_->status, &*final_);  // final_ is no longer written by anyone.
    Finish(ToGrpcStatus(final_->status));
  }

  CallInfo call_;  // Read-only but for its slot, which EndCall releases.
  CancelLink cancel_;
  std::shared_ptr<GenerateReactor> self_;  // Released in OnDone.
  std::mutex mu_;
  v1::TextDelta pending_;  // Deltas not written yet, merged.
  bool has_pending_ = false;
  std::optional<StreamItem> final_;
  grpc::ByteBuffer out_;  // The serialised v1::GenerateResponse being written.
  bool writing_ = false;
  bool broken_ = false;  // A write failed: the client is gone.
  bool final_written_ = false;
  bool finished_ = false;
};

class AnswerReactor : public grpc::ServerUnaryReactor {
 public:
  AnswerReactor(CallInfo call, grpc::ByteBuffer* response)
      : call_(std::move(call)), response_(response) {}

  void Start(std::shared_ptr<AnswerReactor> self, const v1::GenerateRequest* request,
             const Status& parsed, Scheduler* scheduler) {
    self_ = self;
    Status submitted =
        !parsed.ok() ? parsed
                     : SubmitCall(
                           *request, call_, scheduler,
                           [self](StreamItem item) { self->OnItem(std::move(item)); }, &cancel_);
    if (!submitted.ok()) {
      EndCall(call_, submitted, nullptr);
      Finish(ToGrpcStatus(submitted));
    }
  }

  void OnCancel() override { cancel_.Cancel(call_); }
  void OnDone() override { std::shared_ptr<AnswerReactor> keep = std::move(self_); }

 private:
  // Items of one request never arrive concurrently, and nothing else touches answer_.
  void OnItem(StreamItem item) {
    if (!item.final) {
      answer_.mutable_text()->append(item.text);
      for (int32_t id : item.token_ids) answer_.add_token_ids(id);
      return;
    }
    ToProto(item, call_.id, answer_.mutable_final());
    if (item.status.ok()) Serialize(answer_, response_);
    EndCall(call_, item.status, &item);
    Finish(ToGrpcStatus(item.status));
  }

  CallInfo call_;  // Read-only but for its slot, which EndCall releases.
  grpc::ByteBuffer* const response_;
  v1::AnswerResponse answer_;
  CancelLink cancel_;
  std::shared_ptr<AnswerReactor> self_;  // Released in OnDone.
};

}  // namespace

VqaService::VqaService(const ::flexvqa::ModelInfo& info, Scheduler* scheduler,
                       const ServerLimits& limits, ServerMetrics* metrics, CallGate gate)
    : info_(info), scheduler_(scheduler), limits_(limits), metrics_(metrics), gate_(gate) {}

// In this order, each step only for a call that passed the one before: who is calling (and
// whether they may), the request's size, their share of the server, then the request itself.
Status VqaService::Accept(grpc::CallbackServerContext* context, const grpc::ByteBuffer& raw,
                          v1::GenerateRequest* request, CallInfo* call) {
  call->metrics = metrics_;
  call->arrival = Clock::now();
  call->deadline = SteadyDeadline(*context);
  call->grpc_deadline = context->deadline();
  call->peer = context->peer();
  call->max_prompt_bytes = info_.limits.max_prompt_bytes;
  call->id = "r" + std::to_string(next_id_.fetch_add(1));
  StatusOr<std::string> client = Authenticate(*context, gate_.tokens);
  if (!client.ok()) return client.status();
  call->client = *client;
  // gRPC's own limit lies above ours (TransportReceiveLimit), so that this refusal is counted.
  if (static_cast<int64_t>(raw.Length()) > limits_.max_message_bytes) {
    return ResourceExhaustedError("request of " + std::to_string(raw.Length()) +
                                  " bytes exceeds max_message_bytes (" +
                                  std::to_string(limits_.max_message_bytes) + ")");
  }
  if (gate_.limiter != nullptr) {
    StatusOr<std::unique_ptr<ClientLimiter::Slot>> slot = gate_.limiter->Acquire(*client);
    if (!slot.ok()) return slot.status();
    call->slot = std::move(slot).value();
  }
  FLEXVQA_RETURN_IF_ERROR(ParseRequest(raw, request));
  if (!request->request_id().empty() &&
      request->request_id().size() <= static_cast<size_t>(kMaxRequestIdBytes)) {
    call->id = request->request_id();
  }
  return Status::Ok();
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VqaService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request) {
  v1::GenerateRequest request;
  CallInfo call;
  call.method = "Generate";
  const Status accepted = Accept(context, *raw_request, &request, &call);
  auto reactor = std::make_shared<GenerateReactor>(std::move(call));
  reactor->Start(reactor, &request, accepted, scheduler_);
  return reactor.get();
}

grpc::ServerUnaryReactor* VqaService::Answer(grpc::CallbackServerContext* context,
                                             const grpc::ByteBuffer* raw_request,
                                             grpc::ByteBuffer* response) {
  v1::GenerateRequest request;
  CallInfo call;
  call.method = "Answer";
  const Status accepted = Accept(context, *raw_request, &request, &call);
  auto reactor = std::make_shared<AnswerReactor>(std::move(call), response);
  reactor->Start(reactor, &request, accepted, scheduler_);
  return reactor.get();
}

grpc::ServerUnaryReactor* VqaService::ModelInfo(grpc::CallbackServerContext* context,
                                                const v1::ModelInfoRequest* /*request*/,
                                                v1::ModelInfoResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const StatusOr<std::string> client = Authenticate(*context, gate_.tokens);
  if (!client.ok()) {
    reactor->Finish(ToGrpcStatus(client.status()));
    return reactor;
  }
  ToProto(info_, limits_, response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace flexvqa
