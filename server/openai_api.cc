#include "server/openai_api.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <utility>

#include "server/api_convert.h"

namespace flexvqa {

namespace {

using Json = nlohmann::json;

// Deeper than any valid request; the parser is iterative, this keeps the tree small.
constexpr int kMaxJsonDepth = 16;

OpenAiError Invalid(std::string message, std::string param, std::string code = "") {
  OpenAiError error;
  error.message = std::move(message);
  error.param = std::move(param);
  error.code = std::move(code);
  return error;
}

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && text.compare(0, prefix.size(), prefix) == 0;
}

bool StartsWithNoCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
  }
  return true;
}

// The member `name` unless it is absent or null.
const Json* Field(const Json& object, const char* name) {
  const auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

int32_t SaturatedInt32(const Json& value) {
  if (value.is_number_unsigned()) {
    return static_cast<int32_t>(
        std::min<uint64_t>(value.get<uint64_t>(), std::numeric_limits<int32_t>::max()));
  }
  return static_cast<int32_t>(std::clamp<int64_t>(value.get<int64_t>(),
                                                  std::numeric_limits<int32_t>::min(),
                                                  std::numeric_limits<int32_t>::max()));
}

// Standard base64 (RFC 4648 §4) with padding, through OpenSSL's decoder.
std::optional<std::string> DecodeBase64(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return std::nullopt;
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return std::nullopt;
  // EVP_DecodeBlock counts the padding's zero bytes.
  const size_t padding = text.size() - text.find_last_not_of('=') - 1;
  if (padding > 2) return std::nullopt;
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

// A data: URL of a JPEG or PNG into `image`. Remote URLs are refused: fetching them would let any
// client make the server request any address (SSRF).
std::optional<OpenAiError> ConvertImageUrl(const std::string& url, const std::string& param,
                                           v1::Image* image) {
  if (StartsWithNoCase(url, "http://") || StartsWithNoCase(url, "https://")) {
    return Invalid(
        "remote image URLs are not fetched by this server; send the image inline as "
        "data:image/jpeg;base64,... or data:image/png;base64,...",
        param, "invalid_image_url");
  }
  constexpr std::string_view kSchemes[][2] = {{"data:image/jpeg;base64,", "image/jpeg"},
                                              {"data:image/png;base64,", "image/png"}};
  for (const auto& [prefix, mime] : kSchemes) {
    if (!StartsWithNoCase(url, prefix)) continue;
    std::optional<std::string> bytes = DecodeBase64(std::string_view(url).substr(prefix.size()));
    if (!bytes) return Invalid("the image's base64 data is not valid base64", param);
    image->set_data(std::move(*bytes));
    image->set_mime_type(std::string(mime));
    return std::nullopt;
  }
  return Invalid("image_url must be a data:image/jpeg;base64,... or data:image/png;base64,... URL",
                 param, "invalid_image_url");
}

struct Message {
  enum class Role { kSystem, kUser, kAssistant } role;
  std::string text;
};

// One message's text (and image, into out->request) from its string or parts content.
std::optional<OpenAiError> ConvertContent(const Json& content, const std::string& where,
                                          Message::Role role, ChatRequest* out, std::string* text) {
  if (content.is_string()) {
    *text = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) {
    return Invalid(where + " must be a string or an array of content parts", where);
  }
  for (size_t j = 0; j < content.size(); ++j) {
    const Json& part = content[j];
    const std::string at = where + "[" + std::to_string(j) + "]";
    const Json* type = part.is_object() ? Field(part, "type") : nullptr;
    if (type == nullptr || !type->is_string()) {
      return Invalid(at + " must be an object with a string `type`", at + ".type");
    }
    if (*type == "text") {
      const Json* part_text = Field(part, "text");
      if (part_text == nullptr || !part_text->is_string()) {
        return Invalid(at + ".text must be a string", at + ".text");
      }
      if (!text->empty()) *text += '\n';
      *text += part_text->get<std::string>();
    } else if (*type == "image_url") {
      const std::string param = at + ".image_url";
      if (role != Message::Role::kUser) {
        return Invalid("images are accepted in user messages only", param);
      }
      if (out->request.images_size() >= kMaxImagesPerRequest) {
        return Invalid("this model accepts at most " + std::to_string(kMaxImagesPerRequest) +
                           " image per request",
                       param);
      }
      const Json* image_url = Field(part, "image_url");
      const Json* url =
          image_url != nullptr && image_url->is_object() ? Field(*image_url, "url") : nullptr;
      if (url == nullptr || !url->is_string()) {
        return Invalid(param + " must be an object with a string `url`", param);
      }
      if (auto error = ConvertImageUrl(url->get<std::string>(), param, out->request.add_images())) {
        return error;
      }
      out->image_param = param;
    } else {
      return Invalid("content part type '" + type->get<std::string>().substr(0, 32) +
                         "' is not supported (text, image_url)",
                     at + ".type");
    }
  }
  return std::nullopt;
}

// messages -> request.turns: system (and developer) messages' text joins the first user turn's
// (LLaVA's templates have no system turn); user and assistant messages become turns, in order.
std::optional<OpenAiError> ConvertMessages(const Json& body, ChatRequest* out) {
  const Json* messages = Field(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    return Invalid("`messages` must be a non-empty array", "messages");
  }
  std::vector<Message> turns;
  std::string system;
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& m = (*messages)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return Invalid(where + " must be an object", where);
    const Json* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) {
      return Invalid(where + ".role must be a string", where + ".role");
    }
    Message message;
    if (*role == "system" || *role == "developer") {
      message.role = Message::Role::kSystem;
    } else if (*role == "user") {
      message.role = Message::Role::kUser;
    } else if (*role == "assistant") {
      message.role = Message::Role::kAssistant;
    } else {
      return Invalid("role '" + role->get<std::string>().substr(0, 32) +
                         "' is not supported (system, developer, user, assistant; no tools)",
                     where + ".role");
    }
    if (Field(m, "tool_calls") != nullptr || Field(m, "function_call") != nullptr) {
      return Invalid("tool calls are not supported", where + ".tool_calls");
    }
    const Json* content = Field(m, "content");
    if (content == nullptr) return Invalid(where + ".content is missing", where + ".content");
    if (auto error =
            ConvertContent(*content, where + ".content", message.role, out, &message.text)) {
      return error;
    }
    if (message.role == Message::Role::kSystem) {
      system += (system.empty() ? "" : "\n\n") + message.text;
    } else {
      turns.push_back(std::move(message));
    }
  }
  const auto first_user = std::find_if(
      turns.begin(), turns.end(), [](const Message& m) { return m.role == Message::Role::kUser; });
  if (first_user == turns.end()) return Invalid("`messages` has no user message", "messages");
  if (!system.empty()) first_user->text = system + "\n\n" + first_user->text;
  for (Message& m : turns) {
    v1::ChatTurn* turn = out->request.add_turns();
    turn->set_role(m.role == Message::Role::kUser ? v1::ChatTurn::ROLE_USER
                                                  : v1::ChatTurn::ROLE_ASSISTANT);
    turn->set_text(std::move(m.text));
  }
  return std::nullopt;
}

