// Calls in flight per client: up to the limit, then RESOURCE_EXHAUSTED for that client only, and
// slots come back when released.
#include "server/client_limiter.h"

#include <gtest/gtest.h>

#include <vector>

namespace flexvqa {
namespace {

TEST(ClientLimiterTest, EachClientGetsItsShareAndSlotsComeBack) {
  ClientLimiter limiter(2);
  std::vector<std::unique_ptr<ClientLimiter::Slot>> alice;
  for (int i = 0; i < 2; ++i) {
    auto slot = limiter.Acquire("alice");
    ASSERT_TRUE(slot.ok());
    alice.push_back(std::move(slot).value());
  }
  auto third = limiter.Acquire("alice");
  EXPECT_EQ(third.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(third.status().message().find("max_calls_per_client"), std::string::npos);
  EXPECT_EQ(limiter.InFlight("alice"), 2);
  auto bob = limiter.Acquire("bob");
  EXPECT_TRUE(bob.ok());
  alice.pop_back();
  EXPECT_EQ(limiter.InFlight("alice"), 1);
  EXPECT_TRUE(limiter.Acquire("alice").ok());  // Released again at once (a temporary).
  alice.clear();
  EXPECT_EQ(limiter.InFlight("alice"), 0);
}

}  // namespace
}  // namespace flexvqa
