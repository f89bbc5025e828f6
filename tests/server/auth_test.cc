// The token file's rules and the token check: names, comments, refusal of short and duplicate
// tokens (without echoing them), Bearer parsing, and that only the exact token matches.
#include "server/auth.h"

#include <gtest/gtest.h>

namespace flexvqa {
namespace {

TEST(TokenSetTest, ParsesTokensWithOptionalNamesAndSkipsComments) {
  auto set = TokenSet::Parse(
      "# ops\n\n  alpha-0123456789abcdef  alice\nbravo-0123456789abcdef\n#x-0123456789abcdef\n");
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->size(), 2u);
  EXPECT_EQ(set->Verify("alpha-0123456789abcdef"), "alice");
  EXPECT_EQ(set->Verify("bravo-0123456789abcdef"), "token4");  // Named after its line.
  EXPECT_EQ(set->Verify("#x-0123456789abcdef"), std::nullopt);
}

TEST(TokenSetTest, OnlyTheExactTokenMatches) {
  auto set = TokenSet::Parse("alpha-0123456789abcdef alice\n");
  ASSERT_TRUE(set.ok());
  for (const char* wrong : {"", "alpha", "alpha-0123456789abcde", "alpha-0123456789abcdef ",
                            "alpha-0123456789abcdeF", "xalpha-0123456789abcdef"}) {
    EXPECT_EQ(set->Verify(wrong), std::nullopt) << wrong;
  }
}

TEST(TokenSetTest, RefusesShortDuplicateAndEmptyWithoutEchoingTheToken) {
  auto short_token = TokenSet::Parse("abc123 alice\n");
  EXPECT_EQ(short_token.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_token.status().message().find("line 1"), std::string::npos);
  EXPECT_EQ(short_token.status().message().find("abc123"), std::string::npos);
  auto duplicate = TokenSet::Parse("alpha-0123456789abcdef a\nalpha-0123456789abcdef b\n");
  EXPECT_EQ(duplicate.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(duplicate.status().message().find("alpha-"), std::string::npos);
  auto same_name = TokenSet::Parse("alpha-0123456789abcdef a\nbravo-0123456789abcdef a\n");
  EXPECT_EQ(same_name.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(TokenSet::Parse("# nothing\n\n").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(TokenSet::Load("/nonexistent/tokens").status().code(), StatusCode::kNotFound);
}

TEST(BearerTokenTest, AcceptsOnlyTheBearerScheme) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("Bearer "), std::nullopt);
  EXPECT_EQ(BearerToken("bearer abc"), std::nullopt);
  EXPECT_EQ(BearerToken("Basic abc"), std::nullopt);
  EXPECT_EQ(BearerToken("abc"), std::nullopt);
}

}  // namespace
}  // namespace flexvqa