// Fields flexvqa does not implement: refused with 400 rather than silently ignored.
std::optional<OpenAiError> RefuseUnsupported(const Json& body) {
  if (const Json* n = Field(body, "n"); n != nullptr && !(n->is_number_integer() && *n == 1)) {
    return Invalid("only n=1 is supported", "n");
  }
  if (const Json* logprobs = Field(body, "logprobs");
      logprobs != nullptr && !(logprobs->is_boolean() && !logprobs->get<bool>())) {
    return Invalid("logprobs are not supported", "logprobs");
  }
  if (Field(body, "top_logprobs") != nullptr) {
    return Invalid("logprobs are not supported", "top_logprobs");
  }
  for (const char* name : {"tools", "functions"}) {
    if (const Json* tools = Field(body, name);
        tools != nullptr && !(tools->is_array() && tools->empty())) {
      return Invalid("tools are not supported", name);
    }
  }
  for (const char* name : {"tool_choice", "function_call"}) {
    if (const Json* choice = Field(body, name); choice != nullptr && *choice != "none") {
      return Invalid("tools are not supported", name);
    }
  }
  if (const Json* format = Field(body, "response_format");
      format != nullptr && !(format->is_object() && format->value("type", "") == "text")) {
    return Invalid("only response_format {\"type\": \"text\"} is supported", "response_format");
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (const Json* penalty = Field(body, name);
        penalty != nullptr && !(penalty->is_number() && penalty->get<double>() == 0)) {
      return Invalid(std::string(name) + " is not supported (repetition_penalty is)", name);
    }
  }
  if (const Json* bias = Field(body, "logit_bias");
      bias != nullptr && !(bias->is_object() && bias->empty())) {
    return Invalid("logit_bias is not supported", "logit_bias");
  }
  return std::nullopt;
}

