#include "model/text/prompt.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/support/tiny_tokenizer.h"

namespace flexvqa {
namespace {

// LLaVA llava/conversation.py (commit 053c284): conv_llava_v1.system and conv_vicuna_v1.system,
// typed here from the source, not taken from the code under test.
const std::string kLlavaSystem =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions.";
const std::string kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";

ChatTurn User(std::string text) { return {ChatTurn::Role::kUser, std::move(text)}; }
ChatTurn Assistant(std::string text) { return {ChatTurn::Role::kAssistant, std::move(text)}; }

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// The tiny tokenizer, loaded twice from one file: ours, the code under test, and libsentencepiece
// (linked into this torch-free test only), which computes the expected ids independently.
class PromptTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sp_ = new sentencepiece::SentencePieceProcessor();
    ASSERT_TRUE(sp_->Load(testing::TinyTokenizerPath()).ok());
  }
  static void TearDownTestSuite() { delete sp_; }
  static const Tokenizer& tok() { return testing::TinyTokenizer(); }

  // libsentencepiece's ids for one chunk of text, with BOS in front when asked.
  static std::vector<int32_t> Sp(const std::string& text, bool bos = false) {
    std::vector<int> ids;
    EXPECT_TRUE(sp_->Encode(text, &ids).ok());
    std::vector<int32_t> out;
    if (bos) out.push_back(sp_->bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }
  static std::vector<int32_t> Eos() { return {sp_->eos_id()}; }

  static std::vector<int32_t> Build(ChatTemplate t, const std::vector<ChatTurn>& turns,
                                    bool has_image, int num_image_tokens = 3) {
    PromptOptions options;
    options.chat_template = t;
    options.has_image = has_image;
    options.image_token_id = 32000;
    options.num_image_tokens = num_image_tokens;
    auto ids = BuildLlavaPrompt(tok(), turns, options);
    EXPECT_TRUE(ids.ok()) << ids.status().ToString();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  static inline sentencepiece::SentencePieceProcessor* sp_ = nullptr;
};

const std::vector<int32_t> kImage3(3, 32000);

TEST(ChatTemplateTest, NamesParseOnceAndRoundTrip) {
  for (ChatTemplate t : {ChatTemplate::kLlavaV1, ChatTemplate::kVicunaV1, ChatTemplate::kLlavaHf}) {
    const auto parsed = ParseChatTemplate(ChatTemplateName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_STREQ(ChatTemplateName(ChatTemplate::kLlavaV1), "llava_v1");
  EXPECT_STREQ(ChatTemplateName(ChatTemplate::kVicunaV1), "vicuna_v1");
  EXPECT_STREQ(ChatTemplateName(ChatTemplate::kLlavaHf), "llava_hf");
  for (const char* bad : {"", "vicuna", "LLAVA_HF", "llava_hf ", "v1"}) {
    const auto parsed = ParseChatTemplate(bad);
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("llava_v1, vicuna_v1 or llava_hf"), std::string::npos);
  }
}

TEST(ChatTemplateTest, SystemPromptsAreLlavas) {
  EXPECT_EQ(ChatTemplateSystem(ChatTemplate::kLlavaV1), kLlavaSystem);
  EXPECT_EQ(ChatTemplateSystem(ChatTemplate::kVicunaV1), kVicunaSystem);
  EXPECT_STREQ(ChatTemplateSystem(ChatTemplate::kLlavaHf), "");
}

TEST_F(PromptTest, RendersSingleTurn) {
  const std::vector<ChatTurn> q = {User("What is this?")};
  EXPECT_EQ(RenderPrompt(ChatTemplate::kLlavaV1, q, false),
            kLlavaSystem + " USER: What is this? ASSISTANT:");
  EXPECT_EQ(RenderPrompt(ChatTemplate::kLlavaV1, q, true),
            kLlavaSystem + " USER: <image>\nWhat is this? ASSISTANT:");
  EXPECT_EQ(RenderPrompt(ChatTemplate::kVicunaV1, q, true),
            kVicunaSystem + " USER: <image>\nWhat is this? ASSISTANT:");
  // transformers tests/models/llava/test_processor_llava.py, test_chat_template.
  EXPECT_EQ(RenderPrompt(ChatTemplate::kLlavaHf, {User("What is shown in this image?")}, true),
            "USER: <image>\nWhat is shown in this image? ASSISTANT:");
  EXPECT_EQ(RenderPrompt(ChatTemplate::kLlavaHf, q, false), "USER: What is this? ASSISTANT:");
}

TEST_F(PromptTest, RendersMultiTurn) {
  const std::vector<ChatTurn> turns = {User("What colour is the car?"), Assistant("Green."),
                                       User("And the roof?")};
  EXPECT_EQ(RenderPrompt(ChatTemplate::kLlavaV1, turns, true),
            kLlavaSystem +
                " USER: <image>\nWhat colour is the car? ASSISTANT: Green.</s>USER: And the roof? "
                "ASSISTANT:");
  EXPECT_EQ(RenderPrompt(ChatTemplate::kVicunaV1, turns, false),
            kVicunaSystem +
                " USER: What colour is the car? ASSISTANT: Green.</s>USER: And the roof? "
                "ASSISTANT:");
  // The llava-hf template ends every message with " ", answers included, and has no "</s>".
  EXPECT_EQ(RenderPrompt(ChatTemplate::kLlavaHf, turns, true),
            "USER: <image>\nWhat colour is the car? ASSISTANT: Green. USER: And the roof? "
            "ASSISTANT:");
}

// Each template's exact ids: libsentencepiece's encoding of the template's literal text chunks,
// BOS in front, the image ids and EOS where the template puts them.
TEST_F(PromptTest, LlavaV1Ids) {
  EXPECT_EQ(
      Build(ChatTemplate::kLlavaV1, {User("What is this?")}, true),
      Concat({Sp(kLlavaSystem + " USER: ", true), kImage3, Sp("\nWhat is this? ASSISTANT:")}));
  EXPECT_EQ(Build(ChatTemplate::kLlavaV1, {User("How many apples?")}, false),
            Sp(kLlavaSystem + " USER: How many apples? ASSISTANT:", true));
}

TEST_F(PromptTest, VicunaV1Ids) {
  const std::vector<ChatTurn> turns = {User("Count the birds."), Assistant("Eleven."),
                                       User("And cats?"), Assistant("None."),
                                       User("Thanks, what colour is the sky?")};
  EXPECT_EQ(Build(ChatTemplate::kVicunaV1, turns, true, 2),
            Concat({Sp(kVicunaSystem + " USER: ", true),
                    {32000, 32000},
                    Sp("\nCount the birds. ASSISTANT: Eleven."),
                    Eos(),
                    Sp("USER: And cats? ASSISTANT: None."),
                    Eos(),
                    Sp("USER: Thanks, what colour is the sky? ASSISTANT:")}));
  EXPECT_EQ(Build(ChatTemplate::kVicunaV1, {User("Hi")}, false),
            Sp(kVicunaSystem + " USER: Hi ASSISTANT:", true));
}

TEST_F(PromptTest, LlavaHfIds) {
  // transformers' test_chat_template_dict pins LLaMA's ids for this prompt:
  // [1, 3148, 1001, 29901, 29871, 32000, 29871, 13, 5618, ...]: BOS, "USER:" and a lone "▁", the
  // image, then "▁" "\n" (the tokenizer splits at the added <image> and prefixes each piece).
  const std::vector<int32_t> ids =
      Build(ChatTemplate::kLlavaHf, {User("What is shown in this image?")}, true, 1);
  EXPECT_EQ(ids,
            Concat({Sp("USER: ", true), {32000}, Sp("\nWhat is shown in this image? ASSISTANT:")}));
  const auto image = std::find(ids.begin(), ids.end(), 32000);
  ASSERT_TRUE(image != ids.begin() && image + 2 < ids.end());
  EXPECT_EQ(ids.front(), sp_->bos_id());
  EXPECT_EQ(sp_->IdToPiece(image[-1]), "\xE2\x96\x81");
  EXPECT_EQ(sp_->IdToPiece(image[1]), "\xE2\x96\x81");
  EXPECT_EQ(sp_->IdToPiece(image[2]), "<0x0A>");
  // Multi-turn: one chunk after the image, no EOS anywhere.
  const std::vector<ChatTurn> turns = {User("What colour is the car?"), Assistant("Green."),
                                       User("And the roof?")};
  const std::vector<int32_t> multi = Build(ChatTemplate::kLlavaHf, turns, true);
  EXPECT_EQ(multi, Concat({Sp("USER: ", true), kImage3,
                           Sp("\nWhat colour is the car? ASSISTANT: Green. USER: And the roof? "
                              "ASSISTANT:")}));
  EXPECT_EQ(std::count(multi.begin(), multi.end(), sp_->eos_id()), 0);
  EXPECT_EQ(
      Build(ChatTemplate::kLlavaHf, turns, false),
      Sp("USER: What colour is the car? ASSISTANT: Green. USER: And the roof? ASSISTANT:", true));
}

TEST_F(PromptTest, DefaultOptionsAreVicunaV1) {
  const auto ids = BuildLlavaPrompt(tok(), {User("Hi")}, PromptOptions{});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, Sp(kVicunaSystem + " USER: Hi ASSISTANT:", true));
}

TEST_F(PromptTest, TextOnlyPromptDecodesToTheRenderedText) {
  for (ChatTemplate t : {ChatTemplate::kLlavaV1, ChatTemplate::kVicunaV1, ChatTemplate::kLlavaHf}) {
    const std::vector<ChatTurn> turns = {User("How many apples?"), Assistant("Three."),
                                         User("Pears?")};
    std::string rendered = RenderPrompt(t, turns, false);
    const std::vector<int32_t> ids = Build(t, turns, false);
    // Decode drops EOS; the chunk after it has a dummy prefix of its own, which decodes to a
    // space (LLaVA's "</s>USER:" tokenises as [2, "▁US", ...]).
    const size_t eos = rendered.find("</s>");
    if (eos != std::string::npos) rendered.replace(eos, 4, " ");
    EXPECT_EQ(tok().Decode(ids), rendered) << ChatTemplateName(t);
  }
}

TEST_F(PromptTest, ImageTokenIdMayBeNegative) {
  PromptOptions options{true, -200, 3};
  options.chat_template = ChatTemplate::kLlavaV1;
  const auto ids = BuildLlavaPrompt(tok(), {User("Hi")}, options);
  ASSERT_TRUE(ids.ok());
  const auto first = std::find(ids->begin(), ids->end(), -200);
  ASSERT_NE(first, ids->end());
  EXPECT_TRUE(std::equal(first, first + 3, std::vector<int32_t>(3, -200).begin()));
  EXPECT_EQ(std::count(ids->begin(), ids->end(), -200), 3);
  // The placeholder decodes to nothing, so decoding gives the prompt without "<image>".
  EXPECT_EQ(tok().Decode(*ids),
            kLlavaSystem + " USER:  \nHi ASSISTANT:");  // Two "▁": chunk end, dummy prefix.
}

TEST_F(PromptTest, UserTypedEndOfTurnStaysText) {
  for (ChatTemplate t : {ChatTemplate::kLlavaV1, ChatTemplate::kVicunaV1, ChatTemplate::kLlavaHf}) {
    const std::vector<int32_t> ids = Build(t, {User("What does </s> mean?")}, false);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), tok().eos_id()), 0);
    EXPECT_NE(tok().Decode(ids).find("What does </s> mean?"), std::string::npos);
  }
}

TEST_F(PromptTest, ImageNeedsImageTokens) {
  EXPECT_EQ(BuildLlavaPrompt(tok(), {User("Hi")}, PromptOptions{true, 32000, 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLlavaPrompt(tok(), {User("Hi")}, PromptOptions{true, 32000, -1}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flexvqa
