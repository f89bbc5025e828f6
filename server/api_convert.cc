#include "server/api_convert.h"

#include <algorithm>
#include <iterator>
#include <limits>

namespace flexvqa {

namespace {

Status ConvertTurns(const v1::GenerateRequest& request, std::vector<ChatTurn>* turns) {
  const bool has_question = !request.question().empty();
  const bool has_turns = request.turns_size() > 0;
  if (has_question && has_turns) {
    return InvalidArgumentError("set either `question` or `turns`, not both");
  }
  if (!has_question && !has_turns) {
    return InvalidArgumentError(
        "empty prompt: set `question` (or `turns`) to the question to answer");
  }
  if (has_question) {
    turns->push_back({ChatTurn::Role::kUser, request.question()});
    return Status::Ok();
  }
  for (int i = 0; i < request.turns_size(); ++i) {
    const v1::ChatTurn& turn = request.turns(i);
    const std::string field = "turns[" + std::to_string(i) + "]";
    ChatTurn converted;
    switch (turn.role()) {
      case v1::ChatTurn::ROLE_UNSPECIFIED:
      case v1::ChatTurn::ROLE_USER:
        converted.role = ChatTurn::Role::kUser;
        break;
      case v1::ChatTurn::ROLE_ASSISTANT:
        converted.role = ChatTurn::Role::kAssistant;
        break;
      default:
        return InvalidArgumentError(field + ".role " + std::to_string(turn.role()) +
                                    " is not a known role (ROLE_USER, ROLE_ASSISTANT)");
    }
    converted.text = turn.text();
    turns->push_back(std::move(converted));
  }
  // Roles, order and text are the engine's to check, once (model/request_validation.h).
  return Status::Ok();
}

Status ConvertImages(const v1::GenerateRequest& request, std::optional<ImageInput>* image) {
  if (request.images_size() > kMaxImagesPerRequest) {
    return InvalidArgumentError("`images` has " + std::to_string(request.images_size()) +
                                " images; this model accepts at most " +
                                std::to_string(kMaxImagesPerRequest));
  }
  if (request.images_size() == 0) return Status::Ok();
  const v1::Image& in = request.images(0);
  const std::string& mime = in.mime_type();
  if (!mime.empty() && std::find(std::begin(kImageMimeTypes), std::end(kImageMimeTypes), mime) ==
                           std::end(kImageMimeTypes)) {
    return InvalidArgumentError(
        "images[0].mime_type '" + mime.substr(0, 64) +
        "' is not supported: use image/jpeg, image/png, or leave it empty to "
        "detect the type from the bytes");
  }
  if (in.data().empty()) return InvalidArgumentError("images[0].data is empty (zero-byte image)");
  *image = ImageInput{in.data(), mime};
  return Status::Ok();
}

SamplingParams ConvertSampling(const v1::SamplingParams& in) {
  SamplingParams out;
  if (in.has_max_new_tokens()) out.max_new_tokens = in.max_new_tokens();
  if (in.has_temperature()) out.temperature = in.temperature();
  if (in.has_top_p()) out.top_p = in.top_p();
  if (in.has_top_k()) out.top_k = in.top_k();
  if (in.has_repetition_penalty()) out.repetition_penalty = in.repetition_penalty();
  out.seed = in.seed();
  out.stop.assign(in.stop().begin(), in.stop().end());
  out.ignore_eos = in.ignore_eos();
  return out;
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

}  // namespace

Status CheckPromptBytes(const v1::GenerateRequest& request, int64_t max_prompt_bytes) {
  int64_t bytes = static_cast<int64_t>(request.question().size());
  for (const v1::ChatTurn& turn : request.turns())
    bytes += static_cast<int64_t>(turn.text().size());
  if (bytes <= max_prompt_bytes) return Status::Ok();
  return InvalidArgumentError("the prompt (question or turns) has " + std::to_string(bytes) +
                              " bytes; the limit is " + std::to_string(max_prompt_bytes) +
                              " (ModelInfo limits.max_prompt_bytes)");
}

StatusOr<GenerationRequest> FromProto(const v1::GenerateRequest& request) {
  if (request.request_id().size() > static_cast<size_t>(kMaxRequestIdBytes)) {
    return InvalidArgumentError("request_id is longer than " + std::to_string(kMaxRequestIdBytes) +
                                " bytes");
  }
  GenerationRequest out;
  FLEXVQA_RETURN_IF_ERROR(ConvertTurns(request, &out.turns));
  FLEXVQA_RETURN_IF_ERROR(ConvertImages(request, &out.image));
  out.sampling = ConvertSampling(request.sampling());
  if (request.has_selection_threshold()) {
    // The engine checks mode and range (one place); saturating keeps a huge value out of range.
    out.selection_threshold = static_cast<int>(
        std::min<uint32_t>(request.selection_threshold(), std::numeric_limits<int32_t>::max()));
  }
  return out;
}

void ToProto(const SelectionSummary& summary, v1::SelectionSummary* out) {
  out->set_grid(summary.grid);
  out->set_hr_side(summary.hr_side);
  out->set_steps(summary.num_steps);
  out->set_first_fa_layer(summary.first_fa_layer);
  out->set_region_x(summary.region_x);
  out->set_region_y(summary.region_y);
  out->set_region_side(summary.region_side);
  const size_t blocks = static_cast<size_t>(summary.grid) * summary.grid;
  for (int layer = 0; layer < summary.num_fa_layers; ++layer) {
    v1::FaLayerSelection* out_layer = out->add_layers();
    const auto first = summary.block_steps.begin() + static_cast<std::ptrdiff_t>(layer * blocks);
    out_layer->mutable_block_steps()->Add(first, first + static_cast<std::ptrdiff_t>(blocks));
    out_layer->set_selected_tokens(summary.selected_tokens[layer]);
  }
}

void ToProto(const StreamItem& final_item, const std::string& request_id, v1::GenerateFinal* out) {
  out->set_request_id(request_id);
  out->set_finish_reason(ToProto(final_item.reason));
  v1::Usage* usage = out->mutable_usage();
  usage->set_prompt_tokens(final_item.usage.prompt_tokens);
  usage->set_image_tokens(final_item.usage.image_tokens);
  usage->set_selected_hr_tokens(final_item.usage.selected_hr_tokens);
  usage->set_generated_tokens(final_item.usage.generated_tokens);
  usage->set_encoder_cache_hit(final_item.usage.encoder_cache == EncoderCacheUse::kHit);
  const FlopCount& f = final_item.flops;
  auto phase_total = [&f](FlopCount::Phase phase) {
    double total = 0;
    for (double flops : f.flops[phase]) total += flops;
    return total;
  };
  v1::FlopsByPhase* by_phase = out->mutable_flops_by_phase();
  by_phase->set_vision(phase_total(FlopCount::kVision));
  by_phase->set_projector(phase_total(FlopCount::kProjector));
  by_phase->set_prefill(phase_total(FlopCount::kPrefill));
  by_phase->set_decode(phase_total(FlopCount::kDecode));
  out->set_flops(f.Total());
  if (!final_item.selection.empty()) ToProto(final_item.selection, out->mutable_selection());
  const RequestTimings& t = final_item.timings;
  v1::Timings* timings = out->mutable_timings();
  timings->set_queue_ms(t.queue_ms);
  timings->set_preprocess_ms(t.preprocess_ms);
  timings->set_vision_ms(t.vision_ms);
  timings->set_prefill_ms(t.prefill_ms);
  timings->set_first_token_ms(t.first_token_ms);
  timings->set_decode_ms(t.decode_ms);
  timings->set_total_ms(t.total_ms);
}

void ToProto(const ModelInfo& info, const ServerLimits& limits, v1::ModelInfoResponse* out) {
  out->set_name(info.name);
  out->set_mode(info.mode);
  out->set_dtype(info.dtype);
  out->set_device(info.device);
  out->set_chat_template(info.chat_template);
  out->set_context_length(info.context_length);
  out->set_vocab_size(info.vocab_size);
  out->set_num_image_tokens(info.num_image_tokens);
  out->set_max_running_sequences(std::min(info.max_sequences, limits.max_running));
  out->set_max_images(kMaxImagesPerRequest);
  for (const char* mime : kImageMimeTypes) out->add_mime_types(mime);
  out->set_supports_selection_threshold(info.supports_selection_threshold);
  v1::Limits* l = out->mutable_limits();
  l->set_max_image_bytes(info.limits.max_image_bytes);
  l->set_max_image_pixels(info.limits.max_image_pixels);
  l->set_max_prompt_tokens(info.limits.max_prompt_tokens > 0 ? info.limits.max_prompt_tokens
                                                             : info.context_length - 1);
  // A request needs one prompt token at least: more new tokens than that never fit the context.
  l->set_max_new_tokens(std::min(info.limits.max_new_tokens, std::max(1, info.context_length - 1)));
  l->set_max_prompt_bytes(info.limits.max_prompt_bytes);
  l->set_max_stop_strings(info.limits.max_stop_strings);
  l->set_max_stop_string_bytes(info.limits.max_stop_string_bytes);
  l->set_max_message_bytes(limits.max_message_bytes);
  l->set_max_queued_requests(limits.max_queued);
  l->set_max_calls_per_client(limits.max_calls_per_client);
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

}  // namespace flexvqa
