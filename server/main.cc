// flexvqa_server: the VQA gRPC service over the LLaVA engine. `flexvqa_server --help` lists the
// flags; each has a FLEXVQA_<FLAG> environment override. Without --model_dir it serves the embedded
// default model: the tiny random LLaVA at FLEXVQA_DEFAULT_MODEL_DIR (<build dir>/models/tiny-llava,
// the directory scripts/demo.sh uses), written there on first start (tools/tiny/tiny_llava.h).
#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "model/engine.h"
#include "server/logging.h"
#include "server/server_process.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

// Writes the tiny model into a private directory and renames it into place, so that two servers
// starting at once never load a half-written checkpoint.
Status EnsureDefaultModel(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(dir, ec)) return Status::Ok();
  const std::string tmp = dir + ".tmp." + std::to_string(getpid());
  Logger("server")->info("default model {} is missing: writing the tiny random LLaVA there", dir);
  FLEXVQA_RETURN_IF_ERROR(WriteTinyLlava(tmp, TinyLlavaOptions()).WithContext("default model"));
  fs::rename(tmp, dir, ec);
  if (ec) {
    fs::remove_all(tmp, ec);  // Another server won the race: its copy is the same model.
    if (!fs::exists(dir, ec)) return InternalError("cannot move the default model into " + dir);
  }
  Logger("server")->info("wrote the default model to {}", dir);
  return Status::Ok();
}

}  // namespace
}  // namespace flexvqa

int main(int argc, char** argv) {
  flexvqa::ServerConfig defaults;
  defaults.engine.model_dir = FLEXVQA_DEFAULT_MODEL_DIR;
  return flexvqa::RunServerProcess(
      argc, argv, defaults,
      [](const flexvqa::ServerConfig& config)
          -> flexvqa::StatusOr<std::unique_ptr<flexvqa::Engine>> {
        if (config.engine.model_dir == FLEXVQA_DEFAULT_MODEL_DIR) {
          FLEXVQA_RETURN_IF_ERROR(flexvqa::EnsureDefaultModel(config.engine.model_dir));
        }
        return flexvqa::CreateLlavaEngine(config.engine);
      });
}
