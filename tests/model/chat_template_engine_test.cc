// The engine's prompt template: the checkpoint layout's default, the override, ModelInfo, and the
// prompt Prepare builds with it (docs/chat_templates.md).
#include <gtest/gtest.h>

#include "model/engine.h"
#include "model/text/prompt.h"
#include "tests/support/engine_runner.h"
#include "tests/support/tiny_model.h"

namespace flexvqa {
namespace {

using testing::MakeEngine;

TEST(ChatTemplateEngineTest, DefaultFollowsTheCheckpointLayout) {
  auto hf = MakeEngine(testing::TinyModelDir(CheckpointLayout::kHfLlava), 1);
  ASSERT_NE(hf, nullptr);
  EXPECT_EQ(hf->Info().chat_template, "llava_hf");
  auto original = MakeEngine(testing::TinyModelDir(CheckpointLayout::kOriginalLlava), 1);
  ASSERT_NE(original, nullptr);
  EXPECT_EQ(original->Info().chat_template, "vicuna_v1");
}

TEST(ChatTemplateEngineTest, OptionOverridesTheDefault) {
  for (const char* name : {"llava_v1", "vicuna_v1", "llava_hf"}) {
    auto engine = MakeEngine(testing::TinyModelDir(CheckpointLayout::kHfLlava), 1, name);
    ASSERT_NE(engine, nullptr) << name;
    EXPECT_EQ(engine->Info().chat_template, name);
  }
  EngineOptions options;
  options.model_dir = testing::TinyModelDir();
  options.chat_template = "vicuna";
  const auto engine = CreateLlavaEngine(options);
  EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("unknown chat template 'vicuna'"), std::string::npos)
      << engine.status().ToString();
}

// Prepare's prompt length is the template's: three templates, three lengths, each the length of
// BuildLlavaPrompt with that template on the checkpoint's own tokenizer.
TEST(ChatTemplateEngineTest, PrepareUsesTheTemplate) {
  const std::string dir = testing::TinyModelDir(CheckpointLayout::kHfLlava);
  auto tokenizer = Tokenizer::Load(dir + "/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok());
  GenerationRequest request;
  request.turns = {{ChatTurn::Role::kUser, "What is in the picture?"}};
  request.sampling.max_new_tokens = 1;
  std::vector<int> lengths;
  for (ChatTemplate t : {ChatTemplate::kLlavaV1, ChatTemplate::kVicunaV1, ChatTemplate::kLlavaHf}) {
    auto engine = MakeEngine(dir, 1, ChatTemplateName(t));
    ASSERT_NE(engine, nullptr);
    auto prepared = engine->Prepare(request);
    ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
    PromptOptions options;
    options.chat_template = t;
    auto ids = BuildLlavaPrompt(**tokenizer, request.turns, options);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ((*prepared)->prompt_tokens, static_cast<int>(ids->size())) << ChatTemplateName(t);
    lengths.push_back((*prepared)->prompt_tokens);
  }
  // llava_v1 and vicuna_v1 differ in words, not necessarily in length; llava_hf has no system
  // prompt.
  EXPECT_LT(lengths[2], lengths[0]);
  EXPECT_LT(lengths[2], lengths[1]);
}

}  // namespace
}  // namespace flexvqa
