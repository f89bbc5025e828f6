// flexvqa_server: the VQA gRPC service over the LLaVA engine. `flexvqa_server --help` lists the
// flags; each has a FLEXVQA_<FLAG> environment override. Without --model_dir it serves the default
// model at FLEXVQA_DEFAULT_MODEL_DIR: the demo FlexAttention checkpoint committed in the source
// tree (models/demo-flex, docs/demo_model.md), which answers questions about generated scenes.
#include "model/engine.h"
#include "server/server_process.h"

int main(int argc, char** argv) {
  flexvqa::ServerConfig defaults;
  defaults.engine.model_dir = FLEXVQA_DEFAULT_MODEL_DIR;
  return flexvqa::RunServerProcess(argc, argv, defaults,
                                   [](const flexvqa::ServerConfig& config)
                                       -> flexvqa::StatusOr<std::unique_ptr<flexvqa::Engine>> {
                                     return flexvqa::CreateLlavaEngine(config.engine);
                                   });
}
