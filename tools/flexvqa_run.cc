// flexvqa_run: answers one visual question with the engine directly (no server), streaming the
// text.
//   flexvqa_run --model DIR [--image FILE] --question TEXT [--device cpu|cuda] [--dtype auto|...]
//               [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K]
//               [--repetition-penalty R] [--seed S] [--vision-dir DIR]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "model/engine.h"

namespace {

int Fail(const flexvqa::Status& status) {
  std::fprintf(stderr, "flexvqa_run: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  flexvqa::EngineOptions options;
  options.max_sequences = 1;
  flexvqa::GenerationRequest request;
  std::string image_path, question;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value (see the usage at the top of tools/flexvqa_run.cc)\n",
                   arg.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (arg == "--model")
      options.model_dir = v;
    else if (arg == "--vision-dir")
      options.vision_dir = v;
    else if (arg == "--device")
      options.device = v;
    else if (arg == "--dtype")
      options.dtype = v;
    else if (arg == "--image")
      image_path = v;
    else if (arg == "--question")
      question = v;
    else if (arg == "--max-new-tokens")
      request.sampling.max_new_tokens = std::atoi(v.c_str());
    else if (arg == "--temperature")
      request.sampling.temperature = std::strtof(v.c_str(), nullptr);
    else if (arg == "--top-p")
      request.sampling.top_p = std::strtof(v.c_str(), nullptr);
    else if (arg == "--top-k")
      request.sampling.top_k = std::atoi(v.c_str());
    else if (arg == "--repetition-penalty")
      request.sampling.repetition_penalty = std::strtof(v.c_str(), nullptr);
    else if (arg == "--seed")
      request.sampling.seed = std::strtoull(v.c_str(), nullptr, 10);
    else {
      std::fprintf(stderr, "unknown flag %s\n", arg.c_str());
      return 2;
    }
  }
  if (options.model_dir.empty() || question.empty()) {
    std::fprintf(stderr, "usage: flexvqa_run --model DIR [--image FILE] --question TEXT [...]\n");
    return 2;
  }
  request.turns.push_back({flexvqa::ChatTurn::Role::kUser, question});
  if (!image_path.empty()) {
    std::ifstream in(image_path, std::ios::binary);
    if (!in) return Fail(flexvqa::NotFoundError("cannot read image " + image_path));
    request.image = flexvqa::ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
  }
  auto engine = flexvqa::CreateLlavaEngine(options);
  if (!engine.ok()) return Fail(engine.status());
  auto prepared = (*engine)->Prepare(request);
  if (!prepared.ok()) return Fail(prepared.status());
  auto id = (*engine)->Admit(*prepared);
  if (!id.ok()) return Fail(id.status());
  std::vector<flexvqa::TokenEvent> events;
  (*engine)->Prefill({*id}, &events);
  while (true) {
    for (const auto& event : events) {
      if (!event.status.ok()) return Fail(event.status);
      std::fputs(event.text.c_str(), stdout);
      std::fflush(stdout);
      if (event.finished) {
        std::fputc('\n', stdout);
        return 0;
      }
    }
    events.clear();
    (*engine)->Decode({*id}, &events);
  }
}
