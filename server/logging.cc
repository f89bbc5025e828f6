#include "server/logging.h"

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <chrono>
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

// gRPC core's own lines (e.g. "Failed accept4: Too many open files") through the "grpc" logger:
// JSON when --log_json, and one place to read.
void GrpcLog(gpr_log_func_args* args) {
  const auto level = args->severity == GPR_LOG_SEVERITY_ERROR  ? spdlog::level::err
                     : args->severity == GPR_LOG_SEVERITY_INFO ? spdlog::level::info
                                                               : spdlog::level::debug;
  Logger("grpc")->log(level, "{}:{}: {}", args->file, args->line, args->message);
}

// libprotobuf logs an ERROR for every string field that is not UTF-8, which a client can make it
// do once a request: at most one line per kProtobufLogEvery, with the count of those dropped.
constexpr std::chrono::seconds kProtobufLogEvery{10};

void ProtobufLog(google::protobuf::LogLevel level, const char* file, int line,
                 const std::string& message) {
  static std::mutex mu;
  static std::chrono::steady_clock::time_point last{};
  static int64_t dropped = 0;
  int64_t dropped_before = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto now = std::chrono::steady_clock::now();
    if (level != google::protobuf::LOGLEVEL_FATAL && now - last < kProtobufLogEvery) {
      ++dropped;
      return;
    }
    last = now;
    dropped_before = dropped;
    dropped = 0;
  }
  const auto spd = level == google::protobuf::LOGLEVEL_INFO      ? spdlog::level::info
                   : level == google::protobuf::LOGLEVEL_WARNING ? spdlog::level::warn
                                                                 : spdlog::level::err;
  Logger("protobuf")
      ->log(spd, "{}:{}: {} ({} similar lines in the last {} s not logged)", file, line, message,
            dropped_before, kProtobufLogEvery.count());
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
  for (const char* name :
       {"server", "scheduler", "vqa", "request", "metrics", "grpc", "protobuf"}) {
    auto logger = Logger(name);
    ApplyFormat(*logger);
    logger->set_level(level);
  }
  gpr_set_log_function(GrpcLog);
  google::protobuf::SetLogHandler(ProtobufLog);
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
