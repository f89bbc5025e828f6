// Continuous-batching admission policy: which queued requests join the batch at the next step. A
// pure function of the batch's state and the knobs (no threads, no engine), so that it is tested on
// its own. The scheduler's worker calls it once per step, after retiring finished and cancelled
// sequences.
#pragma once

#include <chrono>
#include <vector>

namespace flexvqa {

struct SchedulerConfig {
  // Sequences decoded together. The engine's free KV slots bound it as well. Default: 8.
  int max_running = 8;
  // Prompt tokens prefilled in one step, summed over the requests that join it; bounds how long one
  // step stalls the running sequences' next token. A request whose prompt alone exceeds it joins a
  // step by itself. Default: 4096.
  int max_prefill_tokens_per_step = 4096;
  // Requests accepted beyond the running batch (preprocessing or waiting for a slot); past it
  // Submit returns RESOURCE_EXHAUSTED at once. Default: 64.
  int max_queued = 64;
  // Longest wait for a batch slot; past it the request fails with RESOURCE_EXHAUSTED. Default: 30
  // s.
  std::chrono::milliseconds max_queue_wait{30'000};
  // Threads for Engine::Prepare (validation, tokenisation, image decoding). Default: 4.
  int preprocess_threads = 4;
};

struct BatchState {
  int running = 0;                        // Sequences in the batch now.
  int free_slots = 0;                     // The engine's free KV-cache slots.
  std::vector<int> queued_prompt_tokens;  // Prepared requests waiting, oldest first.
};

// How many requests from the front of the queue to admit now (FIFO: a request never overtakes an
// older one, so a long prompt cannot starve). Admits while a running slot and a KV slot are free
// and the step's prefill budget holds; the first request of a step is admitted even over the
// budget.
int PlanAdmissions(const BatchState& state, const SchedulerConfig& config);

}  // namespace flexvqa
