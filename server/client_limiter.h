// Calls in flight per client identity (server/auth.h's ClientIdentity), so that one caller cannot
// take every queue slot: Acquire counts a call in, the returned Slot counts it out when destroyed.
// Thread-safe; gRPC handler threads call it. The map holds only clients with calls in flight.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "model/status.h"

namespace flexvqa {

class ClientLimiter {
 public:
  class Slot;
  // `max_calls_per_client` > 0.
  explicit ClientLimiter(int max_calls_per_client) : max_(max_calls_per_client) {}

  // RESOURCE_EXHAUSTED when `client` already has max_calls_per_client calls in flight. The
  // limiter must outlive every Slot.
  StatusOr<std::unique_ptr<Slot>> Acquire(const std::string& client);
  int InFlight(const std::string& client) const;

 private:
  void Release(const std::string& client);

  const int max_;
  mutable std::mutex mu_;
  std::map<std::string, int> in_flight_;  // Guarded by mu_; no zero entries.
};

class ClientLimiter::Slot {
 public:
  Slot(ClientLimiter* limiter, std::string client)
      : limiter_(limiter), client_(std::move(client)) {}
  ~Slot() { limiter_->Release(client_); }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;

 private:
  ClientLimiter* const limiter_;
  const std::string client_;
};

}  // namespace flexvqa
