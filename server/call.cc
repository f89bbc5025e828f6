#include "server/call.h"

#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

#include "server/api_convert.h"
#include "server/logging.h"

namespace flexvqa {

namespace {

// One line per request: what was asked, by whom, how it ended, where the time went.
void LogRequest(const Call& call, const Status& status, const StreamItem* final_item) {
  nlohmann::ordered_json line;  // Keeps the fields in this order.
  line["method"] = call.method;
  if (call.protocol != Protocol::kGrpc) line["protocol"] = ProtocolName(call.protocol);
  line["id"] = call.id;
  line["peer"] = call.peer;
  if (!call.client.empty()) line["client"] = call.client;
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

}  // namespace

StatusOr<std::shared_ptr<RequestHandle>> SubmitCall(const v1::GenerateRequest& request,
                                                    const Call& call, Scheduler* scheduler,
                                                    ItemCallback on_item) {
  FLEXVQA_RETURN_IF_ERROR(CheckPromptBytes(request, call.max_prompt_bytes));
  StatusOr<GenerationRequest> converted = FromProto(request);
  if (!converted.ok()) return converted.status();
  auto submit = std::make_unique<SubmitRequest>();
  submit->request = std::move(converted).value();
  submit->arrival = call.arrival;
  submit->deadline = call.deadline;
  submit->on_item = std::move(on_item);
  return scheduler->Submit(submit);
}

void EndCall(Call& call, const Status& status, const StreamItem* final_item) {
  call.slot.reset();  // First: a client that sees the call counted may call again at once.
  if (call.metrics != nullptr) {
    call.metrics->ObserveRequest(call.method, status.code(), final_item, call.protocol);
  }
  LogRequest(call, status, final_item);
}

}  // namespace flexvqa
