// Logging set-up for the server: named spdlog loggers per component ("server", "scheduler", "vqa",
// "request"), levels and an optional JSON line format. SetUpLogging is called once from main before
// any other thread starts; Logger is thread-safe and creates a plain stderr logger when set-up did
// not run (tests).
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace flexvqa {

struct LoggingConfig {
  // trace | debug | info | warn | error | critical | off. Default: info.
  std::string level = "info";
  // One JSON object per line ({"ts","level","logger","msg"}; request lines carry their fields at
  // the top level). Default: false (text).
  bool json = false;
};

// INVALID_ARGUMENT-style message in the return value when the level is unknown; empty on success.
std::string SetUpLogging(const LoggingConfig& config);

// The named logger, created on first use.
std::shared_ptr<spdlog::logger> Logger(const std::string& name);

// Whether SetUpLogging chose JSON (the request line formats its fields accordingly).
bool JsonLogging();

}  // namespace flexvqa
