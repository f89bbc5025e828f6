#include "server/vqa_service.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

#include "server/logging.h"
#include "server/status_map.h"

namespace flexvqa {

struct VqaService::CallInfo {
  std::string method;
  std::string id;
  std::string peer;
  Clock::time_point arrival;
  Clock::time_point deadline;
  ServerMetrics* metrics = nullptr;  // Counts the call when it ends; may be null.
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

// One line per request: what was asked, by whom, how it ended, where the time went.
void LogRequest(const CallInfo& call, const Status& status, const StreamItem* final_item) {
  nlohmann::ordered_json line;  // Keeps the fields in this order.
  line["method"] = call.method;
  line["id"] = call.id;
  line["peer"] = call.peer;
  line["status"] = StatusCodeName(status.code());
  if (!status.ok()) line["error"] = status.message();
  if (final_item != nullptr) {
    const RequestUsage& u = final_item->usage;
    const RequestTimings& t = final_item->timings;
    line["finish"] = FinishReasonName(final_item->reason);
    line["prompt_tokens"] = u.prompt_tokens;
    line["image_tokens"] = u.image_tokens;
    line["generated_tokens"] = u.generated_tokens;
    if (u.selected_hr_tokens > 0) line["selected_hr_tokens"] = u.selected_hr_tokens;
    line["queue_ms"] = t.queue_ms;
    line["preprocess_ms"] = t.preprocess_ms;
    line["vision_ms"] = t.vision_ms;
    line["prefill_ms"] = t.prefill_ms;
    line["first_token_ms"] = t.first_token_ms;
    line["decode_ms"] = t.decode_ms;
    line["flops"] = final_item->flops.Total();
  }
  line["total_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - call.arrival).count();
  std::string text;
  if (JsonLogging()) {
    // The logger's JSON pattern supplies the braces.
    const std::string object =
        line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    text = object.substr(1, object.size() - 2);
  } else {
    for (const auto& [key, value] : line.items()) {
      if (!text.empty()) text += ' ';
      text += key + "=" +
              (value.is_string()
                   ? value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                   : value.dump());
    }
  }
  Logger("request")->info("{}", text);
}

// Everything a finished call reports, once: its metrics, then its log line.
void EndCall(const CallInfo& call, const Status& status, const StreamItem* final_item) {
  if (call.metrics != nullptr) call.metrics->ObserveRequest(call.method, status.code(), final_item);
  LogRequest(call, status, final_item);
}

// OnCancel may run before Submit returns the handle (or never get one): remember it either way.
class CancelLink {
 public:
  void Attach(std::shared_ptr<RequestHandle> handle) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(handle);
    if (cancelled_) handle_->Cancel();
  }
  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (handle_) handle_->Cancel();
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
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

// Converts and submits. On error the call is finished by the caller with the returned status.
Status SubmitCall(const v1::GenerateRequest& request, const CallInfo& call, Scheduler* scheduler,
                  ItemCallback on_item, CancelLink* cancel) {
  StatusOr<GenerationRequest> converted = FromProto(request);
  if (!converted.ok()) return converted.status();
  auto submit = std::make_unique<SubmitRequest>();
  submit->request = std::move(converted).value();
  submit->arrival = call.arrival;
  submit->deadline = call.deadline;
  submit->on_item = std::move(on_item);
  StatusOr<std::shared_ptr<RequestHandle>> handle = scheduler->Submit(submit);
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
  void OnCancel() override { cancel_.Cancel(); }
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

  const CallInfo call_;
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

  void OnCancel() override { cancel_.Cancel(); }
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

  const CallInfo call_;
  grpc::ByteBuffer* const response_;
  v1::AnswerResponse answer_;
  CancelLink cancel_;
  std::shared_ptr<AnswerReactor> self_;  // Released in OnDone.
};

}  // namespace

VqaService::VqaService(const ::flexvqa::ModelInfo& info, Scheduler* scheduler,
                       const ServerLimits& limits, ServerMetrics* metrics)
    : info_(info), scheduler_(scheduler), limits_(limits), metrics_(metrics) {}

namespace {

CallInfo MakeCallInfo(const char* method, grpc::CallbackServerContext* context,
                      const v1::GenerateRequest& request, std::atomic<int64_t>* next_id,
                      ServerMetrics* metrics) {
  CallInfo call;
  call.method = method;
  call.metrics = metrics;
  call.arrival = Clock::now();
  call.deadline = SteadyDeadline(*context);
  call.peer = context->peer();
  call.id = request.request_id().empty() || request.request_id().size() > kMaxRequestIdBytes
                ? "r" + std::to_string(next_id->fetch_add(1))
                : request.request_id();
  return call;
}

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* VqaService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request) {
  v1::GenerateRequest request;
  const Status parsed = ParseRequest(*raw_request, &request);
  auto reactor = std::make_shared<GenerateReactor>(
      MakeCallInfo("Generate", context, request, &next_id_, metrics_));
  reactor->Start(reactor, &request, parsed, scheduler_);
  return reactor.get();
}

grpc::ServerUnaryReactor* VqaService::Answer(grpc::CallbackServerContext* context,
                                             const grpc::ByteBuffer* raw_request,
                                             grpc::ByteBuffer* response) {
  v1::GenerateRequest request;
  const Status parsed = ParseRequest(*raw_request, &request);
  auto reactor = std::make_shared<AnswerReactor>(
      MakeCallInfo("Answer", context, request, &next_id_, metrics_), response);
  reactor->Start(reactor, &request, parsed, scheduler_);
  return reactor.get();
}

grpc::ServerUnaryReactor* VqaService::ModelInfo(grpc::CallbackServerContext* context,
                                                const v1::ModelInfoRequest* /*request*/,
                                                v1::ModelInfoResponse* response) {
  ToProto(info_, limits_, response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace flexvqa
