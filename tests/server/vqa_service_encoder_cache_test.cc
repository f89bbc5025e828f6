// The encoder cache through the service, over real gRPC on 127.0.0.1 with the real LLaVA engine on
// the tiny checkpoint: the second turn of a conversation about one image reports a cache hit, no
// vision or projector FLOPs and vision_ms 0, and streams the tokens a server without the cache
// streams; the hit/miss counter and the bytes gauge of /metrics follow.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "model/engine.h"
#include "server/metrics.h"
#include "server/vqa_server.h"
#include "tests/server/stream_reader.h"
#include "tests/support/tiny_model.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

using namespace std::chrono_literals;

// One engine behind one server on a free loopback port.
struct Served {
  explicit Served(int64_t cache_bytes) {
    EngineOptions options;
    options.model_dir = testing::TinyModelDir();
    options.max_sequences = 2;
    options.encoder_cache_bytes = cache_bytes;
    auto created = CreateLlavaEngine(options);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    if (!created.ok()) return;
    engine = std::move(*created);
    ServerOptions server_options;
    server_options.listen_address = "127.0.0.1:0";
    auto started = VqaServer::Start(engine.get(), server_options, SchedulerConfig(), &metrics);
    EXPECT_TRUE(started.ok()) << started.status().ToString();
    if (!started.ok()) return;
    server = std::move(*started);
    stub = v1::VqaService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server->port()), grpc::InsecureChannelCredentials()));
  }
  ~Served() {
    server.reset();
    engine.reset();
  }

  testing::StreamResult Generate(const v1::GenerateRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    return testing::ReadGenerateStream(*stub, &context, request);
  }

  // The /metrics series `name` (with its labels as exposed); -1 when absent.
  double Metric(const std::string& name) const {
    std::istringstream in(metrics.Serialize());
    std::string line;
    while (std::getline(in, line)) {
      const size_t space = line.rfind(' ');
      if (line[0] != '#' && line.substr(0, space) == name) return std::stod(line.substr(space + 1));
    }
    return -1;
  }

  ServerMetrics metrics;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<VqaServer> server;
  std::unique_ptr<v1::VqaService::Stub> stub;
};

v1::GenerateRequest Conversation(const std::string& image, const std::vector<std::string>& turns) {
  v1::GenerateRequest request;
  request.add_images()->set_data(image);
  for (size_t i = 0; i < turns.size(); ++i) {
    v1::ChatTurn* turn = request.add_turns();
    turn->set_role(i % 2 == 0 ? v1::ChatTurn::ROLE_USER : v1::ChatTurn::ROLE_ASSISTANT);
    turn->set_text(turns[i]);
  }
  request.mutable_sampling()->set_max_new_tokens(8);
  return request;
}

TEST(EncoderCacheServiceTest, ASecondTurnCostsNoVisionFlopsAndAnswersAsWithoutTheCache) {
  Served cached(16 << 20);
  Served uncached(0);
  ASSERT_TRUE(cached.stub && uncached.stub);
  const std::string photo = testing::ReadSourceFile("tests/fixtures/preprocess/photo_64x48.jpg");
  const v1::GenerateRequest first = Conversation(photo, {"What is in the picture?"});

  const testing::StreamResult first_on = cached.Generate(first);
  const testing::StreamResult first_off = uncached.Generate(first);
  ASSERT_TRUE(first_on.status.ok()) << first_on.status.error_message();
  ASSERT_TRUE(first_off.status.ok()) << first_off.status.error_message();
  ASSERT_TRUE(first_on.final && first_off.final);
  EXPECT_FALSE(first_on.final->usage().encoder_cache_hit());
  EXPECT_GT(first_on.final->flops_by_phase().vision(), 0);
  EXPECT_GT(first_on.final->timings().vision_ms(), 0);
  EXPECT_EQ(first_on.ids, first_off.ids);

  const v1::GenerateRequest second =
      Conversation(photo, {"What is in the picture?", first_off.text, "What colour is it?"});
  const testing::StreamResult second_on = cached.Generate(second);
  const testing::StreamResult second_off = uncached.Generate(second);
  ASSERT_TRUE(second_on.status.ok()) << second_on.status.error_message();
  ASSERT_TRUE(second_off.status.ok()) << second_off.status.error_message();
  ASSERT_TRUE(second_on.final && second_off.final);
  EXPECT_TRUE(second_on.final->usage().encoder_cache_hit());
  EXPECT_EQ(second_on.final->flops_by_phase().vision(), 0);
  EXPECT_EQ(second_on.final->flops_by_phase().projector(), 0);
  EXPECT_EQ(second_on.final->timings().vision_ms(), 0);
  EXPECT_FALSE(second_off.final->usage().encoder_cache_hit());
  EXPECT_GT(second_off.final->flops_by_phase().vision(), 0);
  EXPECT_EQ(second_on.final->flops_by_phase().prefill(),
            second_off.final->flops_by_phase().prefill());
  EXPECT_FALSE(second_on.ids.empty());
  EXPECT_EQ(second_on.ids, second_off.ids);
  EXPECT_EQ(second_on.text, second_off.text);

  EXPECT_EQ(cached.Metric("flexvqa_encoder_cache_lookups_total{result=\"hit\"}"), 1);
  EXPECT_EQ(cached.Metric("flexvqa_encoder_cache_lookups_total{result=\"miss\"}"), 1);
  EXPECT_EQ(uncached.Metric("flexvqa_encoder_cache_lookups_total{result=\"hit\"}"), 0);
  EXPECT_EQ(uncached.Metric("flexvqa_encoder_cache_lookups_total{result=\"miss\"}"), 0);
  // One entry: the projector's [image tokens, hidden] fp32 rows.
  const double entry = static_cast<double>(cached.engine->Info().num_image_tokens) *
                       TinyLlavaOptions().hidden_size * sizeof(float);
  EXPECT_EQ(cached.Metric("flexvqa_encoder_cache_memory_bytes"), entry);
  EXPECT_EQ(uncached.Metric("flexvqa_encoder_cache_memory_bytes"), 0);
}

}  // namespace
}  // namespace flexvqa
