#include "server/client_limiter.h"

namespace flexvqa {

StatusOr<std::unique_ptr<ClientLimiter::Slot>> ClientLimiter::Acquire(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  int& count = in_flight_[client];
  if (count >= max_) {
    return ResourceExhaustedError("this client already has " + std::to_string(max_) +
                                  " calls in flight (max_calls_per_client); retry later");
  }
  ++count;
  return std::make_unique<Slot>(this, client);
}

int ClientLimiter::InFlight(const std::string& client) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = in_flight_.find(client);
  return it == in_flight_.end() ? 0 : it->second;
}

void ClientLimiter::Release(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = in_flight_.find(client);
  if (it != in_flight_.end() && --it->second == 0) in_flight_.erase(it);
}

}  // namespace flexvqa