std::optional<OpenAiError> ConvertSampling(const Json& body, ChatRequest* out) {
  v1::SamplingParams* s = out->request.mutable_sampling();
  for (const char* name : {"max_completion_tokens", "max_tokens"}) {
    const Json* value = Field(body, name);
    if (value == nullptr) continue;
    if (!value->is_number_integer())
      return Invalid(std::string(name) + " must be an integer", name);
    s->set_max_new_tokens(SaturatedInt32(*value));  // The engine checks the range.
    out->max_tokens_param = name;
    break;  // max_completion_tokens supersedes the deprecated max_tokens.
  }
  // OpenAI's defaults where the field is unset: temperature 1, top_p 1.
  s->set_temperature(1.0f);
  for (const auto& [name, setter] :
       {std::pair<const char*, void (v1::SamplingParams::*)(float)>{
            "temperature", &v1::SamplingParams::set_temperature},
        {"top_p", &v1::SamplingParams::set_top_p},
        {"repetition_penalty", &v1::SamplingParams::set_repetition_penalty}}) {
    const Json* value = Field(body, name);
    if (value == nullptr) continue;
    if (!value->is_number()) return Invalid(std::string(name) + " must be a number", name);
    (s->*setter)(value->get<float>());
  }
  if (const Json* top_k = Field(body, "top_k")) {
    if (!top_k->is_number_integer()) return Invalid("top_k must be an integer", "top_k");
    s->set_top_k(SaturatedInt32(*top_k));
  }
  if (const Json* seed = Field(body, "seed")) {
    if (!seed->is_number_integer()) return Invalid("seed must be an integer", "seed");
    s->set_seed(seed->is_number_unsigned() ? seed->get<uint64_t>()
                                           : static_cast<uint64_t>(seed->get<int64_t>()));
  }
  if (const Json* stop = Field(body, "stop")) {
    if (stop->is_string()) {
      s->add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const Json& one : *stop) {
        if (!one.is_string()) return Invalid("stop must be a string or a list of strings", "stop");
        s->add_stop(one.get<std::string>());
      }
    } else {
      return Invalid("stop must be a string or a list of strings", "stop");
    }
  }
  if (const Json* ignore_eos = Field(body, "ignore_eos")) {
    if (!ignore_eos->is_boolean()) return Invalid("ignore_eos must be a boolean", "ignore_eos");
    s->set_ignore_eos(ignore_eos->get<bool>());
  }
  if (const Json* threshold = Field(body, "selection_threshold")) {
    if (!threshold->is_number_unsigned()) {
      return Invalid("selection_threshold must be an integer in [0, 255]", "selection_threshold");
    }
    out->request.set_selection_threshold(static_cast<uint32_t>(
        std::min<uint64_t>(threshold->get<uint64_t>(), std::numeric_limits<uint32_t>::max())));
  }
  return std::nullopt;
}

