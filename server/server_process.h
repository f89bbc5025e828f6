// The server process's main, shared by flexvqa_server (LLaVA engine) and the test server (fake
// engine): flags and environment, logging, engine, VqaServer, then SIGTERM/SIGINT/SIGHUP -> drain
// -> exit 0. Call it from main() before any thread starts (it blocks the signals it waits for).
#pragma once

#include <functional>
#include <memory>

#include "model/engine.h"
#include "model/status.h"
#include "server/config.h"

namespace flexvqa {

using EngineFactory = std::function<StatusOr<std::unique_ptr<Engine>>(const ServerConfig& config)>;

// `config` holds the defaults the flags start from. Returns the process exit code: 0 after a drain,
// 2 for bad flags, 1 when the engine or the server cannot start.
int RunServerProcess(int argc, char** argv, ServerConfig config,
                     const EngineFactory& create_engine);

}  // namespace flexvqa
