// Continuous-batching admission policy: which queued requests join the batch at the next step. A
// pure function of the batch's state and the knobs (no threads, no engine), so that it is tested on
// its own. The scheduler's worker calls it once per step, after retiring finished and cancelled
// sequences.
#pragma once

#include <vector>

#include "server/scheduler_config.h"

namespace flexvqa {

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
