// openai_overhead_bench: the OpenAI endpoint's cost against gRPC's for the same load. One VqaServer
// with both endpoints over the fake engine of tests/server/fake_engine.h (so that the serving path,
// not the model, is what differs; --step_delay_us stands in for a model's step), and the same
// requests (one JPEG, one question, --tokens new tokens, greedy, ignore_eos) sent by --concurrency
// closed-loop clients through each protocol in turn: gRPC Generate (streamed) and Answer, OpenAI
// streamed (SSE) and not (JSON). Prints requests/s and latency per protocol and the ratios, all
// from one run.
//
//   openai_overhead_bench [--requests=400] [--concurrency=8] [--tokens=32] [--step_delay_us=0]
//                         [--image_px=336]
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "server/logging.h"
#include "server/vqa_server.h"
#include "tests/server/fake_engine.h"
#include "tests/server/test_images.h"

namespace flexvqa {
namespace {

using BenchClock = std::chrono::steady_clock;

struct Args {
  int requests = 400;
  int concurrency = 8;
  int tokens = 32;
  int step_delay_us = 0;
  int image_px = 336;
};

struct Figures {
  double seconds = 0;
  std::vector<double> latency_ms;
  int errors = 0;
  double Rps() const { return latency_ms.size() / seconds; }
  double Percentile(double p) {
    std::sort(latency_ms.begin(), latency_ms.end());
    return latency_ms.empty() ? 0 : latency_ms[static_cast<size_t>(p * (latency_ms.size() - 1))];
  }
};

// `one(worker)` sends one request and returns whether it succeeded; `concurrency` workers share
// `requests`.
template <typename MakeWorker>
Figures Run(const Args& args, MakeWorker make_worker) {
  std::atomic<int> next{0};
  std::vector<std::vector<double>> latencies(args.concurrency);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  const auto start = BenchClock::now();
  for (int w = 0; w < args.concurrency; ++w) {
    threads.emplace_back([&, w] {
      auto one = make_worker();
      while (next.fetch_add(1) < args.requests) {
        const auto t0 = BenchClock::now();
        if (!one()) ++errors;
        latencies[w].push_back(
            std::chrono::duration<double, std::milli>(BenchClock::now() - t0).count());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  Figures figures;
  figures.seconds = std::chrono::duration<double>(BenchClock::now() - start).count();
  for (const auto& l : latencies)
    figures.latency_ms.insert(figures.latency_ms.end(), l.begin(), l.end());
  figures.errors = errors;
  return figures;
}

int Main(const Args& args) {
  (void)SetUpLogging(LoggingConfig{"error", false});
  testing::FakeEngineOptions engine_options;
  engine_options.max_sequences = args.concurrency;
  engine_options.step_delay = std::chrono::microseconds(args.step_delay_us);
  engine_options.limits.max_image_bytes = 20 << 20;
  testing::FakeEngine engine(engine_options);
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.openai.listen_address = "127.0.0.1:0";
  options.max_calls_per_client = 1000;
  SchedulerConfig scheduler;
  scheduler.max_running = args.concurrency;
  auto server = VqaServer::Start(&engine, options, scheduler);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::string image = testing::MakeJpeg(args.image_px, args.image_px);
  const std::string question = "What is written on the sign in the picture?";

  v1::GenerateRequest grpc_request;
  grpc_request.set_question(question);
  grpc_request.add_images()->set_data(image);
  grpc_request.mutable_sampling()->set_max_new_tokens(args.tokens);
  grpc_request.mutable_sampling()->set_temperature(0);
  grpc_request.mutable_sampling()->set_ignore_eos(true);
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string((*server)->port()),
                                           grpc::InsecureChannelCredentials(), channel_args);
  auto stub = v1::VqaService::NewStub(channel);
  auto grpc_stream = [&] {
    return [&] {
      grpc::ClientContext context;
      auto reader = stub->Generate(&context, grpc_request);
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
      }
      return reader->Finish().ok();
    };
  };
  auto grpc_unary = [&] {
    return [&] {
      grpc::ClientContext context;
      v1::AnswerResponse response;
      return stub->Answer(&context, grpc_request, &response).ok();
    };
  };

  const nlohmann::json body = {
      {"model", engine.Info().name},
      {"messages",
       {{{"role", "user"},
         {"content",
          {{{"type", "image_url"}, {"image_url", {{"url", testing::DataUrl(image, "image/jpeg")}}}},
           {{"type", "text"}, {"text", question}}}}}}},
      {"temperature", 0},
      {"max_tokens", args.tokens},
      {"ignore_eos", true}};
  nlohmann::json stream_body = body;
  stream_body["stream"] = true;
  const std::string plain_text = body.dump(), stream_text = stream_body.dump();
  const int openai_port = (*server)->openai_port();
  auto openai = [&](const std::string& text) {
    return [&, text] {
      auto client = std::make_shared<httplib::Client>("127.0.0.1", openai_port);
      client->set_keep_alive(true);
      client->set_tcp_nodelay(true);  // As gRPC and OpenAI's SDKs set it.
      return [client, text] {
        auto result = client->Post("/v1/chat/completions", text, "application/json");
        return result && result->status == 200;
      };
    };
  };

  std::printf(
      "fake engine, step delay %d us; %d requests, concurrency %d, %d new tokens, "
      "%dx%d JPEG (%zu bytes, %zu bytes of JSON body)\n",
      args.step_delay_us, args.requests, args.concurrency, args.tokens, args.image_px,
      args.image_px, image.size(), plain_text.size());
  std::printf("%-22s %10s %10s %10s %10s %10s %7s\n", "path", "req/s", "p50_ms", "p90_ms", "p99_ms",
              "max_ms", "errors");
  auto print = [](const char* name, Figures& f) {
    std::printf("%-22s %10.1f %10.2f %10.2f %10.2f %10.2f %7d\n", name, f.Rps(), f.Percentile(0.5),
                f.Percentile(0.9), f.Percentile(0.99), f.Percentile(1.0), f.errors);
  };
  Run(args, grpc_stream);  // Warm-up: connections, allocator.
  Figures g_stream = Run(args, grpc_stream);
  Figures o_stream = Run(args, openai(stream_text));
  Figures g_unary = Run(args, grpc_unary);
  Figures o_unary = Run(args, openai(plain_text));
  print("grpc Generate", g_stream);
  print("openai stream (SSE)", o_stream);
  print("grpc Answer", g_unary);
  print("openai (JSON)", o_unary);
  std::printf("ratio openai/grpc, streamed: throughput %.3f, p50 latency %.3f\n",
              o_stream.Rps() / g_stream.Rps(), o_stream.Percentile(0.5) / g_stream.Percentile(0.5));
  std::printf("ratio openai/grpc, unary:    throughput %.3f, p50 latency %.3f\n",
              o_unary.Rps() / g_unary.Rps(), o_unary.Percentile(0.5) / g_unary.Percentile(0.5));
  (*server)->Shutdown(Clock::now());
  return g_stream.errors + o_stream.errors + g_unary.errors + o_unary.errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace flexvqa

int main(int argc, char** argv) {
  flexvqa::Args args;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    auto value = [a](const char* name) -> const char* {
      const size_t n = std::strlen(name);
      return std::strncmp(a, name, n) == 0 && a[n] == '=' ? a + n + 1 : nullptr;
    };
    if (const char* v = value("--requests")) {
      args.requests = std::atoi(v);
    } else if (const char* v = value("--concurrency")) {
      args.concurrency = std::atoi(v);
    } else if (const char* v = value("--tokens")) {
      args.tokens = std::atoi(v);
    } else if (const char* v = value("--step_delay_us")) {
      args.step_delay_us = std::atoi(v);
    } else if (const char* v = value("--image_px")) {
      args.image_px = std::atoi(v);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a);
      return 2;
    }
  }
  if (args.requests < 1 || args.concurrency < 1 || args.tokens < 1 || args.image_px < 1) {
    std::fprintf(stderr, "--requests, --concurrency, --tokens and --image_px must be >= 1\n");
    return 2;
  }
  return flexvqa::Main(args);
}
