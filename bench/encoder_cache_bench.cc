// encoder_cache_bench: time to first token of the second turn of a conversation about one image,
// with the encoder cache on and off, in one run, through the public Engine API on tiny checkpoints
// it writes itself (tools/tiny).
//   encoder_cache_bench [--models full56,full336,flex] [--reps 15] [--image FILE] [--work_dir DIR]
// full56: the default tiny model (56 px tower, 16 image tokens); full336 and flex: the tiny widths
// at LLaVA-1.5's image geometry (336 px tower, 576 image tokens; flex at 1008 px: 10 tower passes).
// Two engines per model, one with the cache (64 MiB) and one without, both warmed by the first
// turn; then `reps` rounds, each timing the second turn on both engines in turn (the order swapped
// every round): Prepare (tokenisation, image decoding and preprocessing: the cache skips none of
// it), Admit and Prefill, which emits the first token. Prints, per model, the medians of both and
// their ratio, and the vision_ms the uncached engine reported.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "model/engine.h"
#include "tools/tiny/tiny_llava.h"

namespace {

using Clock = std::chrono::steady_clock;
using flexvqa::Engine;
using flexvqa::GenerationRequest;

std::vector<std::string> Split(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty()      ? 0
         : v.size() % 2 ? v[v.size() / 2]
                        : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Turn {
  double ttft_ms = 0;
  double prepare_ms = 0;
  double vision_ms = 0;
  flexvqa::EncoderCacheUse use = flexvqa::EncoderCacheUse::kNone;
};

// Prepare, Admit, Prefill: the first token. Exits on any error (a benchmark, not a server).
Turn FirstToken(Engine& engine, const GenerationRequest& request) {
  const Clock::time_point start = Clock::now();
  auto prepared = engine.Prepare(request);
  const Clock::time_point prepared_at = Clock::now();
  if (!prepared.ok()) {
    std::fprintf(stderr, "Prepare: %s\n", prepared.status().ToString().c_str());
    std::exit(1);
  }
  auto id = engine.Admit(*prepared);
  if (!id.ok()) {
    std::fprintf(stderr, "Admit: %s\n", id.status().ToString().c_str());
    std::exit(1);
  }
  std::vector<flexvqa::TokenEvent> events;
  engine.Prefill({*id}, &events);
  const Clock::time_point done = Clock::now();
  if (events.size() != 1 || !events[0].status.ok()) {
    std::fprintf(stderr, "Prefill failed\n");
    std::exit(1);
  }
  Turn turn;
  turn.ttft_ms = std::chrono::duration<double, std::milli>(done - start).count();
  turn.prepare_ms = std::chrono::duration<double, std::milli>(prepared_at - start).count();
  const flexvqa::SequenceReport report = engine.Report(*id);
  turn.vision_ms = report.vision_ms;
  turn.use = report.encoder_cache;
  engine.Release(*id);
  return turn;
}

std::unique_ptr<Engine> Load(const std::string& dir, int64_t cache_bytes) {
  flexvqa::EngineOptions options;
  options.model_dir = dir;
  options.max_sequences = 1;
  options.encoder_cache_bytes = cache_bytes;
  auto engine = flexvqa::CreateLlavaEngine(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s: %s\n", dir.c_str(), engine.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*engine);
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "full56,full336,flex";
  std::string image_path =
      std::string(FLEXVQA_SOURCE_DIR) + "/tests/fixtures/preprocess/photo_64x48.jpg";
  std::string work_dir = "/tmp/flexvqa_encoder_cache_bench";
  int reps = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--models") {
      models = value;
    } else if (flag == "--reps") {
      reps = std::max(1, std::atoi(value.c_str()));
    } else if (flag == "--image") {
      image_path = value;
    } else if (flag == "--work_dir") {
      work_dir = value;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::ifstream in(image_path, std::ios::binary);
  const std::string image(std::istreambuf_iterator<char>(in), {});
  if (image.empty()) {
    std::fprintf(stderr, "cannot read %s\n", image_path.c_str());
    return 1;
  }

  GenerationRequest first;
  first.turns.push_back({flexvqa::ChatTurn::Role::kUser, "What is in the picture?"});
  first.image = flexvqa::ImageInput{image, ""};
  first.sampling.max_new_tokens = 1;
  GenerationRequest second = first;
  second.turns.push_back({flexvqa::ChatTurn::Role::kAssistant, "A red ball on a green mat."});
  second.turns.push_back({flexvqa::ChatTurn::Role::kUser, "What colour is the ball?"});

  std::printf(
      "| model | image tokens | TTFT cache off (ms) | TTFT cache on (ms) | off / on | "
      "of which Prepare, on (ms) | vision_ms off |\n|---|---|---|---|---|---|---|\n");
  for (const std::string& model : Split(models)) {
    flexvqa::TinyLlavaOptions options;
    if (model == "full336" || model == "flex") {
      options = flexvqa::TinyFlexLlavaOptions();
      if (model == "full336") options.mode = "full";
    } else if (model != "full56") {
      std::fprintf(stderr, "unknown model %s (full56, full336, flex)\n", model.c_str());
      return 2;
    }
    const std::string dir = work_dir + "/" + model;
    const flexvqa::Status written = flexvqa::WriteTinyLlava(dir, options);
    if (!written.ok()) {
      std::fprintf(stderr, "%s\n", written.ToString().c_str());
      return 1;
    }
    std::unique_ptr<Engine> off = Load(dir, 0);
    std::unique_ptr<Engine> on = Load(dir, int64_t{64} << 20);
    FirstToken(*off, first);  // Warm-up of both; the cached engine keeps the image.
    FirstToken(*on, first);
    std::vector<double> ttft_off, ttft_on, prepare_on, vision_off;
    for (int r = 0; r < reps; ++r) {
      Turn a, b;
      if (r % 2 == 0) {
        a = FirstToken(*off, second);
        b = FirstToken(*on, second);
      } else {
        b = FirstToken(*on, second);
        a = FirstToken(*off, second);
      }
      if (b.use != flexvqa::EncoderCacheUse::kHit || a.use != flexvqa::EncoderCacheUse::kNone) {
        std::fprintf(stderr, "%s: expected a hit with the cache and none without\n", model.c_str());
        return 1;
      }
      ttft_off.push_back(a.ttft_ms);
      ttft_on.push_back(b.ttft_ms);
      prepare_on.push_back(b.prepare_ms);
      vision_off.push_back(a.vision_ms);
    }
    const double off_ms = Median(ttft_off), on_ms = Median(ttft_on);
    std::printf("| %s (%s) | %d | %.1f | %.1f | %.2f | %.1f | %.1f |\n", model.c_str(),
                on->Info().mode.c_str(), on->Info().num_image_tokens, off_ms, on_ms, off_ms / on_ms,
                Median(prepare_on), Median(vision_off));
    std::fflush(stdout);
  }
  return 0;
}
