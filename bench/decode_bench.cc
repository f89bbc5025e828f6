// decode_bench: time to first token and decode ms/step of the engine at given batch sizes, through
// the same Engine calls the server makes (Prepare, Admit, Prefill, Decode, Release).
//   decode_bench --model DIR [--device cpu|cuda] [--dtype auto|...] [--batch 1,8] [--steps 32]
//                [--warmup 3] [--repeats 3] [--image FILE] [--question TEXT]
//                [--prompt-tokens N] [--max-context N] [--threshold T] [--label NAME] [--json]
// Each repeat admits `batch` copies of one request, prefills them in one call (TTFT: the whole
// batch's prefill, vision tower included), then runs --warmup untimed and --steps timed decode
// steps. One untimed repeat runs first at every batch size (allocator, kernel selection). Token
// ids reach the host at the end of every Prefill/Decode call, so the host clock around a call
// covers the device's work (a device sync per call). Figures: medians over --repeats of the TTFT
// and of each repeat's median and p90 step. --steps 0 measures TTFT only.
// --prompt-tokens pads the question with filler words until the prompt (image tokens included)
// is exactly N tokens, as the peers' fixed-length prompts. --json adds one `RESULT {json}` line per
// batch size (scripts/gpu/check.sh collects them).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "model/engine.h"

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

// The request with the question padded by filler words until Prepare counts exactly `target`
// prompt tokens (the count grows by at least one per word; a word may cost several tokens, so the
// last step tries the shorter fillers).
flexvqa::StatusOr<std::shared_ptr<const flexvqa::PreparedRequest>> PrepareWithLength(
    const flexvqa::Engine& engine, flexvqa::GenerationRequest request, int target) {
  const std::string question = request.turns.back().text;
  auto prepared = engine.Prepare(request);
  if (!prepared.ok() || target <= 0) return prepared;
  const char* fillers[] = {" and", " a", " b"};
  std::string text = question;
  while ((*prepared)->prompt_tokens < target) {
    bool grew = false;
    for (const char* word : fillers) {
      request.turns.back().text = text + word;
      auto next = engine.Prepare(request);
      if (!next.ok()) return next;
      if ((*next)->prompt_tokens <= target) {
        text += word;
        prepared = next;
        grew = true;
        break;
      }
    }
    if (!grew) break;
  }
  if ((*prepared)->prompt_tokens != target) {
    return flexvqa::InvalidArgumentError("cannot pad the prompt to exactly " +
                                         std::to_string(target) + " tokens (reached " +
                                         std::to_string((*prepared)->prompt_tokens) + ")");
  }
  return prepared;
}

struct Timing {
  double ttft_ms = 0, step_p50_ms = 0, step_p90_ms = 0;
};

