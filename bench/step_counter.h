// Counts what a window of engine calls dispatches on the calling thread, with LibTorch's
// RecordFunction: kernel-launching leaf ATen ops, host syncs, and the op-by-op signature that
// decides whether two steps are the same (the condition for CUDA graph replay). Shared by
// bench/step_ops (the figures) and tests/bench/step_structure_test (the CI guard). What counts
// and what is excluded, and why, is in bench/step_ops.cc's header. Install once per process
// (InstallStepCounter); Count is not reentrant. Not thread-safe: one counting thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/engine.h"

namespace flexvqa {

// What one window dispatched on the counting thread.
struct StepCounts {
  int64_t leaf_ops = 0;                // Kernel-launching leaves.
  int64_t raw_leaf_ops = 0;            // Every op that dispatches no other op, exclusions included.
  int64_t syncs = 0;                   // Host syncs (bench/step_ops.cc's header).
  int64_t other_threads = 0;           // Ops recorded on any other thread.
  std::vector<std::string> signature;  // Name + input shapes + integer args per leaf.
  std::map<std::string, int64_t> by_name;  // Leaf ops by name.
  // Per leaf, in order: the outermost op that dispatched it, then its signature (step_ops --trace).
  std::vector<std::string> trace;
};

// Registers the global RecordFunction callback (idempotent).
void InstallStepCounter();

// Counts what `call` dispatches on this thread.
StepCounts CountStep(const std::function<void()>& call);

// One batch through an engine: `batch` copies of `request` admitted, one counted prefill, one
// uncounted decode step, then `steps` counted decode steps; released at the end. False (with the
// reason on stderr) when an engine call fails.
struct MeasuredSteps {
  StepCounts prefill;
  std::vector<StepCounts> decode;
};
bool MeasureSteps(Engine& engine, const std::shared_ptr<const PreparedRequest>& request, int batch,
                  int steps, MeasuredSteps* out);

// Whether the first and last counted decode steps dispatched the same ops with the same shapes.
bool DecodeIsStatic(const MeasuredSteps& m);
// The mean of `field` over the counted decode steps.
double MeanDecode(const MeasuredSteps& m, int64_t StepCounts::*field);

}  // namespace flexvqa
