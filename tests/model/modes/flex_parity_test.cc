// The engine in flex mode, as the scheduler drives it, against the plain-PyTorch FlexAttention
// reference (tests/parity/flex_reference.py, full attention matrices, HR keys recomputed every
// step, batch 1): identical selection masks at every FA layer and step, logits within 1e-4,
// identical greedy tokens for 32 steps, alone and in batches of 3 and 8 requests with mixed aspect
// ratios (ragged selections). Also the properties of the selection.
#include <gtest/gtest.h>

#include <set>

#include "tests/support/flex_fixture.h"

namespace flexvqa {
namespace {

using testing::FlexFixture;
using testing::FlexHarness;
using testing::FlexInput;
using testing::FlexRun;

class FlexParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto f = testing::LoadFlexFixture();
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    fixture_ = new FlexFixture(std::move(*f));
    auto h = FlexHarness::Open(fixture_->config);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    harness_ = h->release();
  }
  static void TearDownTestSuite() {
    delete harness_;
    delete fixture_;
  }

  // Runs the cases together and checks each against its reference.
  void CheckBatch(const std::vector<int>& cases) {
    std::vector<FlexInput> inputs;
    for (int c : cases) inputs.push_back(testing::InputOf(*fixture_, fixture_->cases[c]));
    const std::vector<FlexRun> runs = harness_->Run(inputs, fixture_->steps);
    for (size_t i = 0; i < cases.size(); ++i) CheckCase(cases[i], runs[i], cases.size());
  }

  void CheckCase(int index, const FlexRun& run, size_t batch) {
    const testing::FlexCase& c = fixture_->cases[index];
    SCOPED_TRACE("case " + std::to_string(index) + " (" + c.image + ") in a batch of " +
                 std::to_string(batch));
    ASSERT_EQ(run.trace.num_steps, fixture_->steps);
    int mask_mismatches = 0;
    for (int step = 0; step < fixture_->steps; ++step) {
      for (int fa = 0; fa < run.trace.num_fa_layers; ++fa) {
        const std::string ours = testing::MaskString(run.trace, step, fa);
        if (ours != c.masks[step][fa] && mask_mismatches++ < 3) {
          ADD_FAILURE() << "step " << step << " FA layer " << fa << ": ours " << ours
                        << "\n reference " << c.masks[step][fa] << " (selection margins "
                        << ::testing::PrintToString(c.margins[step]) << ")";
        }
      }
    }
    EXPECT_EQ(mask_mismatches, 0);
    const at::Tensor per_step = (run.logits - c.logits).abs().amax(1);  // [steps]
    const double diff = per_step.max().item<double>();
    if (diff > 1e-4) {
      const int64_t first = (per_step > 1e-4).nonzero()[0][0].item<int64_t>();
      ADD_FAILURE() << "logits first differ by more than 1e-4 at step " << first << " ("
                    << per_step[first].item<double>() << ")";
    }
    std::printf(
        "[flex parity] case %d (%s, batch %zu): max abs logit diff %.3g over %d steps; %lld HR "
        "blocks computed\n",
        index, c.image.c_str(), batch, diff, fixture_->steps,
        static_cast<long long>(run.computed_blocks));
    EXPECT_LE(diff, 1e-4);
    EXPECT_EQ(run.tokens, c.tokens);
  }

  static FlexFixture* fixture_;
  static FlexHarness* harness_;
};

FlexFixture* FlexParityTest::fixture_ = nullptr;
FlexHarness* FlexParityTest::harness_ = nullptr;

TEST_F(FlexParityTest, EachCaseAloneMatchesReference) {
  for (int c = 0; c < static_cast<int>(fixture_->cases.size()); ++c) CheckBatch({c});
}

TEST_F(FlexParityTest, BatchesOfThreeMatchReference) {
  CheckBatch({0, 1, 2});
  CheckBatch({3, 4, 5});
  CheckBatch({6, 7, 1});
}

TEST_F(FlexParityTest, BatchOfEightMatchesReference) { CheckBatch({0, 1, 2, 3, 4, 5, 6, 7}); }

TEST_F(FlexParityTest, ThresholdOf255SelectsNothingAndEqualsLowResOnly) {
  const testing::FlexCase& c = fixture_->cases[0];
  FlexInput none = testing::InputOf(*fixture_, c);
  none.threshold = 255;
  // Run apart, so that both see the same GEMM shapes: then the numbers are bit-identical.
  const FlexRun with_hook = harness_->Run({none}, 8)[0];
  const FlexRun plain = harness_->RunLowResOnly(none, 8);
  EXPECT_EQ(std::count(with_hook.trace.masks.begin(), with_hook.trace.masks.end(), 1), 0);
  EXPECT_EQ(with_hook.trace.num_steps, 8);
  EXPECT_EQ(with_hook.computed_blocks, 0);
  EXPECT_TRUE(at::equal(with_hook.logits, plain.logits));
  EXPECT_EQ(with_hook.tokens, plain.tokens);
  // And the HR tokens matter when selected.
  EXPECT_GT((c.logits.narrow(0, 0, 8) - plain.logits).abs().max().item<double>(), 1e-3);
}

TEST_F(FlexParityTest, SelectionsAreBlocksAndAvoidPaddingBands) {
  // Case 3 is 90x26: m = int(32 / 90 * 24) = 8 rows of padding at the top and the bottom; pooled
  // rows 0-2 and 6-8 have windows entirely inside them ([0,3), [2,6), [5,8) and mirrored).
  const testing::FlexCase& c = fixture_->cases[3];
  const std::vector<FlexRun> runs = harness_->Run({testing::InputOf(*fixture_, c)}, 12);
  const SelectionTrace& t = runs[0].trace;
  ASSERT_EQ(t.hr_side, 72);
  int selected = 0;
  for (int step = 0; step < t.num_steps; ++step) {
    for (int fa = 0; fa < t.num_fa_layers; ++fa) {
      const std::string mask = testing::MaskString(t, step, fa);
      const int blocks = static_cast<int>(std::count(mask.begin(), mask.end(), '1'));
      selected += blocks;
      EXPECT_EQ(t.selected_tokens[step * t.num_fa_layers + fa], 64 * blocks);  // 8x8 blocks.
      for (int row : {0, 1, 2, 6, 7, 8}) EXPECT_EQ(mask.substr(row * 9, 9), "000000000") << step;
    }
  }
  EXPECT_GT(selected, 0);
}

TEST_F(FlexParityTest, SelectionMovesAcrossDecodeSteps) {
  // Case 0's generated tokens move the last row's attention: its selections differ between steps.
  const testing::FlexCase& c = fixture_->cases[0];
  std::set<std::string> distinct;
  for (const auto& step : c.masks) distinct.insert(step[0]);
  EXPECT_GT(distinct.size(), 1u);
  const std::vector<FlexRun> runs = harness_->Run({testing::InputOf(*fixture_, c)}, 6);
  std::set<std::string> ours;
  for (int step = 0; step < 6; ++step) ours.insert(testing::MaskString(runs[0].trace, step, 0));
  EXPECT_GT(ours.size(), 1u);
}

}  // namespace
}  // namespace flexvqa
