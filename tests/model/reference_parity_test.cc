// Parity with an independent plain-PyTorch LLaVA-1.5 (tests/parity/llava_reference.py, written from
// the transformers equations): tests/fixtures/reference_tiny/ holds a tiny checkpoint, a fixed
// image and prompt, the reference's prompt logits and its 32 greedy tokens
// (tests/parity/make_reference_fixture.py).
#include <gtest/gtest.h>

#include "tests/support/parity_fixture.h"

namespace flexvqa {
namespace {

class ReferenceParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto harness = testing::ParityHarness::Open(std::string(FLEXVQA_SOURCE_DIR) +
                                                "/tests/fixtures/reference_tiny");
    ASSERT_TRUE(harness.ok()) << harness.status().ToString();
    harness_ = std::move(*harness);
  }
  std::unique_ptr<testing::ParityHarness> harness_;
};

TEST_F(ReferenceParityTest, PromptLogitsMatch) {
  testing::ExpectPromptLogitsMatch(*harness_, 1e-4);
}

TEST_F(ReferenceParityTest, GreedyTokensMatch) { testing::ExpectGreedyTokensMatch(*harness_); }

}  // namespace
}  // namespace flexvqa
