// End to end over real gRPC on 127.0.0.1 with the REAL LLaVA engine on the tiny random checkpoint
// (tests/support/tiny_model.h): the streamed answer equals a second engine's direct output for the
// same seed, batching 64 requests changes no answer, real bad images and over-long prompts get
// INVALID_ARGUMENT naming the problem, and the final message's usage is the engine's. On the tiny
// flex checkpoint the final message's selection summary is the engine's trace, aggregated.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <future>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "model/engine.h"
#include "server/vqa_server.h"
#include "tests/server/fake_engine.h"  // GenerateDirect: engine-agnostic.
#include "tests/server/stream_reader.h"
#include "tests/server/test_images.h"
#include "tests/support/tiny_model.h"

namespace flexvqa {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

using testing::StreamResult;

std::unique_ptr<Engine> MakeEngine(int max_sequences,
                                   const std::string& model_dir = testing::TinyModelDir()) {
  EngineOptions options;
  options.model_dir = model_dir;
  options.max_sequences = max_sequences;
  auto engine = CreateLlavaEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

class LlavaServiceTest : public ::testing::Test {
 protected:
  virtual std::string ModelDir() const { return testing::TinyModelDir(); }
  void SetUp() override {
    engine_ = MakeEngine(/*max_sequences=*/16, ModelDir());
    ASSERT_NE(engine_, nullptr);
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.max_calls_per_client = 1000;  // One test client sends 64 at once.
    SchedulerConfig scheduler;
    scheduler.max_running = 16;
    scheduler.max_queued = 128;
    scheduler.preprocess_threads = 2;
    auto server = VqaServer::Start(engine_.get(), options, scheduler);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    stub_ = v1::VqaService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_.reset();
    engine_.reset();
  }

  StreamResult Generate(const v1::GenerateRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    return testing::ReadGenerateStream(*stub_, &context, request);
  }

  std::unique_ptr<Engine> engine_;
  std::unique_ptr<VqaServer> server_;
  std::unique_ptr<v1::VqaService::Stub> stub_;
};

const std::string& Photo() {  // 64x48 JPEG.
  static const std::string bytes =
      testing::ReadSourceFile("tests/fixtures/preprocess/photo_64x48.jpg");
  return bytes;
}
const std::string& Landscape() {  // 37x23 PNG.
  static const std::string bytes =
      testing::ReadSourceFile("tests/fixtures/preprocess/landscape_37x23.png");
  return bytes;
}

v1::GenerateRequest Question(const std::string& text, int max_new_tokens,
                             const std::string& image = "") {
  v1::GenerateRequest request;
  request.set_question(text);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  if (!image.empty()) request.add_images()->set_data(image);
  return request;
}

// The same request as the engine's struct, built by hand (not through the server's conversion).
GenerationRequest ToEngine(const v1::GenerateRequest& request) {
  GenerationRequest out;
  out.turns.push_back({ChatTurn::Role::kUser, request.question()});
  if (request.images_size() > 0) out.image = ImageInput{request.images(0).data(), ""};
  out.sampling.max_new_tokens = request.sampling().max_new_tokens();
  out.sampling.temperature = request.sampling().temperature();
  out.sampling.top_k = request.sampling().top_k();
  out.sampling.seed = request.sampling().seed();
  return out;
}

TEST_F(LlavaServiceTest, StreamedTextAndUsageEqualTheEngineDirectOutput) {
  std::unique_ptr<Engine> reference = MakeEngine(/*max_sequences=*/1);
  ASSERT_NE(reference, nullptr);
  v1::GenerateRequest sampled = Question("What is in the picture?", 24, Photo());
  sampled.mutable_sampling()->set_temperature(0.9f);
  sampled.mutable_sampling()->set_top_k(40);
  sampled.mutable_sampling()->set_seed(1234);
  const v1::GenerateRequest text_only = Question("Describe a red ball on a green mat.", 24);
  for (const v1::GenerateRequest& request : {sampled, text_only}) {
    SCOPED_TRACE(request.images_size() > 0 ? "sampled, with image" : "greedy, text only");
    const GenerationRequest direct_request = ToEngine(request);
    auto expected = testing::GenerateDirect(*reference, direct_request);
    ASSERT_TRUE(expected.ok()) << expected.status().ToString();
    auto prepared = reference->Prepare(direct_request);
    ASSERT_TRUE(prepared.ok());

    StreamResult result = Generate(request);
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_EQ(result.ids, expected->token_ids);
    EXPECT_EQ(result.text, expected->text);
    ASSERT_TRUE(result.final.has_value());
    const v1::Usage& usage = result.final->usage();
    EXPECT_EQ(usage.prompt_tokens(), (*prepared)->prompt_tokens);
    EXPECT_EQ(usage.image_tokens(),
              request.images_size() > 0 ? engine_->Info().num_image_tokens : 0);
    EXPECT_EQ(usage.generated_tokens(), static_cast<int>(expected->token_ids.size()));
    EXPECT_EQ(usage.selected_hr_tokens(), 0);  // Not a flex model.
    EXPECT_FALSE(result.final->has_selection());
    const v1::Timings& timings = result.final->timings();
    EXPECT_GT(timings.prefill_ms(), 0);
    EXPECT_EQ(timings.vision_ms() > 0, request.images_size() > 0);
    EXPECT_GE(timings.total_ms(), timings.first_token_ms());
    const v1::FlopsByPhase& by_phase = result.final->flops_by_phase();
    EXPECT_DOUBLE_EQ(result.final->flops(), by_phase.vision() + by_phase.projector() +
                                                by_phase.prefill() + by_phase.decode());
    const v1::FinishReason reason =
        expected->reason == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH;
    EXPECT_EQ(result.final->finish_reason(), reason);

    grpc::ClientContext context;
    v1::AnswerResponse answer;
    ASSERT_TRUE(stub_->Answer(&context, request, &answer).ok());
    EXPECT_EQ(answer.text(), expected->text);
    EXPECT_EQ(answer.final().usage().prompt_tokens(), usage.prompt_tokens());
  }
}

TEST_F(LlavaServiceTest, SixtyFourConcurrentGreedyRequestsAnswerAsAlone) {
  const std::vector<std::string> questions = {"What is in the picture?", "What colour is the sky?",
                                              "Is there a dog?", "Count the shapes.",
                                              "Describe the scene in detail, please."};
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 64; ++i) {
    const std::string image = i % 3 == 0 ? Photo() : i % 3 == 1 ? Landscape() : "";
    requests.push_back(Question(questions[i % questions.size()], 8 + i % 9, image));
  }
  std::vector<StreamResult> alone;
  for (const auto& r : requests) alone.push_back(Generate(r));
  const int64_t steps_alone = server_->scheduler().Stats().steps;
  std::vector<std::future<StreamResult>> together;
  for (const auto& r : requests) {
    together.push_back(std::async(std::launch::async, [this, r] { return Generate(r); }));
  }
  for (int i = 0; i < 64; ++i) {
    StreamResult result = together[i].get();
    ASSERT_TRUE(alone[i].status.ok()) << i << ": " << alone[i].status.error_message();
    ASSERT_TRUE(result.status.ok()) << i << ": " << result.status.error_message();
    EXPECT_FALSE(alone[i].ids.empty()) << i;
    EXPECT_EQ(result.ids, alone[i].ids) << i;
    EXPECT_EQ(result.text, alone[i].text) << i;
  }
  const SchedulerStats stats = server_->scheduler().Stats();
  EXPECT_EQ(stats.finished, 128);
  EXPECT_LT(stats.steps - steps_alone, steps_alone / 2);  // They shared steps: they were batched.
}

TEST_F(LlavaServiceTest, RealBadImagesGetInvalidArgumentNamingTheProblem) {
  struct Case {
    std::string name;
    std::string bytes;
    std::string mime;
    std::string message;  // A substring of the status message.
  };
  const std::vector<Case> cases = {
      {"truncated JPEG", Photo().substr(0, Photo().size() / 2), "", "truncated JPEG"},
      {"JPEG cut inside its header", Photo().substr(0, 40), "", "JPEG"},
      {"corrupt JPEG", "\xff\xd8\xff" + std::string(400, 'x'), "", "corrupt JPEG"},
      {"truncated PNG", Landscape().substr(0, Landscape().size() / 2), "", "truncated PNG"},
      {"corrupt PNG", Landscape().substr(0, 8) + std::string(400, 'x'), "", "PNG"},
      {"not an image", "hello, I am text", "", "unsupported image format"},
      {"60000x60000 header", testing::PngClaiming(60000, 60000), "", "pixels"},
      {"PNG declared as JPEG", Landscape(), "image/jpeg", "mime_type"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request = Question("What is this?", 8, c.bytes);
    request.mutable_images(0)->set_mime_type(c.mime);
    StreamResult result = Generate(request);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(result.status.error_message(), HasSubstr(c.message)) << c.name;
    EXPECT_FALSE(result.final.has_value()) << c.name;
  }
  EXPECT_EQ(server_->scheduler().Stats().steps, 0);  // No model work for any of them.
  EXPECT_TRUE(Generate(Question("Still there?", 4, Photo())).status.ok());
}

TEST_F(LlavaServiceTest, PromptOverTheContextAndThresholdOnAFullModelAreRefused) {
  const int context = engine_->Info().context_length;
  std::string long_question;
  while (static_cast<int>(long_question.size()) < 8 * context)
    long_question += "red ball green mat ";
  StreamResult too_long = Generate(Question(long_question, 8));
  EXPECT_EQ(too_long.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(too_long.status.error_message(), HasSubstr("shorten the question"));

  StreamResult too_many_new = Generate(Question("What is this?", context, Photo()));
  EXPECT_EQ(too_many_new.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(too_many_new.status.error_message(), HasSubstr("max_new_tokens"));

  v1::GenerateRequest threshold = Question("What is this?", 8, Photo());
  threshold.set_selection_threshold(100);
  StreamResult full_model = Generate(threshold);
  EXPECT_EQ(full_model.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(full_model.status.error_message(), HasSubstr("selection_threshold"));
  EXPECT_EQ(server_->scheduler().Stats().steps, 0);
}

// The tiny FlexAttention checkpoint (paper geometry: 9x9 blocks of 8x8 HR tokens at 1008 px).
class FlexServiceTest : public LlavaServiceTest {
 protected:
  std::string ModelDir() const override { return testing::TinyFlexModelDir(); }
};

TEST_F(FlexServiceTest, SelectionSummaryIsTheEnginesTraceCountedPerBlock) {
  ASSERT_EQ(engine_->Info().mode, "flex");
  std::unique_ptr<Engine> reference = MakeEngine(/*max_sequences=*/1, ModelDir());
  ASSERT_NE(reference, nullptr);
  // 300 x 200: padded to a 300 px square, 50 px bands above and below.
  v1::GenerateRequest request = Question("What is in the picture?", 5, testing::MakePng(300, 200));
  request.mutable_sampling()->set_ignore_eos(true);
  auto direct = testing::GenerateDirect(*reference, ToEngine(request));
  ASSERT_TRUE(direct.ok()) << direct.status().ToString();
  const SelectionTrace& trace = direct->selections;
  ASSERT_EQ(trace.num_steps, 5);
  ASSERT_GT(trace.num_fa_layers, 0);

  StreamResult result = Generate(request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids, direct->token_ids);
  ASSERT_TRUE(result.final.has_value() && result.final->has_selection());
  const v1::SelectionSummary& summary = result.final->selection();
  EXPECT_EQ(summary.grid(), 9);
  EXPECT_EQ(summary.hr_side(), 72);
  EXPECT_EQ(summary.steps(), 5);
  EXPECT_EQ(summary.first_fa_layer(), trace.first_fa_layer);
  EXPECT_EQ(summary.region_x(), 0);
  EXPECT_EQ(summary.region_y(), -50);
  EXPECT_EQ(summary.region_side(), 300);
  ASSERT_EQ(summary.layers_size(), trace.num_fa_layers);
  int64_t selected = 0, blocks_selected = 0;
  for (int layer = 0; layer < trace.num_fa_layers; ++layer) {
    const v1::FaLayerSelection& got = summary.layers(layer);
    ASSERT_EQ(got.block_steps_size(), 81) << layer;
    int64_t layer_blocks = 0;
    for (int block = 0; block < 81; ++block) {
      int steps = 0;
      for (int step = 0; step < trace.num_steps; ++step) {
        steps += trace.masks[(step * trace.num_fa_layers + layer) * 81 + block];
      }
      EXPECT_EQ(got.block_steps(block), static_cast<uint32_t>(steps)) << layer << " " << block;
      layer_blocks += got.block_steps(block);
    }
    // 8 x 8 HR tokens per block: the counts and the token totals agree.
    EXPECT_EQ(got.selected_tokens(), 64 * layer_blocks) << layer;
    selected += got.selected_tokens();
    blocks_selected += layer_blocks;
  }
  EXPECT_GT(blocks_selected, 0);  // The random model selects at the checkpoint's threshold.
  EXPECT_EQ(selected, result.final->usage().selected_hr_tokens());

  // Selection off: the summary is there and empty.
  request.set_selection_threshold(255);
  StreamResult off = Generate(request);
  ASSERT_TRUE(off.status.ok()) << off.status.error_message();
  ASSERT_TRUE(off.final->has_selection());
  EXPECT_EQ(off.final->selection().steps(), 5);
  for (const v1::FaLayerSelection& layer : off.final->selection().layers()) {
    EXPECT_EQ(layer.selected_tokens(), 0);
    for (uint32_t steps : layer.block_steps()) EXPECT_EQ(steps, 0u);
  }

  // No image: no summary.
  StreamResult text_only = Generate(Question("What is a box?", 3));
  ASSERT_TRUE(text_only.status.ok()) << text_only.status.error_message();
  EXPECT_FALSE(text_only.final->has_selection());
}

}  // namespace
}  // namespace flexvqa
