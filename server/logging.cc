#include "server/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>

namespace flexvqa {

namespace {

std::atomic<bool> json_logging{false};
std::mutex create_mu;

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v";
constexpr char kJsonPrefix[] = R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","logger":"%n",)";

// %* : the message as a JSON string.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const std::string text = nlohmann::json(std::string(msg.payload.data(), msg.payload.size()))
                                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessageFlag>();
  }
};

void ApplyFormat(spdlog::logger& logger) {
  if (!json_logging.load()) {
    logger.set_pattern(kTextPattern);
    return;
  }
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  if (logger.name() == "request") {
    // The request line's payload is already `"key":value,...`.
    formatter->set_pattern(std::string(kJsonPrefix) + "%v}");
  } else {
    formatter->add_flag<JsonMessageFlag>('*').set_pattern(std::string(kJsonPrefix) + "\"msg\":%*}");
  }
  logger.set_formatter(std::move(formatter));
}

}  // namespace

std::string SetUpLogging(const LoggingConfig& config) {
  const spdlog::level::level_enum level = spdlog::level::from_str(config.level);
  if (level == spdlog::level::off && config.level != "off") {
    return "unknown log level '" + config.level +
           "' (trace, debug, info, warn, error, critical, off)";
  }
  json_logging.store(config.json);
  spdlog::set_level(level);
  for (const char* name : {"server", "scheduler", "vqa", "request"}) {
    auto logger = Logger(name);
    ApplyFormat(*logger);
    logger->set_level(level);
  }
  return "";
}

std::shared_ptr<spdlog::logger> Logger(const std::string& name) {
  std::lock_guard<std::mutex> lock(create_mu);
  if (auto logger = spdlog::get(name)) return logger;
  auto logger =
      std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_sink_mt>());
  ApplyFormat(*logger);
  spdlog::initialize_logger(logger);
  return logger;
}

bool JsonLogging() { return json_logging.load(); }

}  // namespace flexvqa
