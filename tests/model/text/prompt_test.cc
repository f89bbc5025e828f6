#include "model/text/prompt.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/support/tiny_tokenizer.h"

namespace flexvqa {
namespace {

const std::string kSystem =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, "
    "detailed, and polite answers to the human's questions.";

ChatTurn User(std::string text) { return {ChatTurn::Role::kUser, std::move(text)}; }
ChatTurn Assistant(std::string text) { return {ChatTurn::Role::kAssistant, std::move(text)}; }

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

class PromptTest : public ::testing::Test {
 protected:
  static const Tokenizer& tok() { return testing::TinyTokenizer(); }

  static void ExpectInvalid(const std::vector<ChatTurn>& turns, const std::string& message_part) {
    const auto ids = BuildLlavaPrompt(tok(), turns, PromptOptions{});
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(ids.status().message().find(message_part), std::string::npos)
        << ids.status().message();
  }
};

TEST_F(PromptTest, SystemPromptIsLlavaVicunaV1) { EXPECT_EQ(kVicunaV1System, kSystem); }

TEST_F(PromptTest, RendersSingleTurn) {
  EXPECT_EQ(RenderVicunaV1({User("What is this?")}, false),
            kSystem + " USER: What is this? ASSISTANT:");
  EXPECT_EQ(RenderVicunaV1({User("What is this?")}, true),
            kSystem + " USER: <image>\nWhat is this? ASSISTANT:");
}

TEST_F(PromptTest, RendersMultiTurn) {
  const std::vector<ChatTurn> turns = {User("What colour is the car?"), Assistant("Green."),
                                       User("And the roof?")};
  EXPECT_EQ(RenderVicunaV1(turns, true), kSystem +
                                             " USER: <image>\nWhat colour is the car? ASSISTANT: "
                                             "Green.</s>USER: And the roof? ASSISTANT:");
  EXPECT_EQ(
      RenderVicunaV1(turns, false),
      kSystem +
          " USER: What colour is the car? ASSISTANT: Green.</s>USER: And the roof? ASSISTANT:");
}

TEST_F(PromptTest, TextOnlyPromptIsOneEncodedChunk) {
  const std::vector<ChatTurn> turns = {User("How many apples?")};
  const auto ids = BuildLlavaPrompt(tok(), turns, PromptOptions{});
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, tok().Encode(RenderVicunaV1(turns, false), /*add_bos=*/true));
  EXPECT_EQ(tok().Decode(*ids), RenderVicunaV1(turns, false));
}

TEST_F(PromptTest, ImagePromptLayoutMatchesTokenizerImageToken) {
  PromptOptions options;
  options.has_image = true;
  options.image_token_id = 32000;
  options.num_image_tokens = 7;
  const auto ids = BuildLlavaPrompt(tok(), {User("What is this?")}, options);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  // tokenizer_image_token: chunk 0 with BOS, the image, chunk 1 without its BOS.
  const std::vector<int32_t> head = tok().Encode(kSystem + " USER: ", true);
  const std::vector<int32_t> tail = tok().Encode("\nWhat is this? ASSISTANT:", false);
  EXPECT_EQ(*ids, Concat({head, std::vector<int32_t>(7, 32000), tail}));
  EXPECT_EQ(ids->front(), tok().bos_id());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 32000), 7);
  // Head ends with a lone "▁" (the space after "USER:"), the tail starts with "▁" then "\n": the
  // dummy prefix of a separately encoded chunk, as in LLaVA ([..., 29871, -200, 29871, 13, ...]).
  EXPECT_EQ(tok().IdToPiece(head.back()), "\xE2\x96\x81");
  EXPECT_EQ(tok().IdToPiece(tail[0]), "\xE2\x96\x81");
  EXPECT_EQ(tok().IdToPiece(tail[1]), "<0x0A>");
}

TEST_F(PromptTest, ImageTokenIdMayBeNegative) {
  PromptOptions options{true, -200, 3};
  const auto ids = BuildLlavaPrompt(tok(), {User("Hi")}, options);
  ASSERT_TRUE(ids.ok());
  const auto first = std::find(ids->begin(), ids->end(), -200);
  ASSERT_NE(first, ids->end());
  EXPECT_TRUE(std::equal(first, first + 3, std::vector<int32_t>(3, -200).begin()));
  EXPECT_EQ(std::count(ids->begin(), ids->end(), -200), 3);
  // The placeholder decodes to nothing, so decoding gives the prompt without "<image>".
  EXPECT_EQ(tok().Decode(*ids),
            kSystem + " USER:  \nHi ASSISTANT:");  // Two "▁": chunk end, dummy prefix.
}

TEST_F(PromptTest, EosTokenSeparatesTurns) {
  const std::vector<ChatTurn> turns = {User("Count the birds."), Assistant("Eleven."),
                                       User("And cats?"), Assistant("None."),
                                       User("Thanks, what colour is the sky?")};
  PromptOptions options{true, 32000, 2};
  const auto ids = BuildLlavaPrompt(tok(), turns, options);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  const std::vector<int32_t> eos = {tok().eos_id()};
  const std::vector<int32_t> expected =
      Concat({tok().Encode(kSystem + " USER: ", true),
              {32000, 32000},
              tok().Encode("\nCount the birds. ASSISTANT: Eleven.", false),
              eos,
              tok().Encode("USER: And cats? ASSISTANT: None.", false),
              eos,
              tok().Encode("USER: Thanks, what colour is the sky? ASSISTANT:", false)});
  EXPECT_EQ(*ids, expected);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), tok().eos_id()), 2);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), tok().bos_id()), 1);
}

TEST_F(PromptTest, UserTypedEndOfTurnStaysText) {
  const auto ids = BuildLlavaPrompt(tok(), {User("What does </s> mean?")}, PromptOptions{});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), tok().eos_id()), 0);
  EXPECT_NE(tok().Decode(*ids).find("What does </s> mean?"), std::string::npos);
}

TEST_F(PromptTest, ValidationErrors) {
  ExpectInvalid({}, "no turns");
  ExpectInvalid({Assistant("Hello")}, "turn 0 must be the user's");
  ExpectInvalid({User("a"), User("b")}, "turn 1 must be the assistant's");
  ExpectInvalid({User("a"), Assistant("b"), Assistant("c")}, "turn 2 must be the user's");
  ExpectInvalid({User("What?"), Assistant("That.")}, "last turn must be the user's");
  ExpectInvalid({User("   \n\t ")}, "turn 0 is empty");
  ExpectInvalid({User("")}, "turn 0 is empty");
  ExpectInvalid({User("ok"), Assistant(" "), User("ok")}, "turn 1 is empty");
  ExpectInvalid({User("bad \xC3\x28 byte")},
                "turn 0 is not valid UTF-8 (first bad byte at offset 4)");
  ExpectInvalid({User("ok"), Assistant("cut \xF0\x9F"), User("ok")}, "turn 1 is not valid UTF-8");
  ExpectInvalid({User("<image>\nWhat is this?")}, "image field");
  ExpectInvalid({User("ok"), Assistant("see <image>"), User("ok")}, "turn 1 contains");
  EXPECT_EQ(BuildLlavaPrompt(tok(), {User("Hi")}, PromptOptions{true, 32000, 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateConversation({User("Où? 😀")}).ok());
}

}  // namespace
}  // namespace flexvqa
