// The scheduler's knobs (server/scheduler.h, server/batch_policy.h), each with its default. Filled
// once in main from flags (server/flags.cc) and passed by const reference; plain data, no logic.
#pragma once

#include <chrono>

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
  // When the worker goes idle after work, hand the heap pages freed meanwhile back to the kernel
  // (server/heap.h), so that resident memory returns to its idle level between bursts. Default:
  // true.
  bool release_heap_when_idle = true;
};

}  // namespace flexvqa
