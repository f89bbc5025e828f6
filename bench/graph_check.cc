// graph_check: the CUDA-graph and varlen-attention pieces of the batch-flat step on the device
// they are for (scripts/gpu/check.sh, stage graphs), one RESULT {json} line per bucket and check.
//   graph_check [--device cuda] [--buckets 1,2,4,8,16,32,64] [--vocab 32000] [--steps 20]
// sampler: BatchSampler::Sample captured per bucket by StepGraphs and replayed, against an eager
//   twin fed the same logits and slots: the same ids at every step ("match"), and the median
//   step time (Stage + Sample + the ids' copy to the host) eager and replayed.
// varlen: VarlenAttentionCuda over a bf16 [64, 1024, 32, 128] pool with random lengths, against
//   per-sequence fp32 SDPA (max abs diff), and its time eager and replayed.
// On a CPU (dry run) graphs are unsupported and varlen is not built: the sampler runs eagerly.
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/engine.h"
#include "model/nn/batch_sampler.h"
#include "model/nn/cuda/step_graph.h"
#include "model/nn/cuda/varlen_attention.h"

namespace {

using flexvqa::BatchSampler;
using flexvqa::StepGraphs;

void Sync(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Median milliseconds of `n` calls of `fn`, each followed by a device sync.
double MedianMs(int n, const at::Device& device, const std::function<void()>& fn) {
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    Sync(device);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

flexvqa::SamplingParams Mixed(int slot) {
  flexvqa::SamplingParams p;
  p.seed = 1000 + slot;
  switch (slot % 4) {
    case 1:
      p.temperature = 0.7f;
      break;
    case 2:
      p.temperature = 1.0f, p.top_k = 40, p.top_p = 0.9f;
      break;
    case 3:
      p.temperature = 1.0f, p.repetition_penalty = 1.2f, p.top_p = 0.95f;
      break;
  }
  return p;
}

void CheckSampler(const at::Device& device, int bucket, int vocab, int steps, int slots) {
  BatchSampler eager(slots, vocab, slots, device), graphed(slots, vocab, slots, device);
  std::vector<int> rows;
  for (int s = 0; s < bucket; ++s) {
    const std::vector<int32_t> prompt = {1, 2, 3, s};
    if (!eager.Admit(s, Mixed(s), prompt).ok() || !graphed.Admit(s, Mixed(s), prompt).ok()) return;
    rows.push_back(s);
  }
  StepGraphs graphs(device, StepGraphs::Options{});
  const at::Tensor logits = at::empty({bucket, vocab}, at::TensorOptions().device(device));
  bool match = true, captured = false;
  auto step = [&](BatchSampler& sampler, bool graph) {
    (void)sampler.Stage(rows);
    if (!graph) return sampler.Sample(logits).to(at::kCPU);
    StepGraphs::How how;
    const at::Tensor ids = graphs.Run(
        bucket, [&] { return std::vector<at::Tensor>{sampler.Sample(logits)}; }, &how)[0];
    captured = captured || how != StepGraphs::How::kEager;
    return ids.to(at::kCPU);
  };
  for (int s = 0; s < steps; ++s) {
    logits.normal_(0.0, 3.0);
    match = match && step(eager, false).equal(step(graphed, true));
  }
  const double eager_ms = MedianMs(steps, device, [&] { step(eager, false); });
  const double graph_ms = MedianMs(steps, device, [&] { step(graphed, true); });
  std::printf(
      "RESULT {\"check\":\"graph_sampler\",\"bucket\":%d,\"vocab\":%d,\"supported\":%s,"
      "\"captured\":%s,\"match\":%s,\"eager_ms\":%.4f,\"graph_ms\":%.4f,\"error\":\"%s\"}\n",
      bucket, vocab, graphs.Supported() ? "true" : "false", captured ? "true" : "false",
      match ? "true" : "false", eager_ms, graph_ms, graphs.last_error().substr(0, 200).c_str());
}

void CheckVarlen(const at::Device& device, int bucket, int steps, std::mt19937& gen) {
  const int64_t slots = 64, context = 1024, heads = 32, dim = 128;
  const auto bf16 = at::TensorOptions().device(device).dtype(at::kBFloat16);
  const at::Tensor k_pool = at::randn({slots, context, heads, dim}, bf16);
  const at::Tensor v_pool = at::randn({slots, context, heads, dim}, bf16);
  const at::Tensor q = at::randn({bucket, heads, dim}, bf16);
  std::vector<int> slot(slots);
  for (int i = 0; i < slots; ++i) slot[i] = i;
  std::shuffle(slot.begin(), slot.end(), gen);
  std::vector<int32_t> cu_q, start, used;
  for (int b = 0; b < bucket; ++b) {
    cu_q.push_back(b);
    start.push_back(static_cast<int32_t>(slot[b] * context));
    used.push_back(static_cast<int32_t>(1 + gen() % context));
  }
  cu_q.push_back(bucket);
  start.push_back(static_cast<int32_t>(slots * context));
  const auto i32 = at::TensorOptions().dtype(at::kInt);
  flexvqa::VarlenBatch batch;
  batch.cu_seqlens_q = at::tensor(cu_q, i32).to(device);
  batch.k_start = at::tensor(start, i32).to(device);
  batch.seqused_k = at::tensor(used, i32).to(device);
  batch.max_q = 1;
  batch.max_k = context;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  const at::Tensor out = flexvqa::VarlenAttentionCuda(q, k_pool, v_pool, batch, scale, false);
  double diff = 0;
  for (int b = 0; b < bucket; ++b) {  // [1, H, 1, D] against [1, H, len, D], fp32.
    const at::Tensor k = k_pool[slot[b]].narrow(0, 0, used[b]).transpose(0, 1).unsqueeze(0);
    const at::Tensor v = v_pool[slot[b]].narrow(0, 0, used[b]).transpose(0, 1).unsqueeze(0);
    const at::Tensor qb = q[b].unsqueeze(0).unsqueeze(2);
    const at::Tensor probs =
        at::softmax(at::matmul(qb.to(at::kFloat), k.to(at::kFloat).transpose(-1, -2)) * scale, -1);
    const at::Tensor ref = at::matmul(probs, v.to(at::kFloat)).squeeze(2).squeeze(0);  // [H, D]
    diff = std::max(diff, (out[b].to(at::kFloat) - ref).abs().max().item<double>());
  }
  StepGraphs graphs(device, StepGraphs::Options{});
  bool captured = false;
  auto run = [&](bool graph) {
    if (!graph) return flexvqa::VarlenAttentionCuda(q, k_pool, v_pool, batch, scale, false);
    StepGraphs::How how;
    const at::Tensor o = graphs.Run(
        bucket,
        [&] {
          return std::vector<at::Tensor>{
              flexvqa::VarlenAttentionCuda(q, k_pool, v_pool, batch, scale, false)};
        },
        &how)[0];
    captured = captured || how != StepGraphs::How::kEager;
    return o;
  };
  bool replay_equal = true;
  for (int i = 0; i < 4; ++i) replay_equal = replay_equal && run(true).equal(out);
  const double eager_ms = MedianMs(steps, device, [&] { run(false); });
  const double graph_ms = MedianMs(steps, device, [&] { run(true); });
  std::printf(
      "RESULT {\"check\":\"graph_varlen\",\"bucket\":%d,\"max_abs_diff\":%.3g,\"ok\":%s,"
      "\"captured\":%s,\"replay_equal\":%s,\"eager_ms\":%.4f,\"graph_ms\":%.4f,\"error\":\"%s\"}\n",
      bucket, diff, diff < 2e-2 ? "true" : "false", captured ? "true" : "false",
      replay_equal ? "true" : "false", eager_ms, graph_ms,
      graphs.last_error().substr(0, 200).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string device_name = "cpu", buckets = "1,2,4,8,16,32,64";
  int vocab = 32000, steps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--device") {
      device_name = value;
    } else if (flag == "--buckets") {
      buckets = value;
    } else if (flag == "--vocab") {
      vocab = std::atoi(value.c_str());
    } else if (flag == "--steps") {
      steps = std::max(3, std::atoi(value.c_str()));
    } else {
      std::fprintf(stderr, "graph_check: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  const at::Device device(device_name);
  std::vector<int> sizes;
  std::stringstream in(buckets);
  for (std::string item; std::getline(in, item, ',');) sizes.push_back(std::atoi(item.c_str()));
  const int slots = *std::max_element(sizes.begin(), sizes.end());
  std::mt19937 gen(7);
  try {
    for (int bucket : sizes) {
      CheckSampler(device, bucket, vocab, steps, slots);
      std::fflush(stdout);
    }
    if (!device.is_cuda() || !flexvqa::VarlenAttentionCudaBuilt()) {
      std::printf("SKIP varlen: needs a CUDA device and a FLEXVQA_CUDA build on LibTorch >= 2.5\n");
      return 0;
    }
    for (int bucket : sizes) {
      CheckVarlen(device, bucket, steps, gen);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "graph_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
