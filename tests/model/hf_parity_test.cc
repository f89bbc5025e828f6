// Parity with Hugging Face transformers: tests/fixtures/hf_tiny/ holds a tiny random
// LlavaForConditionalGeneration saved by transformers, a fixed image and prompt, its prompt logits
// and its 32 greedy tokens from generate(). It is produced on the GPU machine (where transformers
// is installed) by tests/parity/make_hf_fixture.py; until it is committed these tests are skipped.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/support/parity_fixture.h"

namespace flexvqa {
namespace {

class HfParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = std::string(FLEXVQA_SOURCE_DIR) + "/tests/fixtures/hf_tiny";
    if (!std::filesystem::exists(dir + "/fixture.json")) {
      GTEST_SKIP() << "tests/fixtures/hf_tiny is produced on the GPU machine by "
                      "tests/parity/make_hf_fixture.py; not generated yet";
    }
    auto harness = testing::ParityHarness::Open(dir);
    ASSERT_TRUE(harness.ok()) << harness.status().ToString();
    harness_ = std::move(*harness);
  }
  std::unique_ptr<testing::ParityHarness> harness_;
};

TEST_F(HfParityTest, PromptLogitsMatch) { testing::ExpectPromptLogitsMatch(*harness_, 1e-4); }

TEST_F(HfParityTest, GreedyTokensMatch) { testing::ExpectGreedyTokensMatch(*harness_); }

}  // namespace
}  // namespace flexvqa
