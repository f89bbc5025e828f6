// SummarizeSelections: per FA layer and block, the steps that selected it; malformed traces give
// no summary rather than reading past their arrays.
#include "server/selection_summary.h"

#include <gtest/gtest.h>

namespace flexvqa {
namespace {

// 3 steps x 2 FA layers over a 3 x 3 grid; layer 1 selects block 4 at every step and block 0 at
// step 2 only, layer 0 selects nothing.
SelectionTrace Trace() {
  SelectionTrace trace;
  trace.first_fa_layer = 2;
  trace.num_fa_layers = 2;
  trace.grid = 3;
  trace.hr_side = 6;  // 2 x 2 tokens per block.
  trace.num_steps = 3;
  trace.masks.assign(3 * 2 * 9, 0);
  trace.selected_tokens.assign(3 * 2, 0);
  for (int step = 0; step < 3; ++step) {
    trace.masks[(step * 2 + 1) * 9 + 4] = 1;
    trace.selected_tokens[step * 2 + 1] = 4;
  }
  trace.masks[(2 * 2 + 1) * 9 + 0] = 1;
  trace.selected_tokens[2 * 2 + 1] = 8;
  trace.region_x = -5;
  trace.region_y = 0;
  trace.region_side = 30;
  return trace;
}

TEST(SelectionSummaryTest, CountsTheStepsThatSelectedEachBlock) {
  const SelectionSummary summary = SummarizeSelections(Trace());
  ASSERT_FALSE(summary.empty());
  EXPECT_EQ(summary.num_steps, 3);
  EXPECT_EQ(summary.first_fa_layer, 2);
  EXPECT_EQ(summary.region_x, -5);
  EXPECT_EQ(summary.region_side, 30);
  ASSERT_EQ(summary.block_steps.size(), 18u);
  std::vector<uint32_t> expected(18, 0);
  expected[9 + 4] = 3;
  expected[9 + 0] = 1;
  EXPECT_EQ(summary.block_steps, expected);
  EXPECT_EQ(summary.selected_tokens, (std::vector<int64_t>{0, 16}));
}

TEST(SelectionSummaryTest, EmptyOrMalformedTracesGiveNoSummary) {
  EXPECT_TRUE(SummarizeSelections(SelectionTrace()).empty());
  SelectionTrace short_masks = Trace();
  short_masks.masks.pop_back();
  EXPECT_TRUE(SummarizeSelections(short_masks).empty());
  SelectionTrace short_tokens = Trace();
  short_tokens.selected_tokens.pop_back();
  EXPECT_TRUE(SummarizeSelections(short_tokens).empty());
  SelectionTrace no_layers = Trace();
  no_layers.num_fa_layers = 0;
  EXPECT_TRUE(SummarizeSelections(no_layers).empty());
}

}  // namespace
}  // namespace flexvqa