// One repeat at `batch`: admit, prefill (timed), warm-up and timed decode steps, release.
flexvqa::StatusOr<Timing> RunOnce(flexvqa::Engine& engine,
                                  const std::shared_ptr<const flexvqa::PreparedRequest>& prepared,
                                  int batch, int warmup, int steps) {
  std::vector<flexvqa::SequenceId> ids;
  flexvqa::Status status;
  for (int b = 0; b < batch && status.ok(); ++b) {
    auto id = engine.Admit(prepared);
    if (id.ok()) ids.push_back(*id);
    status = id.status();
  }
  std::vector<flexvqa::TokenEvent> events;
  std::vector<double> step_ms;
  Timing t;
  if (status.ok()) {
    const auto t0 = Clock::now();
    engine.Prefill(ids, &events);
    t.ttft_ms = Ms(t0, Clock::now());
  }
  for (int s = 0; status.ok() && s < warmup + steps; ++s) {
    for (const auto& e : events) {
      if (!e.status.ok()) status = e.status;
    }
    events.clear();
    const auto a = Clock::now();
    if (status.ok()) engine.Decode(ids, &events);
    if (s >= warmup) step_ms.push_back(Ms(a, Clock::now()));
  }
  for (const auto& e : events) {
    if (!e.status.ok()) status = e.status;
  }
  for (auto id : ids) engine.Release(id);
  if (!status.ok()) return status;
  if (!step_ms.empty()) {
    t.step_p50_ms = Percentile(step_ms, 0.5);
    t.step_p90_ms = Percentile(step_ms, 0.9);
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  flexvqa::EngineOptions options;
  std::string batches = "1,8", image_path, question = "Describe this picture in detail.", label;
  int steps = 32, warmup = 3, repeats = 3, prompt_tokens = 0, threshold = -1;
  bool json_out = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--json") {
      json_out = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "decode_bench: %s needs a value\n", flag.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (flag == "--model")
      options.model_dir = v;
    else if (flag == "--device")
      options.device = v;
    else if (flag == "--dtype")
      options.dtype = v;
    else if (flag == "--batch")
      batches = v;
    else if (flag == "--steps")
      steps = std::atoi(v.c_str());
    else if (flag == "--warmup")
      warmup = std::atoi(v.c_str());
    else if (flag == "--repeats")
      repeats = std::max(1, std::atoi(v.c_str()));
    else if (flag == "--image")
      image_path = v;
    else if (flag == "--question")
      question = v;
    else if (flag == "--prompt-tokens")
      prompt_tokens = std::atoi(v.c_str());
    else if (flag == "--max-context")
      options.max_context = std::atoi(v.c_str());
    else if (flag == "--threshold")
      threshold = std::atoi(v.c_str());
    else if (flag == "--label")
      label = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  const std::vector<int> batch_sizes = ParseList(batches);
  options.max_sequences = *std::max_element(batch_sizes.begin(), batch_sizes.end());
  auto engine = flexvqa::CreateLlavaEngine(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  flexvqa::GenerationRequest request;
  request.turns.push_back({flexvqa::ChatTurn::Role::kUser, question});
  if (!image_path.empty()) {
    std::ifstream in(image_path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "decode_bench: cannot open %s\n", image_path.c_str());
      return 1;
    }
    request.image = flexvqa::ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
  }
  request.sampling.max_new_tokens = steps + warmup + 1;
  request.sampling.ignore_eos = true;
  if (threshold >= 0) request.selection_threshold = threshold;
  auto prepared = PrepareWithLength(**engine, request, prompt_tokens);
  if (!prepared.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", prepared.status().ToString().c_str());
    return 1;
  }
  const flexvqa::ModelInfo& info = (*engine)->Info();
  std::printf("model %s  mode %s  device %s  dtype %s  prompt %d tokens (%d image)\n",
              info.name.c_str(), info.mode.c_str(), info.device.c_str(), info.dtype.c_str(),
              (*prepared)->prompt_tokens, (*prepared)->image_tokens);
  std::printf("%6s %10s %12s %12s %10s\n", "batch", "ttft_ms", "step_p50_ms", "step_p90_ms",
              "tok/s");
  std::fflush(stdout);
  for (int batch : batch_sizes) {
    std::vector<double> ttfts, p50s, p90s;
    for (int r = -1; r < repeats; ++r) {  // r = -1: the untimed first run.
      auto t = RunOnce(**engine, *prepared, batch, warmup, steps);
      if (!t.ok()) {
        std::fprintf(stderr, "decode_bench: batch %d: %s\n", batch, t.status().ToString().c_str());
        return 1;
      }
      if (r < 0) continue;
      ttfts.push_back(t->ttft_ms);
      p50s.push_back(t->step_p50_ms);
      p90s.push_back(t->step_p90_ms);
    }
    const double ttft = Percentile(ttfts, 0.5), p50 = Percentile(p50s, 0.5),
                 p90 = Percentile(p90s, 0.5);
    const double tokens_per_s = p50 > 0 ? batch * 1000.0 / p50 : 0;
    std::printf("%6d %10.2f %12.3f %12.3f %10.1f\n", batch, ttft, p50, p90, tokens_per_s);
    if (json_out) {
      // --steps 0 (TTFT only): no decode figures rather than zeros.
      const auto decode = [&](double v) {
        return steps > 0 ? nlohmann::json(v) : nlohmann::json();
      };
      const nlohmann::json j = {{"check", "decode_bench"},
                                {"label", label},
                                {"mode", info.mode},
                                {"device", info.device},
                                {"dtype", info.dtype},
                                {"batch", batch},
                                {"prompt_tokens", (*prepared)->prompt_tokens},
                                {"image_tokens", (*prepared)->image_tokens},
                                {"steps", steps},
                                {"repeats", repeats},
                                {"ttft_ms", ttft},
                                {"decode_ms_per_step", decode(p50)},
                                {"decode_p90_ms", decode(p90)},
                                {"tokens_per_s", decode(tokens_per_s)}};
      std::printf("RESULT %s\n", j.dump().c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}
