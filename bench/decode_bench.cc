// decode_bench: time to first token and decode ms/step of the engine at given batch sizes, through
// the same Engine calls the server makes (Prepare, Admit, Prefill, Decode, Release).
//   decode_bench --model DIR [--device cpu|cuda] [--dtype auto|...] [--batch 1,8] [--steps 32]
//                [--warmup 3] [--image FILE] [--question TEXT]
// Prints one line per batch size: prompt tokens, TTFT (prefill of the whole batch, ms), median and
// p90 decode step (ms), tokens/s. Each figure is a median over --repeats runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
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

}  // namespace

int main(int argc, char** argv) {
  flexvqa::EngineOptions options;
  std::string batches = "1,8", image_path, question = "Describe this picture in detail.";
  int steps = 32, warmup = 3, repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], v = argv[i + 1];
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
      repeats = std::atoi(v.c_str());
    else if (flag == "--image")
      image_path = v;
    else if (flag == "--question")
      question = v;
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
    request.image = flexvqa::ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
  }
  request.sampling.max_new_tokens = steps + warmup + 1;
  request.sampling.ignore_eos = true;
  auto prepared = (*engine)->Prepare(request);
  if (!prepared.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", prepared.status().ToString().c_str());
    return 1;
  }
  const flexvqa::ModelInfo& info = (*engine)->Info();
  std::printf("model %s  device %s  dtype %s  prompt %d tokens (%d image)\n", info.name.c_str(),
              info.device.c_str(), info.dtype.c_str(), (*prepared)->prompt_tokens,
              (*prepared)->image_tokens);
  std::printf("%6s %10s %12s %12s %10s\n", "batch", "ttft_ms", "step_p50_ms", "step_p90_ms",
              "tok/s");
  for (int batch : batch_sizes) {
    std::vector<double> ttfts, p50s, p90s;
    for (int r = 0; r < repeats; ++r) {
      std::vector<flexvqa::SequenceId> ids;
      for (int b = 0; b < batch; ++b) ids.push_back(*(*engine)->Admit(*prepared));
      std::vector<flexvqa::TokenEvent> events;
      // Token ids reach the host at the end of each call, so the clock sees the device's work.
      const auto t0 = Clock::now();
      (*engine)->Prefill(ids, &events);
      const auto t1 = Clock::now();
      std::vector<double> step_ms;
      for (int s = 0; s < warmup + steps; ++s) {
        events.clear();
        const auto a = Clock::now();
        (*engine)->Decode(ids, &events);
        const auto b = Clock::now();
        if (s >= warmup) step_ms.push_back(Ms(a, b));
        for (const auto& e : events) {
          if (!e.status.ok()) {
            std::fprintf(stderr, "decode_bench: %s\n", e.status.ToString().c_str());
            return 1;
          }
        }
      }
      for (auto id : ids) (*engine)->Release(id);
      ttfts.push_back(Ms(t0, t1));
      p50s.push_back(Percentile(step_ms, 0.5));
      p90s.push_back(Percentile(step_ms, 0.9));
    }
    const double p50 = Percentile(p50s, 0.5);
    std::printf("%6d %10.2f %12.3f %12.3f %10.1f\n", batch, Percentile(ttfts, 0.5), p50,
                Percentile(p90s, 0.5), batch * 1000.0 / p50);
  }
  return 0;
}
