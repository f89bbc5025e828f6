// The server's configuration: one struct per component (defaults documented where each is
// declared), filled once in main from flags with FLEXVQA_<FLAG> environment overrides, validated,
// then passed down by const reference. Not thread-safe; main only.
#pragma once

#include <string>

#include "model/engine.h"
#include "model/status.h"
#include "server/batch_policy.h"
#include "server/flags.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/vqa_server.h"

namespace flexvqa {

// EngineOptions' defaults, except the encoder cache: on in the server (--encoder_cache_bytes,
// 512 MiB: about 110 images of a 7B full model in bf16, 11 of flex, which keeps 5184 HR rows
// too), off in the engine's own default (tests, tools).
EngineOptions ServerEngineOptions();

struct ServerConfig {
  ServerOptions server;                          // server/vqa_server.h
  SchedulerConfig scheduler;                     // server/scheduler_config.h
  EngineOptions engine = ServerEngineOptions();  // model/engine.h, with the server's defaults
  LoggingConfig logging;                         // server/logging.h
  MetricsConfig metrics;                         // server/metrics.h
};

inline constexpr char kEnvPrefix[] = "FLEXVQA_";

// Declares every flag of `config` (its current values are the defaults) on `flags`.
void AddServerFlags(ServerConfig* config, FlagSet* flags);

// INVALID_ARGUMENT naming the first field out of range.
Status ValidateServerConfig(const ServerConfig& config);

}  // namespace flexvqa
