// flexvqa_server: the VQA gRPC service over the LLaVA engine. `flexvqa_server --help` lists the flags;
// each has a FLEXVQA_<FLAG> environment override.
#include "model/engine.h"
#include "server/server_main.h"

int main(int argc, char** argv) {
  return flexvqa::RunServerMain(argc, argv, flexvqa::ServerConfig(),
                                [](const flexvqa::ServerConfig& config) {
                                  return flexvqa::CreateLlavaEngine(config.engine);
                                });
}
