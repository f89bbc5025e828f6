// The soak's load: a closed loop of `concurrency` calls of mixed kinds (normal Generate streams,
// Answer calls, cancels after some tokens or some milliseconds, short deadlines, bad inputs, slow
// readers), each checked when it ends against what its kind allows. Calls use gRPC's callback API;
// timed actions (a slow reader's next read, a timed cancel) run on one timer thread, each under a
// reactor hold so the call outlives them. Thread-safe; Report after StopAndWait.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flexvqa/v1/vqa.grpc.pb.h"

namespace flexvqa::soak {

// Tokens a stream asks for when it should still be running when it is cancelled or killed.
inline constexpr int kLongAnswerTokens = 48;

// What each kind allows, RESOURCE_EXHAUSTED (load shed) aside, which any may get.
enum class CallKind {
  kNormal,        // OK.
  kAnswer,        // Unary; OK.
  kCancelTokens,  // Cancelled after 1-3 deltas: CANCELLED (OK when it ended first).
  kCancelTimed,   // Cancelled after 0-100 ms: CANCELLED or OK.
  kDeadline,      // Deadline 1-200 ms: DEADLINE_EXCEEDED or OK.
  kBadInput,      // One of several malformed requests: INVALID_ARGUMENT.
  kSlowReader,    // Waits 20-100 ms before each read: OK.
  kNumKinds,
};
const char* CallKindName(CallKind kind);

struct LoadConfig {
  int concurrency = 8;
  uint64_t seed = 1;
  std::vector<std::string> images;  // Encoded JPEG/PNG; empty: text-only questions.
};

struct LoadReport {
  int started = 0;
  // Calls that ended DEADLINE_EXCEEDED or CANCELLED before any response: the server may never have
  // seen them (a 1 ms deadline, a cancel at 0 ms), so its count may be short by up to this many.
  int maybe_unseen = 0;
  std::vector<std::string> violations;
  std::string summary;  // Outcomes by kind and status code, one line per kind.
};

// Runs closures at given times on its own thread; Stop runs none of those still waiting.
class Timer {
 public:
  Timer();
  ~Timer();
  void At(std::chrono::steady_clock::time_point when, std::function<void()> action);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> actions_;
  bool stop_ = false;
  std::thread thread_;  // Last: starts after the members it uses.
};

class Load {
 public:
  Load(const std::string& address, LoadConfig config);
  ~Load();
  void Start();
  // No new calls; waits for those in flight. False if some are still in flight after `timeout`.
  bool StopAndWait(std::chrono::steady_clock::duration timeout);
  LoadReport Report() const;

  // Called by the calls (bench/soak/soak_load.cc).
  void Finished(const std::string& id, CallKind kind, const std::string& code,
                std::vector<std::string> violations, bool maybe_unseen = false);
  Timer& timer() { return timer_; }
  uint64_t Random(uint64_t bound);  // Uniform in [0, bound).

 private:
  void StartNext();

  const LoadConfig config_;
  std::unique_ptr<v1::VqaService::Stub> stub_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::mt19937_64 rng_;  // Guarded by mu_.
  bool stopping_ = false;
  int started_ = 0, in_flight_ = 0, maybe_unseen_ = 0;
  std::map<std::string, int> ended_;                          // Request id -> OnDone count.
  std::map<std::pair<CallKind, std::string>, int> outcomes_;  // (kind, code) -> calls.
  std::vector<std::string> violations_;
  Timer timer_;
};

}  // namespace flexvqa::soak
