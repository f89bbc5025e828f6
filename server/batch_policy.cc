#include "server/batch_policy.h"

#include <algorithm>

namespace flexvqa {

int PlanAdmissions(const BatchState& state, const SchedulerConfig& config) {
  const int capacity = std::min(config.max_running - state.running, state.free_slots);
  int admitted = 0;
  long long tokens = 0;
  for (int prompt_tokens : state.queued_prompt_tokens) {
    if (admitted >= capacity) break;
    if (admitted > 0 && tokens + prompt_tokens > config.max_prefill_tokens_per_step) break;
    tokens += prompt_tokens;
    ++admitted;
  }
  return admitted;
}

}  // namespace flexvqa
