// step_ops: the structure of the engine's prefill and decode step, counted with LibTorch's
// RecordFunction on tiny checkpoints it writes itself (tools/tiny), through the public Engine API.
//   step_ops [--modes full,flex,hd,composite,xattn,pooled] [--batch 1,8,32,64] [--steps 4]
//            [--image FILE] [--work_dir DIR] [--ops MODE:BATCH] [--trace MODE:BATCH]
// Per mode and batch it prints: leaf ops per prefill and per decode step at the shallow depth,
// leaf ops per layer per decode step ((deep - shallow) / layer difference; flex: N_SA = 2 at depths
// 4 and 6, so per FlexAttention layer; xattn: cross attention every 2nd layer, so the average of
// one plain and one cross-attention layer), host syncs per decode step, and "static": whether the
// first and last measured decode step (different context lengths, same batch) dispatch the same
// leaf ops with the same input shapes and integer arguments. --ops prints the decode step's leaf
// op histogram for one mode and batch; --trace its leaf ops in order, each after the outermost op
// that dispatched it.
//
// A leaf op is an ATen op (RecordScope::FUNCTION) that dispatches no other counted op on its
// thread (tracked with a per-thread stack): on CUDA, one kernel launch. An op that dispatches only
// excluded ops still counts (mm dispatches resolve_conj; clone dispatches empty_like, then copy_,
// which is the leaf). Only the thread that calls the engine is counted; ops recorded on other
// threads are flagged in the output (intra-op pools run kernels, not dispatched ops: expected
// none). Excluded, because they launch nothing: views and metadata (view, reshape, _reshape_alias,
// as_strided, slice, select, narrow, transpose, t, permute, expand, unsqueeze, squeeze, alias,
// detach, _unsafe_view, unfold, diagonal, split, unbind, view_as, expand_as, lift_fresh,
// resolve_conj, resolve_neg, result_type), allocation (empty, empty_strided, empty_like, resize_:
// the caching allocator launches nothing), conversions that return self (to, _to_copy, contiguous,
// type_as: a real conversion dispatches copy_, which is counted), and item/_local_scalar_dense (a
// scalar memcpy, counted as a host sync instead).
//
// Host syncs per decode step: _local_scalar_dense (item), nonzero, and every to / _to_copy that
// the engine itself calls (not one nested in another op, e.g. softmax's dtype conversion, which
// stays on the device) whose explicit target is the CPU and whose source storage a kernel of the
// same step wrote. On this CPU-only machine such a `to` returns self, but it is where the engine
// copies device results to the host and reads them (today SampleAndEmit's token ids, or the
// logits when not greedy, and flex's head-summed attention row per selecting layer per sequence);
// the "written by a kernel" test tells it from an upload of host data, whose target is also the
// CPU here. A host read without a `to` (data_ptr of a device tensor) cannot be seen; the engine
// has none today.
//
// decode_raw: every op with no child at all, views and no-op conversions included, for comparison
// with counts made that way. The counting itself is bench/step_counter.{h,cc}, shared with the CI
// test tests/bench/step_structure_test.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/step_counter.h"
#include "model/engine.h"
#include "tools/tiny/tiny_llava.h"

