// StepGraphs: a step body captured once per batch bucket as a CUDA graph (at::cuda::CUDAGraph, on
// a side stream, after eager warm-up runs) and replayed after that (../shared/gpu-step.md item 5).
// Where graphs are unavailable (a CPU device, a build without FLEXVQA_CUDA, LibTorch 1.13) or a
// capture fails, Run runs the body eagerly every time. Worker thread only; owns the graphs and
// their shared memory pool, not the tensors the body reads.
//
// The body must be replayable: it reads only static buffers (the same device addresses every
// call, refilled before Run: ids, positions, lengths, slot indices, uniform numbers), never syncs
// with the host, and makes no decision on the host from data; it returns its outputs (e.g. the
// [B] token ids), which on replay are the same tensors, refreshed. Outputs are valid until the
// next Run of any bucket (the buckets' graphs share one memory pool).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace flexvqa {

class StepGraphs {
 public:
  enum class How { kEager, kCaptured, kReplayed };
  struct Options {
    bool enabled = true;  // false: always eager (a flag for comparisons). Default: true.
    int warmup_runs = 2;  // Eager runs of a bucket before its capture (allocator, cuBLAS
                          // handles and workspaces settle outside the graph). Default: 2.
  };

  StepGraphs(at::Device device, Options options);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // True when this build and device can capture graphs at all.
  bool Supported() const;

  // Runs `body` for batch bucket `bucket` (any key: the caller's bucket size): eagerly during
  // warm-up, then captures it once (the capture call also replays it, so its outputs hold values)
  // and replays it on later calls. A failed capture makes that bucket eager for good; the reason
  // is in last_error(). Exceptions from an eager body propagate (c10::Error).
  std::vector<at::Tensor> Run(int bucket, const std::function<std::vector<at::Tensor>()>& body,
                              How* how = nullptr);

  // Drops every graph (e.g. after the static buffers are reallocated): buckets warm up again.
  void Reset();

  int captured_buckets() const;
  const std::string& last_error() const { return last_error_; }

 private:
  struct Bucket;
  at::Device device_;
  Options options_;
  std::map<int, std::unique_ptr<Bucket>> buckets_;
  std::string last_error_;
  // The memory pool of the first capture, shared by the later ones (at::cuda::MempoolId_t's
  // value; {0, 0}: none yet).
  std::pair<unsigned long long, unsigned long long> pool_{0, 0};
};

const char* HowName(StepGraphs::How how);

}  // namespace flexvqa
