#include "model/text/detokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <string>
#include <vector>

#include "model/text/utf8.h"
#include "tests/support/tiny_tokenizer.h"

namespace flexvqa {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

class DetokenizerTest : public ::testing::Test {
 protected:
  static const Tokenizer& tok() { return testing::TinyTokenizer(); }

  static int32_t ByteId(unsigned char byte) {
    char piece[8];
    std::snprintf(piece, sizeof(piece), "<0x%02X>", byte);
    for (int id = 0; id < tok().vocab_size(); ++id) {
      if (tok().IdToPiece(id) == piece) return id;
    }
    return -1;
  }

  // Streams ids one by one; every delta must be valid UTF-8. Returns the deltas, Flush last.
  static std::vector<std::string> Stream(const std::vector<int32_t>& ids) {
    StreamingDetokenizer detok(tok());
    std::vector<std::string> deltas;
    for (int32_t id : ids) deltas.push_back(detok.Push(id));
    deltas.push_back(detok.Flush());
    for (const std::string& d : deltas) EXPECT_TRUE(IsValidUtf8(d)) << d;
    return deltas;
  }
  static std::string Join(const std::vector<std::string>& parts) {
    std::string out;
    for (const std::string& p : parts) out += p;
    return out;
  }
};

TEST_F(DetokenizerTest, ConcatenatedDeltasEqualDecode) {
  const std::vector<std::string> texts = {
      "The cat is sitting on top of a stack of old books.",
      "Où est le café ? Η γάτα. 图片里有三个苹果。猫が二匹います。",
      "Emoji 😀😴 🔴🟢🔵 and unseen Жёлтый 𝄞 ﷽",
      "  leading spaces, trailing  ",
      "\nstarts with a newline\n\nand ends with one\n",
      " ",
  };
  for (const std::string& text : texts) {
    for (bool add_bos : {false, true}) {
      std::vector<int32_t> ids = tok().Encode(text, add_bos);
      ids.push_back(tok().eos_id());
      EXPECT_EQ(Join(Stream(ids)), tok().Decode(ids)) << text;
      EXPECT_EQ(Join(Stream(ids)), text);
    }
  }
}

TEST_F(DetokenizerTest, DropsDummyPrefixOnlyAtStart) {
  const std::vector<int32_t> ids = tok().Encode("the cat", false);
  const std::vector<std::string> deltas = Stream(ids);
  EXPECT_EQ(deltas.front().front(), 't');
  EXPECT_EQ(Join(deltas), "the cat");
  // Out-of-vocabulary and control ids before the text do not end "the start".
  EXPECT_EQ(Join(Stream([&] {
              std::vector<int32_t> v = {tok().bos_id(), 32000, -200};
              v.insert(v.end(), ids.begin(), ids.end());
              return v;
            }())),
            "the cat");
}

TEST_F(DetokenizerTest, HoldsSplitEmojiUntilComplete) {
  StreamingDetokenizer detok(tok());
  std::string text;
  for (int32_t id : tok().Encode("Look", false)) text += detok.Push(id);
  EXPECT_EQ(text, "Look");
  // U+1F600 is F0 9F 98 80, which this tiny vocabulary can only spell with byte pieces.
  EXPECT_EQ(detok.Push(ByteId(0xF0)), "");
  EXPECT_EQ(detok.Push(ByteId(0x9F)), "");
  EXPECT_EQ(detok.Push(ByteId(0x98)), "");
  EXPECT_EQ(detok.Push(ByteId(0x80)), "😀");
  EXPECT_EQ(detok.Flush(), "");
}

TEST_F(DetokenizerTest, InvalidBytesBecomeReplacementCharacters) {
  StreamingDetokenizer detok(tok());
  EXPECT_EQ(detok.Push(ByteId(0xFF)), kReplacement);  // Can never start a character: not held.
  EXPECT_EQ(detok.Push(ByteId(0xF0)), "");
  EXPECT_EQ(detok.Push(ByteId('a')),
            std::string(kReplacement) + "a");  // The held byte cannot complete.
  EXPECT_EQ(detok.Push(ByteId(0xE4)), "");
  EXPECT_EQ(detok.Flush(), kReplacement);  // Truncated at the end of the stream.
  EXPECT_EQ(detok.Flush(), "");
}

TEST(DetokenizerStopStringTest, CutsAtStopStringSpanningPushes) {
  StopStringMatcher matcher({"USER:"});
  EXPECT_EQ(matcher.Push("The answer is blue. U"), "The answer is blue. ");
  EXPECT_EQ(matcher.Push("S"), "");
  EXPECT_EQ(matcher.Push("ER"), "");
  EXPECT_FALSE(matcher.stopped());
  EXPECT_EQ(matcher.Push(": more text"), "");
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.Push("later"), "");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(DetokenizerStopStringTest, ReleasesHeldTextThatIsNotAStop) {
  StopStringMatcher matcher({"STOP"});
  EXPECT_EQ(matcher.Push("ST"), "");
  EXPECT_EQ(matcher.Push("AY"), "STAY");
  EXPECT_EQ(matcher.Push("S"), "");
  EXPECT_EQ(matcher.Flush(), "S");
  EXPECT_FALSE(matcher.stopped());
}

TEST(DetokenizerStopStringTest, StopAtVeryStart) {
  StopStringMatcher matcher({"###"});
  EXPECT_EQ(matcher.Push("#"), "");
  EXPECT_EQ(matcher.Push("##tail"), "");
  EXPECT_TRUE(matcher.stopped());
}

TEST(DetokenizerStopStringTest, EarliestOfSeveralWinsAndTextAroundIsKept) {
  StopStringMatcher matcher({"world", "lo w", ""});
  EXPECT_EQ(matcher.Push("hel"), "he");  // "l" may begin "lo w".
  EXPECT_EQ(matcher.Push("lo world"), "l");
  EXPECT_TRUE(matcher.stopped());
  StopStringMatcher none({});
  EXPECT_EQ(none.Push("anything"), "anything");
}

TEST_F(DetokenizerTest, StopStringAcrossTokens) {
  // The stop string is spread over several tokens and emoji bytes; nothing of it is ever delivered.
  const std::vector<int32_t> ids = tok().Encode("The cat 😀 sleeps. USER: next question", false);
  StreamingDetokenizer detok(tok());
  StopStringMatcher matcher({"USER:"});
  std::string delivered;
  int pushes_until_stop = 0;
  for (int32_t id : ids) {
    delivered += matcher.Push(detok.Push(id));
    ++pushes_until_stop;
    if (matcher.stopped()) break;
  }
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(delivered, "The cat 😀 sleeps. ");
  EXPECT_LT(pushes_until_stop, static_cast<int>(ids.size()));
}

}  // namespace
}  // namespace flexvqa
