// API-level checks and conversions between the proto and the engine's structs.
#include "server/api_convert.h"

#include <gtest/gtest.h>

#include <limits>

namespace flexvqa {
namespace {

StatusCode CodeOf(const v1::GenerateRequest& request) { return FromProto(request).status().code(); }

TEST(ApiConvertTest, QuestionBecomesOneUserTurnWithDefaults) {
  v1::GenerateRequest request;
  request.set_question("what is it?");
  auto converted = FromProto(request);
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
  auto converted = FromProto(request);
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

  v1::GenerateRequest unknown_role;
  unknown_role.add_turns()->set_text("q");
  unknown_role.mutable_turns(0)->set_role(static_cast<v1::ChatTurn::Role>(7));
  EXPECT_EQ(CodeOf(unknown_role), StatusCode::kInvalidArgument);

  v1::GenerateRequest two_images;
  two_images.set_question("q");
  two_images.add_images()->set_data("x");
  two_images.add_images()->set_data("y");
  auto status = FromProto(two_images).status();
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

// The conversation's rules (roles, order, text) are the engine's, checked once
// (model/request_validation.h): the conversion passes a bad conversation through as it is.
TEST(ApiConvertTest, ConversationPassesThroughForTheEngineToCheck) {
  v1::GenerateRequest request;
  request.add_turns()->set_text("q");
  auto* answer = request.add_turns();
  answer->set_role(v1::ChatTurn::ROLE_ASSISTANT);
  answer->set_text("");
  const auto converted = FromProto(request);
  ASSERT_TRUE(converted.ok()) << converted.status().ToString();
  ASSERT_EQ(converted->turns.size(), 2u);
  EXPECT_EQ(converted->turns[0].role, ChatTurn::Role::kUser);
  EXPECT_EQ(converted->turns[1].role, ChatTurn::Role::kAssistant);
  EXPECT_EQ(converted->turns[1].text, "");
}

// The engine checks the threshold (mode and range); the conversion only keeps set from unset.
TEST(ApiConvertTest, SelectionThresholdPassesThroughForTheEngineToCheck) {
  v1::GenerateRequest request;
  request.set_question("q");
  EXPECT_FALSE(FromProto(request)->selection_threshold.has_value());
  request.set_selection_threshold(0);  // Set, even to 0, differs from unset.
  EXPECT_EQ(FromProto(request)->selection_threshold, 0);
  request.set_selection_threshold(256);
  EXPECT_EQ(FromProto(request)->selection_threshold, 256);
  request.set_selection_threshold(4'000'000'000u);  // Beyond int: saturates, still out of range.
  EXPECT_EQ(FromProto(request)->selection_threshold, std::numeric_limits<int32_t>::max());
}

TEST(ApiConvertTest, FinalMessageCarriesUsageAndTimings) {
  StreamItem item;
  item.final = true;
  item.reason = FinishReason::kLength;
  item.usage.prompt_tokens = 600;
  item.usage.image_tokens = 576;
  item.usage.generated_tokens = 12;
  item.timings.first_token_ms = 5.5;
  item.timings.vision_ms = 1.25;
  item.flops.flops[FlopCount::kVision][FlopCount::kMlp] = 100;
  item.flops.flops[FlopCount::kProjector][FlopCount::kProjections] = 10;
  item.flops.flops[FlopCount::kPrefill][FlopCount::kAttention] = 1000;
  item.flops.flops[FlopCount::kPrefill][FlopCount::kLmHead] = 2000;
  item.flops.flops[FlopCount::kDecode][FlopCount::kMlp] = 30000;
  v1::GenerateFinal out;
  ToProto(item, "id-1", &out);
  EXPECT_EQ(out.request_id(), "id-1");
  EXPECT_EQ(out.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(out.usage().image_tokens(), 576);
  EXPECT_EQ(out.usage().generated_tokens(), 12);
  EXPECT_DOUBLE_EQ(out.timings().first_token_ms(), 5.5);
  EXPECT_DOUBLE_EQ(out.timings().vision_ms(), 1.25);
  EXPECT_DOUBLE_EQ(out.flops_by_phase().vision(), 100);
  EXPECT_DOUBLE_EQ(out.flops_by_phase().projector(), 10);
  EXPECT_DOUBLE_EQ(out.flops_by_phase().prefill(), 3000);
  EXPECT_DOUBLE_EQ(out.flops_by_phase().decode(), 30000);
  EXPECT_DOUBLE_EQ(out.flops(), 33110);
}

}  // namespace
}  // namespace flexvqa
