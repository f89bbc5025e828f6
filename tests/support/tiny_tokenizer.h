// Test support: the tiny LLaMA-like tokenizer trained once per test process from the shipped corpus
// (tools/tiny/tokenizer_trainer.h, vocabulary 512), for tests of the text component.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <memory>
#include <string>

#include "model/text/tokenizer.h"
#include "tools/tiny/tokenizer_trainer.h"

namespace flexvqa::testing {

// The trained tokenizer.model's path (trained on first use).
inline const std::string& TinyTokenizerPath() {
  static const std::string path = [] {
    char dir_template[] = "/tmp/flexvqa_tiny_tokenizer_XXXXXX";
    EXPECT_NE(mkdtemp(dir_template), nullptr);
    const std::string prefix = std::string(dir_template) + "/tiny";
    const Status trained = TrainTinyTokenizer(FLEXVQA_DATA_DIR "/tiny_corpus.txt", prefix, 512);
    EXPECT_TRUE(trained.ok()) << trained.ToString();
    return prefix + ".model";
  }();
  return path;
}

inline const Tokenizer& TinyTokenizer() {
  static const std::unique_ptr<Tokenizer> tokenizer = [] {
    auto loaded = Tokenizer::Load(TinyTokenizerPath());
    EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
    return loaded.ok() ? std::move(loaded).value() : std::unique_ptr<Tokenizer>();
  }();
  if (!tokenizer) std::abort();  // Training failed: reported above; nothing else can run.
  return *tokenizer;
}

}  // namespace flexvqa::testing
