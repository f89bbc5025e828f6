// API-level checks and conversions between the proto and the engine's structs.
#include "server/api_convert.h"

#include <gtest/gtest.h>

namespace flexvqa {
namespace {

ModelInfo Info(const std::string& mode = "full") {
  ModelInfo info;
  info.mode = mode;
  info.context_length = 2048;
  return info;
}

StatusCode CodeOf(const v1::GenerateRequest& request, const std::string& mode = "full") {
  return FromProto(request, Info(mode)).status().code();
}

TEST(ApiConvertTest, QuestionBecomesOneUserTurnWithDefaults) {
  v1::GenerateRequest request;
  request.set_question("what is it?");
  auto converted = FromProto(request, Info());
  ASSERT_TRUE(converted.ok());
  ASSERT_EQ(converted->turns.size(), 1u);
  EXPECT_EQ(converted->turns[0].text, "what is it?");
  EXPECT_EQ(converted->sampling.max_new_tokens, SamplingParams().max_new_tokens);
  EXPECT_EQ(converted->sampling.top_p, 1.0f);
  EXPECT_FALSE(converted->image.has_value());
}

TEST(ApiConvertTest, SetSamplingFieldsPassThroughEvenWhenZero) {
  v1::GenerateRequest request;
  request.set_question("q");
  request.mutable_sampling()->set_max_new_tokens(0);  // Set to 0: the engine must reject it.
  request.mutable_sampling()->set_top_p(0.5f);
  request.mutable_sampling()->set_seed(9);
  request.mutable_sampling()->add_stop("END");
  auto converted = FromProto(request, Info());
  ASSERT_TRUE(converted.ok());
  EXPECT_EQ(converted->sampling.max_new_tokens, 0);
  EXPECT_EQ(converted->sampling.top_p, 0.5f);
  EXPECT_EQ(converted->sampling.seed, 9u);
  EXPECT_EQ(converted->sampling.stop, std::vector<std::string>{"END"});
}

TEST(ApiConvertTest, RejectsApiLevelMistakes) {
  v1::GenerateRequest empty;
  EXPECT_EQ(CodeOf(empty), StatusCode::kInvalidArgument);

  v1::GenerateRequest both;
  both.set_question("q");
  both.add_turns()->set_text("t");
  EXPECT_EQ(CodeOf(both), StatusCode::kInvalidArgument);

  v1::GenerateRequest assistant_last;
  assistant_last.add_turns()->set_text("q");
  auto* answer = assistant_last.add_turns();
  answer->set_role(v1::ChatTurn::ROLE_ASSISTANT);
  answer->set_text("a");
  EXPECT_EQ(CodeOf(assistant_last), StatusCode::kInvalidArgument);

  v1::GenerateRequest two_images;
  two_images.set_question("q");
  two_images.add_images()->set_data("x");
  two_images.add_images()->set_data("y");
  auto status = FromProto(two_images, Info()).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("at most 1"), std::string::npos);

  v1::GenerateRequest gif;
  gif.set_question("q");
  gif.add_images()->set_data("GIF89a");
  gif.mutable_images(0)->set_mime_type("image/gif");
  EXPECT_EQ(CodeOf(gif), StatusCode::kInvalidArgument);

  v1::GenerateRequest zero_bytes;
  zero_bytes.set_question("q");
  zero_bytes.add_images();
  EXPECT_EQ(CodeOf(zero_bytes), StatusCode::kInvalidArgument);
}

TEST(ApiConvertTest, SelectionThresholdOnlyForFlexModelsAndInRange) {
  v1::GenerateRequest request;
  request.set_question("q");
  request.set_selection_threshold(0);  // Set, even to 0, differs from unset.
  EXPECT_EQ(CodeOf(request, "full"), StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(request, "flex"), StatusCode::kOk);
  request.set_selection_threshold(256);
  EXPECT_EQ(CodeOf(request, "flex"), StatusCode::kInvalidArgument);
}

TEST(ApiConvertTest, FinalMessageCarriesUsageAndTimings) {
  StreamItem item;
  item.final = true;
  item.reason = FinishReason::kLength;
  item.usage.prompt_tokens = 600;
  item.usage.image_tokens = 576;
  item.usage.generated_tokens = 12;
  item.timings.first_token_ms = 5.5;
  v1::GenerateFinal out;
  ToProto(item, "id-1", &out);
  EXPECT_EQ(out.request_id(), "id-1");
  EXPECT_EQ(out.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(out.usage().image_tokens(), 576);
  EXPECT_EQ(out.usage().generated_tokens(), 12);
  EXPECT_DOUBLE_EQ(out.timings().first_token_ms(), 5.5);
}

}  // namespace
}  // namespace flexvqa
