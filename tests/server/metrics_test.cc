// ServerMetrics: known observations appear in the text exposition with the right names, labels and
// values; failures stay out of the phase latencies; the /metrics endpoint answers over HTTP and a
// failed bind is an error, not a crash; and the scheduler over the fake engine (flex mode) feeds
// token, FLOP and batch metrics step by step (they move during a long request) that add up to the
// requests' own final items.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "server/scheduler.h"
#include "tests/server/fake_engine.h"
#include "tests/server/test_images.h"

namespace flexvqa {
namespace {

// Series (name with its labels, as exposed) -> value.
std::map<std::string, double> Parse(const std::string& exposition) {
  std::map<std::string, double> series;
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    series[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return series;
}

double Value(const std::map<std::string, double>& series, const std::string& name) {
  auto it = series.find(name);
  EXPECT_NE(it, series.end()) << "missing series " << name;
  return it == series.end() ? -1 : it->second;
}

ModelInfo FlexInfo() {
  ModelInfo info;
  info.name = "tiny-flex";
  info.mode = "flex";
  info.dtype = "float32";
  info.device = "cpu";
  info.max_sequences = 4;
  return info;
}

TEST(MetricsTest, KnownObservationsAppearInTheExposition) {
  ServerMetrics metrics;
  metrics.SetModel(FlexInfo(), /*max_queued=*/16, /*max_running=*/4);
  StreamItem item;
  item.final = true;
  item.reached_model = true;
  item.usage.prompt_tokens = 120;
  item.usage.image_tokens = 100;
  item.usage.selected_hr_tokens = 640;
  item.usage.generated_tokens = 7;
  item.timings.queue_ms = 3;
  item.timings.preprocess_ms = 2;
  item.timings.vision_ms = 40;
  item.timings.prefill_ms = 20;
  item.timings.first_token_ms = 70;
  item.timings.total_ms = 130;
  item.flops.flops[FlopCount::kPrefill][FlopCount::kAttention] = 1.5e9;
  item.flops.flops[FlopCount::kDecode][FlopCount::kMlp] = 2.5e8;
  item.timings.decode_ms = 60;
  item.reason = FinishReason::kLength;
  metrics.ObserveRequest("Generate", StatusCode::kOk, &item);
  metrics.ObserveRequest("Generate", StatusCode::kOk, &item);
  metrics.ObserveRequest("Answer", StatusCode::kInvalidArgument, nullptr);
  StepUsage step;  // Two prefills of the request above, then a decode step.
  step.prefill_sequences = 3;
  step.prompt_tokens = 240;
  step.image_tokens = 200;
  step.selected_hr_tokens = 1280;
  step.generated_tokens = 2;
  step.flops.flops[FlopCount::kPrefill][FlopCount::kAttention] = 3e9;
  metrics.ObserveStep(step);
  step = StepUsage();
  step.decode_sequences = 4;
  step.generated_tokens = 12;
  step.flops.flops[FlopCount::kDecode][FlopCount::kMlp] = 5e8;
  metrics.ObserveStep(step);
  EngineMemory memory;
  memory.kv_cache_pool_bytes = 1 << 20;
  memory.kv_cache_used_bytes = 1 << 18;
  memory.hr_cache_bytes = 4096;
  metrics.SetMemory(memory);
  metrics.ObserveInterToken(0.012);
  SelectionTrace trace;
  trace.num_fa_layers = 2;
  trace.hr_side = 72;
  trace.num_steps = 1;
  trace.selected_tokens = {2592, 2592};  // Half of 72 * 72 in each layer.
  metrics.ObserveSelection(trace);
  metrics.SetStatsSource([] {
    SchedulerStats stats;
    stats.running = 3;
    stats.queued = 2;
    stats.preparing = 1;
    stats.free_slots = 1;
    stats.draining = true;
    return stats;
  });

  const std::string text = metrics.Serialize();
  const auto s = Parse(text);
  EXPECT_EQ(Value(s,
                  "flexvqa_requests_total{code=\"OK\",method=\"Generate\",mode=\"flex\",protocol="
                  "\"grpc\"}"),
            2);
  EXPECT_EQ(Value(s,
                  "flexvqa_requests_total{code=\"INVALID_ARGUMENT\",method=\"Answer\",mode="
                  "\"flex\",protocol=\"grpc\"}"),
            1);
  EXPECT_EQ(Value(s, "flexvqa_prompt_tokens_total{mode=\"flex\"}"), 240);
  EXPECT_EQ(Value(s, "flexvqa_image_tokens_total{mode=\"flex\"}"), 200);
  EXPECT_EQ(Value(s, "flexvqa_selected_hr_tokens_total{mode=\"flex\"}"), 1280);
  EXPECT_EQ(Value(s, "flexvqa_generated_tokens_total{mode=\"flex\"}"), 14);
  EXPECT_EQ(
      Value(s, "flexvqa_flops_total{component=\"attention\",mode=\"flex\",phase=\"prefill\"}"),
      3e9);
  EXPECT_EQ(Value(s, "flexvqa_flops_total{component=\"mlp\",mode=\"flex\",phase=\"decode\"}"), 5e8);
  EXPECT_EQ(Value(s, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"vision\"}"), 0);
  // Seconds, cumulative buckets: 70 ms falls in le=0.1, not in le=0.05.
  EXPECT_EQ(Value(s, "flexvqa_time_to_first_token_seconds_count"), 2);
  EXPECT_NEAR(Value(s, "flexvqa_time_to_first_token_seconds_sum"), 0.14, 1e-12);
  EXPECT_EQ(Value(s, "flexvqa_time_to_first_token_seconds_bucket{le=\"0.05\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_time_to_first_token_seconds_bucket{le=\"0.1\"}"), 2);
  EXPECT_NEAR(Value(s, "flexvqa_request_prefill_seconds_sum"), 0.04, 1e-12);
  EXPECT_NEAR(Value(s, "flexvqa_request_vision_seconds_sum"), 0.08, 1e-12);
  EXPECT_NEAR(Value(s, "flexvqa_request_queue_seconds_sum"), 0.006, 1e-12);
  EXPECT_NEAR(Value(s, "flexvqa_request_preprocess_seconds_sum"), 0.004, 1e-12);
  EXPECT_NEAR(Value(s, "flexvqa_request_decode_seconds_sum"), 0.12, 1e-12);
  EXPECT_NEAR(Value(s, "flexvqa_request_duration_seconds_sum{finish_reason=\"length\"}"), 0.26,
              1e-12);
  // Not the rejected call, which never reached the scheduler.
  EXPECT_EQ(Value(s, "flexvqa_request_duration_seconds_count{finish_reason=\"length\"}"), 2);
  EXPECT_EQ(Value(s, "flexvqa_request_duration_seconds_count{finish_reason=\"error\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_request_prompt_tokens_bucket{mode=\"flex\",le=\"64\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_request_prompt_tokens_bucket{mode=\"flex\",le=\"128\"}"), 2);
  EXPECT_EQ(Value(s, "flexvqa_request_generation_tokens_bucket{mode=\"flex\",le=\"8\"}"), 2);
  EXPECT_EQ(Value(s, "flexvqa_request_generation_tokens_bucket{mode=\"flex\",le=\"4\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_step_tokens_count"), 2);
  EXPECT_EQ(Value(s, "flexvqa_step_tokens_sum"), 254);
  EXPECT_EQ(Value(s, "flexvqa_step_tokens_bucket{le=\"16\"}"), 1);
  EXPECT_EQ(Value(s, "flexvqa_inter_token_latency_seconds_bucket{le=\"0.015\"}"), 1);
  EXPECT_EQ(Value(s, "flexvqa_inter_token_latency_seconds_bucket{le=\"0.01\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_batch_size_sequences_sum{phase=\"prefill\"}"), 3);
  EXPECT_EQ(Value(s, "flexvqa_batch_size_sequences_bucket{phase=\"decode\",le=\"4\"}"), 1);
  EXPECT_EQ(Value(s, "flexvqa_batch_size_sequences_bucket{phase=\"decode\",le=\"2\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_request_selected_hr_tokens_sum"), 5184);
  EXPECT_EQ(Value(s, "flexvqa_request_selected_hr_ratio_sum"), 0.5);
  EXPECT_EQ(Value(s, "flexvqa_request_selected_hr_ratio_bucket{le=\"0.45\"}"), 0);
  EXPECT_EQ(Value(s, "flexvqa_request_selected_hr_ratio_bucket{le=\"0.5\"}"), 1);
  EXPECT_EQ(Value(s, "flexvqa_requests_running"), 3);
  EXPECT_EQ(Value(s, "flexvqa_requests_waiting"), 3);
  EXPECT_EQ(Value(s, "flexvqa_kv_cache_free_slots"), 1);
  EXPECT_EQ(Value(s, "flexvqa_draining"), 1);
  EXPECT_EQ(Value(s, "flexvqa_max_queued_requests"), 16);
  EXPECT_EQ(Value(s, "flexvqa_max_running_requests"), 4);
  EXPECT_EQ(Value(s, "flexvqa_kv_cache_slots"), 4);
  EXPECT_GT(Value(s, "process_resident_memory_bytes"), 0);
  EXPECT_EQ(s.count("flexvqa_heap_in_use_bytes"), 1u);  // Its value: tests/server/heap_test.cc.
  EXPECT_GT(Value(s, "process_start_time_seconds"), 1.7e9);
  EXPECT_EQ(Value(s, "flexvqa_kv_cache_memory_bytes"), 1 << 18);
  EXPECT_EQ(Value(s, "flexvqa_kv_cache_capacity_bytes"), 1 << 20);
  EXPECT_EQ(Value(s, "flexvqa_kv_cache_usage_ratio"), 0.25);
  EXPECT_EQ(Value(s, "flexvqa_hr_cache_memory_bytes"), 4096);
  EXPECT_EQ(
      Value(
          s,
          "flexvqa_model_info{device=\"cpu\",dtype=\"float32\",mode=\"flex\",model=\"tiny-flex\"}"),
      1);
  EXPECT_NE(text.find("flexvqa_build_info{"), std::string::npos);
  EXPECT_NE(text.find("# TYPE flexvqa_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("# TYPE flexvqa_time_to_first_token_seconds histogram"), std::string::npos);
  metrics.SetStatsSource(nullptr);
  EXPECT_EQ(Value(Parse(metrics.Serialize()), "flexvqa_requests_running"), 3);  // Last value kept.
}

// A failed call counts in flexvqa_request_duration_seconds{finish_reason="error"} (or
// "cancelled") and in no phase latency: a fast failure must not pull the latencies down.
TEST(MetricsTest, FailuresStayOutOfThePhaseLatencies) {
  ServerMetrics metrics;
  metrics.SetModel(FlexInfo(), 16, 4);
  StreamItem failed;
  failed.final = true;
  failed.reached_model = true;
  failed.reason = FinishReason::kError;
  failed.usage.prompt_tokens = 30;
  failed.usage.generated_tokens = 2;
  failed.timings.queue_ms = 1;
  failed.timings.first_token_ms = 5;
  failed.timings.decode_ms = 2;
  failed.timings.total_ms = 8;
  metrics.ObserveRequest("Generate", StatusCode::kResourceExhausted, &failed);
  StreamItem cancelled = failed;
  cancelled.reason = FinishReason::kCancelled;
  metrics.ObserveRequest("Generate", StatusCode::kCancelled, &cancelled);
  StreamItem rejected;  // Expired in the queue: never reached the model.
  rejected.final = true;
  rejected.reason = FinishReason::kError;
  rejected.timings.queue_ms = 30000;
  rejected.timings.total_ms = 30000;
  metrics.ObserveRequest("Answer", StatusCode::kResourceExhausted, &rejected);

  const auto s = Parse(metrics.Serialize());
  EXPECT_EQ(Value(s, "flexvqa_request_duration_seconds_count{finish_reason=\"error\"}"), 2);
  EXPECT_EQ(Value(s, "flexvqa_request_duration_seconds_count{finish_reason=\"cancelled\"}"), 1);
  EXPECT_EQ(Value(s, "flexvqa_request_duration_seconds_count{finish_reason=\"stop\"}"), 0);
  for (const char* name :
       {"flexvqa_request_queue_seconds_count", "flexvqa_request_preprocess_seconds_count",
        "flexvqa_request_prefill_seconds_count", "flexvqa_request_vision_seconds_count",
        "flexvqa_time_to_first_token_seconds_count", "flexvqa_request_decode_seconds_count"}) {
    EXPECT_EQ(Value(s, name), 0) << name;
  }
  // Lengths are not latencies: both calls that reached the model count, the rejected one not.
  EXPECT_EQ(Value(s, "flexvqa_request_prompt_tokens_count{mode=\"flex\"}"), 2);
}

// Every counter ends in _total and every name has the prefix, but for the standard process_*
// names (Prometheus naming conventions).
TEST(MetricsTest, NamesFollowTheConventions) {
  ServerMetrics metrics;
  metrics.SetModel(FlexInfo(), 16, 4);
  std::istringstream in(metrics.Serialize());
  std::string line;
  int families = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) != 0) continue;
    std::istringstream words(line.substr(7));
    std::string name, type;
    words >> name >> type;
    ++families;
    const bool standard =
        name == "process_resident_memory_bytes" || name == "process_start_time_seconds";
    EXPECT_TRUE(standard || name.rfind("flexvqa_", 0) == 0) << name;
    EXPECT_EQ(name.find("flexvqa_process_"), std::string::npos) << name;
    const bool total = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
    EXPECT_EQ(type == "counter", total) << name << " " << type;
  }
  EXPECT_GE(families, 34);
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

TEST(MetricsTest, EndpointServesTheMetricsAndABindFailureIsNotFatal) {
  ServerMetrics metrics;
  MetricsConfig config;
  config.listen_address = "127.0.0.1:0";
  ASSERT_TRUE(metrics.StartEndpoint(config).ok());
  ASSERT_GT(metrics.port(), 0);
  metrics.ObserveRequest("Generate", StatusCode::kResourceExhausted, nullptr);
  const std::string response = HttpGet(metrics.port(), "/metrics");
  EXPECT_NE(response.find("200 OK"), std::string::npos) << response;
  EXPECT_NE(response.find("flexvqa_requests_total{code=\"RESOURCE_EXHAUSTED\",method=\"Generate\""),
            std::string::npos);

  ServerMetrics second;  // The same port again: the bind fails, counting goes on.
  config.listen_address = "127.0.0.1:" + std::to_string(metrics.port());
  const Status status = second.StartEndpoint(config);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_EQ(second.port(), 0);
  second.ObserveRequest("Answer", StatusCode::kOk, nullptr);
  EXPECT_NE(second.Serialize().find("flexvqa_requests_total"), std::string::npos);

  ServerMetrics none;  // No endpoint at all.
  EXPECT_TRUE(none.StartEndpoint(MetricsConfig{""}).ok());
  EXPECT_EQ(none.port(), 0);
}

// The scheduler feeds the metrics: tokens and FLOPs add up to the final items the requests
// received.
TEST(MetricsTest, SchedulerMetricsMatchTheFinalItems) {
  testing::FakeEngineOptions options;
  options.mode = "flex";
  options.max_sequences = 4;
  testing::FakeEngine engine(options);
  ServerMetrics metrics;
  SchedulerConfig config;
  config.max_running = 4;
  config.preprocess_threads = 2;
  metrics.SetModel(engine.Info(), config.max_queued, config.max_running);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<StreamItem> finals;
  {
    Scheduler scheduler(&engine, config, &metrics);
    for (int i = 0; i < 6; ++i) {
      auto submit = std::make_unique<SubmitRequest>();
      submit->request.turns.push_back({ChatTurn::Role::kUser, "question " + std::to_string(i)});
      submit->request.sampling.max_new_tokens = 5 + i;
      submit->request.sampling.ignore_eos = true;
      if (i % 2 == 0) submit->request.image = ImageInput{testing::MakePng(32, 32), "image/png"};
      submit->on_item = [&](StreamItem item) {
        if (!item.final) return;
        metrics.ObserveRequest("Generate", item.status.code(), &item);
        std::lock_guard<std::mutex> lock(mu);
        finals.push_back(std::move(item));
        cv.notify_all();
      };
      ASSERT_TRUE(scheduler.Submit(submit).ok());
    }
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return finals.size() == 6; }));
  }
  double prompt = 0, image = 0, generated = 0, selected = 0, prefill_flops = 0, decode_flops = 0,
         vision_flops = 0;
  for (const StreamItem& item : finals) {
    ASSERT_TRUE(item.status.ok()) << item.status.ToString();
    prompt += item.usage.prompt_tokens;
    image += item.usage.image_tokens;
    generated += item.usage.generated_tokens;
    selected += item.usage.selected_hr_tokens;
    vision_flops += item.flops.flops[FlopCount::kVision][FlopCount::kOther];
    prefill_flops += item.flops.flops[FlopCount::kPrefill][FlopCount::kOther];
    decode_flops += item.flops.flops[FlopCount::kDecode][FlopCount::kOther];
  }
  EXPECT_EQ(generated, 5 + 6 + 7 + 8 + 9 + 10);
  EXPECT_GT(selected, 0);
  EXPECT_GT(decode_flops, 0);
  const auto s = Parse(metrics.Serialize());
  EXPECT_EQ(Value(s,
                  "flexvqa_requests_total{code=\"OK\",method=\"Generate\",mode=\"flex\",protocol="
                  "\"grpc\"}"),
            6);
  EXPECT_EQ(Value(s, "flexvqa_prompt_tokens_total{mode=\"flex\"}"), prompt);
  EXPECT_EQ(Value(s, "flexvqa_image_tokens_total{mode=\"flex\"}"), image);
  EXPECT_EQ(Value(s, "flexvqa_generated_tokens_total{mode=\"flex\"}"), generated);
  EXPECT_EQ(Value(s, "flexvqa_selected_hr_tokens_total{mode=\"flex\"}"), selected);
  EXPECT_EQ(Value(s, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"vision\"}"),
            vision_flops);
  EXPECT_EQ(Value(s, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"prefill\"}"),
            prefill_flops);
  EXPECT_EQ(Value(s, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"decode\"}"),
            decode_flops);
  // Every generated token after a sequence's first is one inter-token gap.
  EXPECT_EQ(Value(s, "flexvqa_inter_token_latency_seconds_count"), generated - 6);
  // Every sequence was prefilled once and decoded once per token after its first.
  EXPECT_EQ(Value(s, "flexvqa_batch_size_sequences_sum{phase=\"prefill\"}"), 6);
  EXPECT_EQ(Value(s, "flexvqa_batch_size_sequences_sum{phase=\"decode\"}"), generated - 6);
  EXPECT_EQ(Value(s, "flexvqa_time_to_first_token_seconds_count"), 6);
}