// The request field an engine message is about, in OpenAI's names.
std::string ParamOf(const std::string& message, const ChatRequest* request) {
  const std::pair<const char*, const char*> prefixes[] = {
      {"temperature", "temperature"},
      {"top_p", "top_p"},
      {"top_k", "top_k"},
      {"repetition_penalty", "repetition_penalty"},
      {"each stop string", "stop"},
      {"selection_threshold", "selection_threshold"},
      {"turn", "messages"},
      {"the conversation", "messages"},
      {"the last turn", "messages"},
      {"the prompt", "messages"}};
  if (StartsWith(message, "max_new_tokens")) {
    return request != nullptr && !request->max_tokens_param.empty() ? request->max_tokens_param
                                                                    : "max_completion_tokens";
  }
  if (StartsWith(message, "at most") && message.find("stop") != std::string::npos) return "stop";
  for (const auto& [prefix, param] : prefixes) {
    if (StartsWith(message, prefix)) return param;
  }
  if (request != nullptr && !request->image_param.empty() &&
      (message.find("image") != std::string::npos || message.find("JPEG") != std::string::npos ||
       message.find("PNG") != std::string::npos)) {
    return request->image_param;
  }
  return "";
}

Json Usage(const StreamItem& final_item) {
  const RequestUsage& u = final_item.usage;
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.generated_tokens},
          {"total_tokens", u.prompt_tokens + u.generated_tokens}};
}

// Our own figures, in an object OpenAI clients ignore.
Json Figures(const StreamItem& final_item) {
  v1::GenerateFinal final;
  ToProto(final_item, "", &final);
  const v1::FlopsByPhase& f = final.flops_by_phase();
  const v1::Timings& t = final.timings();
  return {{"image_tokens", final_item.usage.image_tokens},
          {"selected_hr_tokens", final_item.usage.selected_hr_tokens},
          {"encoder_cache_hit", final.usage().encoder_cache_hit()},
          {"flops", final.flops()},
          {"flops_by_phase",
           {{"vision", f.vision()},
            {"projector", f.projector()},
            {"prefill", f.prefill()},
            {"decode", f.decode()}}},
          {"timings_ms",
           {{"queue", t.queue_ms()},
            {"preprocess", t.preprocess_ms()},
            {"vision", t.vision_ms()},
            {"prefill", t.prefill_ms()},
            {"first_token", t.first_token_ms()},
            {"decode", t.decode_ms()},
            {"total", t.total_ms()}}}};
}

const char* FinishName(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

}  // namespace

std::optional<OpenAiError> ParseChatRequest(std::string_view body, const std::string& served_model,
                                            ChatRequest* out) {
  bool too_deep = false;
  const Json parsed = Json::parse(
      body.begin(), body.end(),
      [&too_deep](int depth, Json::parse_event_t, Json&) {
        if (depth > kMaxJsonDepth) too_deep = true;
        return !too_deep;
      },
      /*allow_exceptions=*/false);
  if (too_deep) {
    return Invalid("the body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", "");
  }
  if (parsed.is_discarded()) return Invalid("the body is not valid JSON", "");
  if (!parsed.is_object()) return Invalid("the body must be a JSON object", "");
  const Json* model = Field(parsed, "model");
  if (model == nullptr || !model->is_string()) {
    return Invalid("`model` must name the served model ('" + served_model + "')", "model",
                   "model_not_found");
  }
  if (*model != served_model) {
    return Invalid("the model '" + model->get<std::string>().substr(0, 64) +
                       "' does not exist here; this server serves '" + served_model + "'",
                   "model", "model_not_found");
  }
  out->model = served_model;
  if (const Json* stream = Field(parsed, "stream")) {
    if (!stream->is_boolean()) return Invalid("stream must be a boolean", "stream");
    out->stream = stream->get<bool>();
  }
  if (const Json* options = Field(parsed, "stream_options")) {
    const Json* usage = options->is_object() ? Field(*options, "include_usage") : nullptr;
    if (!options->is_object() || (usage != nullptr && !usage->is_boolean())) {
      return Invalid("stream_options must be {\"include_usage\": true|false}", "stream_options");
    }
    out->include_usage = usage != nullptr && usage->get<bool>();
  }
  if (auto error = RefuseUnsupported(parsed)) return error;
  if (auto error = ConvertMessages(parsed, out)) return error;
  return ConvertSampling(parsed, out);
}

