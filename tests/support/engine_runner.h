// Test support: runs requests through an Engine the way the scheduler does, without threads: all
// are prepared and admitted, prefilled in one call, then decoded in lockstep until each finishes.
// Records each request's tokens, text, finish reason and status, and its report and selections at
// the moment it finished; checks that Release forgets the sequence.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/engine.h"

namespace flexvqa::testing {

struct EngineRun {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  Status status;
  SequenceReport report;
  SelectionTrace trace;
};

inline std::unique_ptr<Engine> MakeEngine(const std::string& model_dir, int max_sequences = 8,
                                          const std::string& chat_template = "") {
  EngineOptions options;
  options.model_dir = model_dir;
  options.max_sequences = max_sequences;
  options.chat_template = chat_template;
  auto engine = CreateLlavaEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return engine.ok() ? std::move(*engine) : nullptr;
}

inline std::vector<EngineRun> RunInLockstep(Engine& engine,
                                            const std::vector<GenerationRequest>& requests) {
  std::vector<EngineRun> out(requests.size());
  std::map<SequenceId, size_t> index;
  std::vector<SequenceId> running;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto prepared = engine.Prepare(requests[i]);
    EXPECT_TRUE(prepared.ok()) << prepared.status().ToString();
    if (!prepared.ok()) return out;
    auto id = engine.Admit(*prepared);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    if (!id.ok()) return out;
    index[*id] = i;
    running.push_back(*id);
  }
  std::vector<TokenEvent> events;
  engine.Prefill(running, &events);
  while (!running.empty()) {
    for (const TokenEvent& e : events) {
      EngineRun& run = out[index.at(e.sequence)];
      if (e.token_id >= 0) run.tokens.push_back(e.token_id);
      run.text += e.text;
      if (e.finished) {
        run.reason = e.reason;
        run.status = e.status;
        run.report = engine.Report(e.sequence);
        run.trace = engine.Selections(e.sequence);
        engine.Release(e.sequence);
        EXPECT_EQ(engine.Selections(e.sequence).num_steps, 0) << "Release must drop the selections";
        running.erase(std::find(running.begin(), running.end(), e.sequence));
      }
    }
    events.clear();
    engine.Decode(running, &events);
  }
  return out;
}

}  // namespace flexvqa::testing
