// flexvqa_fake_server: the real server process (flags, health, reflection, drain on SIGTERM) over
// the fake engine, for process-level tests and client tests that need no model. Flags as
// flexvqa_server's.
#include <memory>

#include "server/server_process.h"
#include "tests/server/fake_engine.h"

int main(int argc, char** argv) {
  flexvqa::ServerConfig defaults;
  defaults.server.listen_address = "127.0.0.1:0";
  defaults.metrics.listen_address = "127.0.0.1:0";  // Tests run in parallel: no fixed port.
  return flexvqa::RunServerProcess(argc, argv, defaults, [](const flexvqa::ServerConfig& config) {
    flexvqa::testing::FakeEngineOptions options;
    options.max_sequences = config.engine.max_sequences;
    options.limits = config.engine.limits;
    options.context_length = config.engine.max_context > 0 ? config.engine.max_context : 8192;
    // Slow enough that a stream is still running when a test sends SIGTERM.
    options.step_delay = std::chrono::microseconds(200);
    return flexvqa::StatusOr<std::unique_ptr<flexvqa::Engine>>(
        std::make_unique<flexvqa::testing::FakeEngine>(options));
  });
}