// Tokens and FLOPs are counted per worker step: in the middle of one long request the counters
// already hold every earlier step's tokens and FLOPs (before, they stayed flat until it finished).
TEST(MetricsTest, CountersAdvanceDuringALongRequest) {
  testing::FakeEngineOptions options;
  options.mode = "flex";
  testing::FakeEngine engine(options);
  ServerMetrics metrics;
  SchedulerConfig config;
  metrics.SetModel(engine.Info(), config.max_queued, config.max_running);
  constexpr int kTokens = 40;
  constexpr int kSnapshotAt = 20;  // Taken when the 20th token arrives (in its step, unpublished).
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, double> during;
  std::optional<StreamItem> final_item;
  int deltas = 0;
  {
    Scheduler scheduler(&engine, config, &metrics);
    auto submit = std::make_unique<SubmitRequest>();
    submit->request.turns.push_back({ChatTurn::Role::kUser, "a long answer, please"});
    submit->request.sampling.max_new_tokens = kTokens;
    submit->request.sampling.ignore_eos = true;
    submit->on_item = [&](StreamItem item) {  // The worker thread, inside the token's step.
      std::lock_guard<std::mutex> lock(mu);
      if (!item.final) {
        if (++deltas == kSnapshotAt) during = Parse(metrics.Serialize());
        return;
      }
      final_item = std::move(item);
      cv.notify_all();
    };
    ASSERT_TRUE(scheduler.Submit(submit).ok());
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, std::chrono::seconds(30), [&] { return final_item.has_value(); }));
  }
  ASSERT_TRUE(final_item->status.ok()) << final_item->status.ToString();
  ASSERT_EQ(final_item->usage.generated_tokens, kTokens);
  const double prompt = final_item->usage.prompt_tokens;
  // Step 1 prefilled and made token 1; steps 2..19 decoded one token each.
  EXPECT_EQ(Value(during, "flexvqa_generated_tokens_total{mode=\"flex\"}"), kSnapshotAt - 1);
  EXPECT_EQ(Value(during, "flexvqa_prompt_tokens_total{mode=\"flex\"}"), prompt);
  EXPECT_EQ(
      Value(during, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"prefill\"}"),
      testing::kFakePrefillFlopsPerToken * prompt);
  EXPECT_EQ(
      Value(during, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"decode\"}"),
      testing::kFakeDecodeFlopsPerStep * (kSnapshotAt - 2));
  EXPECT_EQ(Value(during, "flexvqa_step_tokens_sum"), prompt + kSnapshotAt - 1);
  EXPECT_EQ(Value(during, "flexvqa_request_duration_seconds_count{finish_reason=\"length\"}"), 0);
  const auto after = Parse(metrics.Serialize());
  EXPECT_EQ(Value(after, "flexvqa_generated_tokens_total{mode=\"flex\"}"), kTokens);
  EXPECT_EQ(Value(after, "flexvqa_flops_total{component=\"other\",mode=\"flex\",phase=\"decode\"}"),
            final_item->flops.flops[FlopCount::kDecode][FlopCount::kOther]);
}

}  // namespace
}  // namespace flexvqa
