// PlanAdmissions: the admission policy as a pure function, no threads.
#include "server/batch_policy.h"

#include <gtest/gtest.h>

namespace flexvqa {
namespace {

SchedulerConfig Config(int max_running, int budget) {
  SchedulerConfig config;
  config.max_running = max_running;
  config.max_prefill_tokens_per_step = budget;
  return config;
}

TEST(PlanAdmissionsTest, EmptyQueueAdmitsNothing) {
  EXPECT_EQ(PlanAdmissions({0, 8, {}}, Config(8, 100)), 0);
}

TEST(PlanAdmissionsTest, FillsFreeRunningSlots) {
  EXPECT_EQ(PlanAdmissions({5, 8, {10, 10, 10, 10, 10}}, Config(8, 1000)), 3);
}

TEST(PlanAdmissionsTest, EngineSlotsBoundBelowMaxRunning) {
  EXPECT_EQ(PlanAdmissions({0, 2, {10, 10, 10, 10}}, Config(8, 1000)), 2);
}

TEST(PlanAdmissionsTest, FullBatchAdmitsNothing) {
  EXPECT_EQ(PlanAdmissions({8, 8, {10}}, Config(8, 1000)), 0);
  EXPECT_EQ(PlanAdmissions({3, 0, {10}}, Config(8, 1000)), 0);
}

TEST(PlanAdmissionsTest, PrefillBudgetLimitsOneStep) {
  // 40 + 40 fits in 100; the third would make 120.
  EXPECT_EQ(PlanAdmissions({0, 8, {40, 40, 40}}, Config(8, 100)), 2);
  // Exactly at the budget is allowed.
  EXPECT_EQ(PlanAdmissions({0, 8, {50, 50, 1}}, Config(8, 100)), 2);
}

TEST(PlanAdmissionsTest, OversizedPromptJoinsAStepAlone) {
  EXPECT_EQ(PlanAdmissions({3, 8, {500, 10}}, Config(8, 100)), 1);
}

TEST(PlanAdmissionsTest, FifoNoOvertaking) {
  // A small request behind one that does not fit this step waits for the next.
  EXPECT_EQ(PlanAdmissions({0, 8, {60, 60, 1}}, Config(8, 100)), 1);
}

}  // namespace
}  // namespace flexvqa