StatusOr<std::chrono::milliseconds> ParseTimeoutSeconds(const std::string& value) {
  size_t used = 0;
  double seconds = 0;
  try {
    seconds = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size() || !std::isfinite(seconds) || seconds <= 0 ||
      seconds > 1e7) {
    return InvalidArgumentError("the timeout header must be a positive number of seconds, got '" +
                                value.substr(0, 32) + "'");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000)));
}

OpenAiError ErrorFor(const Status& status, const ChatRequest* request) {
  OpenAiError error;
  error.message = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      error.param = ParamOf(status.message(), request);
      break;
    case StatusCode::kUnauthenticated:
      error = {401, "invalid or missing bearer token (Authorization: Bearer <token>)",
               "authentication_error", "", "invalid_api_key"};
      break;
    case StatusCode::kNotFound:
      error.http_status = 404;
      error.type = "not_found_error";
      break;
    case StatusCode::kResourceExhausted:
      error.http_status = 429;
      error.type = "rate_limit_error";
      error.code = "rate_limit_exceeded";
      error.retry_after_s = 1;
      break;
    case StatusCode::kCancelled:
      error.http_status = 499;  // The client closed the connection (nginx's code).
      error.type = "cancelled";
      break;
    case StatusCode::kUnavailable:
      error.http_status = 503;
      error.type = "service_unavailable";
      error.retry_after_s = 1;
      break;
    case StatusCode::kDeadlineExceeded:
      error.http_status = 504;
      error.type = "timeout";
      break;
    default:
      error.http_status = 500;
      error.type = "server_error";
      break;
  }
  return error;
}

Json ErrorBody(const OpenAiError& error) {
  auto or_null = [](const std::string& text) { return text.empty() ? Json(nullptr) : Json(text); };
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", or_null(error.param)},
            {"code", or_null(error.code)}}}};
}

Json CompletionBody(const std::string& id, int64_t created, const std::string& model,
                    const std::string& text, const StreamItem& final_item) {
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", model},
          {"choices", Json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", text}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", FinishName(final_item.reason)}}})},
          {"usage", Usage(final_item)},
          {"flexvqa", Figures(final_item)}};
}

Json ChunkBody(const std::string& id, int64_t created, const std::string& model, bool role,
               const std::string& content, const StreamItem* finish, bool include_usage) {
  Json delta = Json::object();
  if (role) delta["role"] = "assistant";
  if (role || !content.empty()) delta["content"] = content;
  Json chunk = {
      {"id", id},
      {"object", "chat.completion.chunk"},
      {"created", created},
      {"model", model},
      {"choices",
       Json::array({{{"index", 0},
                     {"delta", delta},
                     {"logprobs", nullptr},
                     {"finish_reason",
                      finish != nullptr ? Json(FinishName(finish->reason)) : Json(nullptr)}}})}};
  if (include_usage) chunk["usage"] = nullptr;
  if (finish != nullptr) chunk["flexvqa"] = Figures(*finish);
  return chunk;
}

Json UsageChunkBody(const std::string& id, int64_t created, const std::string& model,
                    const StreamItem& final_item) {
  return {{"id", id},       {"object", "chat.completion.chunk"}, {"created", created},
          {"model", model}, {"choices", Json::array()},          {"usage", Usage(final_item)}};
}

std::string SseEvent(const Json& json) {
  // dump() escapes control characters, so the event is one line.
  return "data: " + json.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n";
}

Json ModelsBody(const std::string& model, int64_t created) {
  return {
      {"object", "list"},
      {"data",
       Json::array(
           {{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "flexvqa"}}})}};
}

}  // namespace flexvqa
