// Test support: a tiny random LLaVA checkpoint written once per test process
// (tools/tiny/tiny_llava.h) and a small synthetic PNG, so engine tests need no downloads.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "tools/tiny/tiny_llava.h"

namespace flexvqa::testing {

// Returns the directory of a tiny checkpoint in `layout` written with `seed` (cached per process).
inline std::string TinyModelDir(CheckpointLayout layout = CheckpointLayout::kHfLlava,
                                uint64_t seed = 0) {
  static std::map<std::pair<int, uint64_t>, std::string> dirs;
  const auto key = std::make_pair(static_cast<int>(layout), seed);
  auto it = dirs.find(key);
  if (it != dirs.end()) return it->second;
  const std::string dir = ::testing::TempDir() + "flexvqa_tiny_" + std::to_string(getpid()) + "_" +
                          std::to_string(key.first) + "_" + std::to_string(seed);
  TinyLlavaOptions options;
  options.layout = layout;
  options.seed = seed;
  const Status status = WriteTinyLlava(dir, options);
  EXPECT_TRUE(status.ok()) << status.ToString();
  dirs[key] = dir;
  return dir;
}

// The tiny FlexAttention checkpoint (TinyFlexLlavaOptions: the paper's 9x9 blocks of 8x8 HR tokens
// at 1008 px), written once per process.
inline std::string TinyFlexModelDir() {
  static const std::string dir = [] {
    const std::string flex = ::testing::TempDir() + "flexvqa_tiny_flex_" + std::to_string(getpid());
    const Status status = WriteTinyLlava(flex, TinyFlexLlavaOptions());
    EXPECT_TRUE(status.ok()) << status.ToString();
    return flex;
  }();
  return dir;
}

// Reads a file of the source tree (fixtures) into a string.
inline std::string ReadSourceFile(const std::string& relative) {
  std::ifstream in(std::string(FLEXVQA_SOURCE_DIR) + "/" + relative, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing " << relative;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace flexvqa::testing