namespace {

using flexvqa::MeasuredSteps;
using flexvqa::StepCounts;

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string modes = "full,flex,hd,composite,xattn,pooled", batches = "1,8,32,64";
  std::string image_path = FLEXVQA_SOURCE_DIR "/client/examples/shapes.jpg";
  std::string work_dir = "/tmp/step_ops", ops_for, trace_for;
  int steps = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], v = argv[i + 1];
    if (flag == "--modes")
      modes = v;
    else if (flag == "--batch")
      batches = v;
    else if (flag == "--steps")
      steps = std::max(2, std::atoi(v.c_str()));
    else if (flag == "--image")
      image_path = v;
    else if (flag == "--work_dir")
      work_dir = v;
    else if (flag == "--ops")
      ops_for = v;
    else if (flag == "--trace")
      trace_for = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::vector<int> batch_sizes;
  for (const std::string& b : Split(batches)) batch_sizes.push_back(std::atoi(b.c_str()));
  const int max_batch = *std::max_element(batch_sizes.begin(), batch_sizes.end());

  flexvqa::GenerationRequest request;
  request.turns.push_back({flexvqa::ChatTurn::Role::kUser, "Describe this picture in detail."});
  std::ifstream in(image_path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "step_ops: cannot read %s\n", image_path.c_str());
    return 1;
  }
  request.image = flexvqa::ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
  request.sampling.max_new_tokens = steps + 2;  // Prefill's token, one warm step, `steps` counted.
  request.sampling.ignore_eos = true;           // Greedy (temperature 0) and never finished early.

  flexvqa::InstallStepCounter();

  std::printf("%-9s %5s %6s %11s %10s %10s %13s %11s %6s %7s\n", "mode", "batch", "prompt",
              "prefill_ops", "decode_ops", "decode_raw", "ops/layer/step", "syncs/step", "static",
              "layers");
  for (const std::string& mode : Split(modes)) {
    flexvqa::TinyLlavaOptions base =
        mode == "flex" ? flexvqa::TinyFlexLlavaOptions() : flexvqa::TinyLlavaOptions();
    base.mode = mode;
    const int shallow = mode == "flex" ? 4 : 2, deep = shallow + 2;
    std::map<int, std::vector<MeasuredSteps>> by_depth;  // depth -> per batch size
    int prompt_tokens = 0;
    for (int depth : {shallow, deep}) {
      flexvqa::TinyLlavaOptions o = base;
      o.num_layers = depth;
      const std::string dir = work_dir + "/" + mode + "_L" + std::to_string(depth);
      if (flexvqa::Status s = flexvqa::WriteTinyLlava(dir, o); !s.ok()) {
        std::fprintf(stderr, "step_ops: %s\n", s.ToString().c_str());
        return 1;
      }
      flexvqa::EngineOptions options;
      options.model_dir = dir;
      options.max_sequences = max_batch;
      auto engine = flexvqa::CreateLlavaEngine(options);
      if (!engine.ok()) {
        std::fprintf(stderr, "step_ops: %s\n", engine.status().ToString().c_str());
        return 1;
      }
      auto prepared = (*engine)->Prepare(request);
      if (!prepared.ok()) {
        std::fprintf(stderr, "step_ops: %s\n", prepared.status().ToString().c_str());
        return 1;
      }
      prompt_tokens = (*prepared)->prompt_tokens;
      for (int batch : batch_sizes) {
        MeasuredSteps m;
        if (!flexvqa::MeasureSteps(**engine, *prepared, batch, steps, &m)) return 1;
        by_depth[depth].push_back(std::move(m));
      }
    }
    for (size_t i = 0; i < batch_sizes.size(); ++i) {
      const MeasuredSteps& a = by_depth[shallow][i];
      const MeasuredSteps& b = by_depth[deep][i];
      const double ops = flexvqa::MeanDecode(a, &StepCounts::leaf_ops);
      const double per_layer =
          (flexvqa::MeanDecode(b, &StepCounts::leaf_ops) - ops) / (deep - shallow);
      const bool is_static = flexvqa::DecodeIsStatic(a) && flexvqa::DecodeIsStatic(b);
      int64_t other = a.prefill.other_threads;
      for (const StepCounts& c : a.decode) other += c.other_threads;
      std::printf("%-9s %5d %6d %11lld %10.0f %10.0f %13.1f %11.1f %6s %3d/%d%s\n", mode.c_str(),
                  batch_sizes[i], prompt_tokens, static_cast<long long>(a.prefill.leaf_ops), ops,
                  flexvqa::MeanDecode(a, &StepCounts::raw_leaf_ops), per_layer,
                  flexvqa::MeanDecode(a, &StepCounts::syncs), is_static ? "yes" : "no", shallow,
                  deep, other ? "  (ops on other threads!)" : "");
      if (ops_for == mode + ":" + std::to_string(batch_sizes[i])) {
        std::vector<std::pair<int64_t, std::string>> hist;
        for (const auto& [name, n] : a.decode.back().by_name) hist.push_back({n, name});
        std::sort(hist.rbegin(), hist.rend());
        for (const auto& [n, name] : hist)
          std::printf("    %6lld %s\n", (long long)n, name.c_str());
      }
      if (trace_for == mode + ":" + std::to_string(batch_sizes[i])) {
        for (const std::string& line : a.decode.back().trace) std::printf("    %s\n", line.c_str());
      }
    }
    std::fflush(stdout);
  }
  return 0;
}
