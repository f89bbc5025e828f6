#include "server/server_process.h"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "server/heap.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/transport.h"
#include "server/vqa_server.h"

namespace flexvqa {

int RunServerProcess(int argc, char** argv, ServerConfig config,
                     const EngineFactory& create_engine) {
  // Blocked in every thread started from here on; only the sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // A terminal hang-up (or a supervisor's SIGHUP) drains as SIGTERM does, rather than killing the
  // process with its streams (issue 11, finding 6). Nothing reloads on it: TLS files reload by
  // themselves, tokens on restart.
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  FlagSet flags(kEnvPrefix);
  AddServerFlags(&config, &flags);
  flags.Add("port_file",
            "once serving, write the bound gRPC port (line 1), metrics port (line 2; 0 without an "
            "endpoint) and, with --openai_listen_address, the OpenAI port (line 3) to this file",
            &config.server.port_file);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("usage: %s [--flag=value ...]\n%s", argv[0], flags.Help().c_str());
      return 0;
    }
  }
  Status parsed =
      flags.Parse(argc, argv, [](const std::string& name) { return std::getenv(name.c_str()); });
  if (parsed.ok()) parsed = ValidateServerConfig(config);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", parsed.ToString().c_str());
    return 2;
  }
  if (std::string error = SetUpLogging(config.logging); !error.empty()) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  auto log = Logger("server");
  log->info("configuration:\n{}", flags.Describe());
  // Before the first thread: arenas are made per thread on demand.
  if (!LimitMallocArenas(config.server.malloc_arena_max)) {
    log->warn("malloc refused malloc_arena_max={}", config.server.malloc_arena_max);
  }
  // Idle connections each hold a descriptor; gRPC 1.51 stops accepting for good after EMFILE.
  log->info("file descriptor limit: {}", RaiseFileLimit());

  // Before the model loads, so that the endpoint answers (up=1) while a large checkpoint is read.
  // Serving never depends on it: a failed bind is logged and serving goes on.
  ServerMetrics metrics;
  (void)metrics.StartEndpoint(config.metrics);

  StatusOr<std::unique_ptr<Engine>> engine = create_engine(config);
  if (!engine.ok()) {
    log->critical("cannot load the model: {}", engine.status().ToString());
    return 1;
  }
  StatusOr<std::unique_ptr<VqaServer>> server =
      VqaServer::Start(engine->get(), config.server, config.scheduler, &metrics);
  if (!server.ok()) {
    log->critical("{}", server.status().ToString());
    return 1;
  }
  if (!config.server.port_file.empty()) {
    const std::string tmp = config.server.port_file + ".tmp";
    std::ofstream file(tmp);
    file << (*server)->port() << "\n" << metrics.port() << "\n";
    if ((*server)->openai_port() != 0) file << (*server)->openai_port() << "\n";
    file.close();
    std::rename(tmp.c_str(), config.server.port_file.c_str());  // Readers never see half a file.
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  log->info("{}: draining for up to {} ms", strsignal(signal_number),
            config.server.drain_time.count());
  (*server)->Shutdown(Clock::now() + config.server.drain_time);
  server->reset();
  return 0;
}

}  // namespace flexvqa
