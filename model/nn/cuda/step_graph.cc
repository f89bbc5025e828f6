#include "model/nn/cuda/step_graph.h"

#include <torch/version.h>

// Graphs need the CUDA LibTorch 2.x (the GPU machine's wheel); 1.13 CPU builds compile them out.
#if defined(FLEXVQA_CUDA) && TORCH_VERSION_MAJOR >= 2
#define FLEXVQA_STEP_GRAPHS 1
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace flexvqa {

struct StepGraphs::Bucket {
  int eager_runs = 0;
  bool failed = false;  // Capture failed once: eager for good.
  std::vector<at::Tensor> outputs;
#ifdef FLEXVQA_STEP_GRAPHS
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif
};

namespace {

#ifdef FLEXVQA_STEP_GRAPHS
using MempoolId = decltype(std::declval<at::cuda::CUDAGraph&>().pool());

// Runs `fn` on a side stream ordered after and before the current stream's work: capture must not
// run on the default stream, and warm-up runs where the capture will.
template <typename F>
auto OnSideStream(const at::Device& device, F fn) {
  const c10::DeviceIndex index = device.has_index() ? device.index() : -1;
  c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(index);
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
  at::cuda::CUDAEvent ready;
  ready.record(current);
  ready.block(side);
  auto join = [&] {
    at::cuda::CUDAEvent done;
    done.record(side);
    done.block(current);
  };
  try {
    c10::cuda::CUDAStreamGuard guard(side);
    auto result = fn(side);
    join();
    return result;
  } catch (...) {
    join();
    throw;
  }
}

// Ends a capture that an exception left open (the stream is unusable otherwise) and clears the
// error it left.
void AbandonCapture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
      status != cudaStreamCaptureStatusNone) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);
    if (partial != nullptr) cudaGraphDestroy(partial);
  }
  cudaGetLastError();
}
#endif

}  // namespace

StepGraphs::StepGraphs(at::Device device, Options options) : device_(device), options_(options) {}

StepGraphs::~StepGraphs() = default;

bool StepGraphs::Supported() const {
#ifdef FLEXVQA_STEP_GRAPHS
  return options_.enabled && device_.is_cuda();
#else
  return false;
#endif
}

std::vector<at::Tensor> StepGraphs::Run(int bucket,
                                        const std::function<std::vector<at::Tensor>()>& body,
                                        How* how) {
  std::unique_ptr<Bucket>& slot = buckets_[bucket];
  if (!slot) slot = std::make_unique<Bucket>();
  Bucket& b = *slot;
  if (how != nullptr) *how = How::kEager;
  if (!Supported() || b.failed) return body();
#ifdef FLEXVQA_STEP_GRAPHS
  if (b.graph) {
    b.graph->replay();
    if (how != nullptr) *how = How::kReplayed;
    return b.outputs;
  }
  if (b.eager_runs < options_.warmup_runs) {
    ++b.eager_runs;
    return OnSideStream(device_, [&](c10::cuda::CUDAStream&) { return body(); });
  }
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  try {
    b.outputs = OnSideStream(device_, [&](c10::cuda::CUDAStream& side) {
      try {
        graph->capture_begin(MempoolId{pool_.first, pool_.second});
        std::vector<at::Tensor> outputs = body();
        graph->capture_end();
        return outputs;
      } catch (...) {
        try {
          graph->capture_end();  // Releases the allocator's pool routing when it can.
        } catch (...) {
        }
        AbandonCapture(side.stream());
        throw;
      }
    });
  } catch (const std::exception& e) {
    b.failed = true;
    b.outputs.clear();
    last_error_ = std::string("capture of bucket ") + std::to_string(bucket) + ": " + e.what();
    return body();  // Eager from now on.
  }
  // Later buckets allocate from this one's pool: one step runs at a time, and outputs are read
  // before the next Run.
  if (pool_.first == 0 && pool_.second == 0) pool_ = {graph->pool().first, graph->pool().second};
  b.graph = std::move(graph);
  b.graph->replay();  // Capture recorded the work without running it.
  if (how != nullptr) *how = How::kCaptured;
  return b.outputs;
#else
  return body();
#endif
}

void StepGraphs::Reset() { buckets_.clear(); }

int StepGraphs::captured_buckets() const {
  int n = 0;
#ifdef FLEXVQA_STEP_GRAPHS
  for (const auto& [key, b] : buckets_) n += b->graph != nullptr;
#endif
  return n;
}

const char* HowName(StepGraphs::How how) {
  switch (how) {
    case StepGraphs::How::kEager:
      return "eager";
    case StepGraphs::How::kCaptured:
      return "captured";
    case StepGraphs::How::kReplayed:
      return "replayed";
  }
  return "?";
}

}  // namespace flexvqa
