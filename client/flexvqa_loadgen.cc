// flexvqa_loadgen: load generator for a flexvqa server. Open loop (--rate: Poisson arrivals,
// requests start on schedule whatever the server does) or closed loop (--concurrency: that many
// requests in flight, each finished one starts the next). Bounded by --requests and --duration_s,
// whichever ends first; a mix of --images (comma-separated JPEG/PNG paths, or none) and prompts
// (--prompts file, one per line, or a built-in list), drawn round-robin. Prints requests/s,
// tokens/s, TTFT, inter-token latency and end-to-end latency percentiles (p50/p90/p99), and errors
// by status code; --json for one JSON object. Streams use gRPC's callback client API, so thousands
// can be in flight from a few threads. TLS and tokens: client/channel_security.h's flags.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/channel_security.h"
#include "client/grpc_status_name.h"
#include "flexvqa/v1/vqa.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using flexvqa::v1::GenerateRequest;
using flexvqa::v1::GenerateResponse;

constexpr char kUsage[] =
    "usage: flexvqa_loadgen [--server=host:port] (--rate=R | --concurrency=C) [--requests=N]\n"
    "         [--duration_s=S] [--images=a.jpg,b.png] [--prompts=FILE] [--max_new_tokens=N]\n"
    "         [--temperature=T] [--ignore_eos] [--timeout_s=S] [--seed=N] [--json]\n";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Options {
  std::string server = "localhost:50051";
  double rate = 0;
  int concurrency = 0;
  int requests = 100;
  double duration_s = 60;
  std::vector<std::string> images;
  std::string prompts_file;
  int max_new_tokens = 64;
  float temperature = 0;
  bool ignore_eos = false;
  double timeout_s = 300;
  uint64_t seed = 1;
  bool json = false;
  flexvqa::client::ChannelSecurity security;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // From `security`, in main.
};

// Everything measured, guarded by mu.
struct Results {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  int started = 0;
  int64_t tokens = 0;
  std::vector<double> ttft_ms, itl_ms, latency_ms;
  std::map<std::string, int> status_counts;
};

class Generator;

// One streamed request: records TTFT, per-token gaps and its status, then tells the generator.
class Call : public grpc::ClientReadReactor<GenerateResponse> {
 public:
  Call(Generator* generator, const GenerateRequest& request, const Options& options);
  void Start(flexvqa::v1::VqaService::Stub* stub);
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  Generator* generator_;
  grpc::ClientContext context_;
  GenerateRequest request_;
  GenerateResponse response_;
  Clock::time_point start_, last_;
  bool got_first_ = false;
  int tokens_ = 0;
  double ttft_ms_ = 0;
  std::vector<double> gaps_ms_;
};

class Generator {
 public:
  Generator(const Options& options, std::vector<GenerateRequest> mix)
      : options_(options), mix_(std::move(mix)) {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    stub_ = flexvqa::v1::VqaService::NewStub(
        grpc::CreateCustomChannel(options.server, options.credentials, args));
  }

  void Run() {
    begin_ = Clock::now();
    deadline_ = begin_ + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(options_.duration_s));
    if (options_.rate > 0) {
      RunOpenLoop();
    } else {
      for (int i = 0; i < options_.concurrency; ++i) MaybeStartNext();
    }
    std::unique_lock<std::mutex> lock(results_.mu);
    results_.cv.wait(lock, [&] { return results_.in_flight == 0 && finished_starting_; });
    end_ = Clock::now();
  }

  void Record(int tokens, double ttft_ms, const std::vector<double>& gaps, double latency_ms,
              const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(results_.mu);
      results_.status_counts[flexvqa::client::GrpcCodeName(status.error_code())]++;
      if (status.ok()) {
        results_.tokens += tokens;
        if (tokens > 0) results_.ttft_ms.push_back(ttft_ms);
        results_.itl_ms.insert(results_.itl_ms.end(), gaps.begin(), gaps.end());
        results_.latency_ms.push_back(latency_ms);
      }
    }
    if (options_.rate <= 0)
      MaybeStartNext();  // Closed loop: the next starts before this one leaves.
    std::lock_guard<std::mutex> lock(results_.mu);
    --results_.in_flight;
    results_.cv.notify_all();  // Under the lock: Run may destroy the generator right after.
  }

  void Report() const;

 private:
  // Starts the next request if the budget allows; false when done starting.
  bool MaybeStartNext() {
    Call* call = nullptr;
    {
      std::lock_guard<std::mutex> lock(results_.mu);
      if (results_.started >= options_.requests || Clock::now() >= deadline_) {
        finished_starting_ = true;
        results_.cv.notify_all();
        return false;
      }
      const GenerateRequest& request = mix_[results_.started % mix_.size()];
      ++results_.started;
      ++results_.in_flight;
      call = new Call(this, request, options_);  // Deletes itself in OnDone.
    }
    call->Start(stub_.get());
    return true;
  }

  void RunOpenLoop() {
    std::mt19937_64 rng(options_.seed);
    std::exponential_distribution<double> gap(options_.rate);
    Clock::time_point next = Clock::now();
    while (true) {
      std::this_thread::sleep_until(next);  // The arrival schedule itself, not synchronisation.
      if (!MaybeStartNext()) break;
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
  }

  const Options options_;
  const std::vector<GenerateRequest> mix_;
  std::unique_ptr<flexvqa::v1::VqaService::Stub> stub_;
  mutable Results results_;
  bool finished_starting_ = false;  // Guarded by results_.mu.
  Clock::time_point begin_, end_, deadline_;
};

Call::Call(Generator* generator, const GenerateRequest& request, const Options& options)
    : generator_(generator), request_(request) {
  context_.set_deadline(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(
                            std::chrono::duration<double>(options.timeout_s)));
  flexvqa::client::AddAuth(options.security, &context_);
}

void Call::Start(flexvqa::v1::VqaService::Stub* stub) {
  start_ = last_ = Clock::now();
  stub->async()->Generate(&context_, &request_, this);
  StartRead(&response_);
  StartCall();
}

void Call::OnReadDone(bool ok) {
  if (!ok) return;  // OnDone follows.
  if (response_.has_delta() && response_.delta().token_ids_size() > 0) {
    const Clock::time_point now = Clock::now();
    const int n = response_.delta().token_ids_size();
    if (!got_first_) {
      got_first_ = true;
      ttft_ms_ = Ms(now - start_);
      // Tokens beyond the first in the same message arrived together: gap 0 each.
      for (int i = 1; i < n; ++i) gaps_ms_.push_back(0);
    } else {
      // A merged delta of n tokens spreads its gap over them.
      for (int i = 0; i < n; ++i) gaps_ms_.push_back(Ms(now - last_) / n);
    }
    last_ = now;
    tokens_ += n;
  }
  StartRead(&response_);
}

void Call::OnDone(const grpc::Status& status) {
  generator_->Record(tokens_, ttft_ms_, gaps_ms_, Ms(Clock::now() - start_), status);
  delete this;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}

void Generator::Report() const {
  std::lock_guard<std::mutex> lock(results_.mu);
  const double seconds = std::chrono::duration<double>(end_ - begin_).count();
  const int ok = results_.status_counts.count("OK") ? results_.status_counts.at("OK") : 0;
  auto triple = [](const std::vector<double>& v) {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%.2f/%.2f/%.2f", Percentile(v, 50), Percentile(v, 90),
                  Percentile(v, 99));
    return std::string(buf);
  };
  auto json_triple = [](const std::vector<double>& v) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f}", Percentile(v, 50),
                  Percentile(v, 90), Percentile(v, 99));
    return std::string(buf);
  };
  std::ostringstream errors;
  bool first = true;
  for (const auto& [code, count] : results_.status_counts) {
    if (code == "OK") continue;
    errors << (first ? "" : (options_.json ? "," : " "))
           << (options_.json ? "\"" + code + "\":" : code + "=") << count;
    first = false;
  }
  const std::string mode = options_.rate > 0
                               ? "open-loop " + std::to_string(options_.rate) + " req/s"
                               : "closed-loop concurrency " + std::to_string(options_.concurrency);
  if (options_.json) {
    std::printf(
        "{\"mode\":\"%s\",\"requests\":%d,\"ok\":%d,\"seconds\":%.3f,\"requests_per_s\":%.3f,"
        "\"tokens_per_s\":%.3f,\"ttft_ms\":%s,\"itl_ms\":%s,\"latency_ms\":%s,\"errors\":{%s}}\n",
        mode.c_str(), results_.started, ok, seconds, ok / seconds, results_.tokens / seconds,
        json_triple(results_.ttft_ms).c_str(), json_triple(results_.itl_ms).c_str(),
        json_triple(results_.latency_ms).c_str(), errors.str().c_str());
    return;
  }
  std::printf("%s against %s: %d requests in %.2f s\n", mode.c_str(), options_.server.c_str(),
              results_.started, seconds);
  std::printf("  throughput     %.2f requests/s (ok), %.1f tokens/s\n", ok / seconds,
              results_.tokens / seconds);
  std::printf("  TTFT ms        p50/p90/p99 %s\n", triple(results_.ttft_ms).c_str());
  std::printf("  inter-token ms p50/p90/p99 %s\n", triple(results_.itl_ms).c_str());
  std::printf("  latency ms     p50/p90/p99 %s\n", triple(results_.latency_ms).c_str());
  std::printf("  errors         %s\n", first ? "none" : errors.str().c_str());
}

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0) return false;
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    try {
      if (flexvqa::client::ParseSecurityFlag(name, value, &o->security))
        continue;
      else if (name == "server")
        o->server = value;
      else if (name == "rate")
        o->rate = std::stod(value);
      else if (name == "concurrency")
        o->concurrency = std::stoi(value);
      else if (name == "requests")
        o->requests = std::stoi(value);
      else if (name == "duration_s")
        o->duration_s = std::stod(value);
      else if (name == "prompts")
        o->prompts_file = value;
      else if (name == "max_new_tokens")
        o->max_new_tokens = std::stoi(value);
      else if (name == "temperature")
        o->temperature = std::stof(value);
      else if (name == "ignore_eos")
        o->ignore_eos = true;
      else if (name == "timeout_s")
        o->timeout_s = std::stod(value);
      else if (name == "seed")
        o->seed = std::stoull(value);
      else if (name == "json")
        o->json = true;
      else if (name == "images") {
        std::stringstream list(value);
        for (std::string path; std::getline(list, path, ',');) {
          if (!path.empty()) o->images.push_back(path);
        }
      } else {
        return false;
      }
    } catch (const std::exception&) {
      return false;
    }
  }
  return (o->rate > 0) != (o->concurrency > 0) && o->requests > 0 && o->duration_s > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!Parse(argc, argv, &options)) {
    std::fputs(kUsage, stderr);
    std::fputs(flexvqa::client::kSecurityUsage, stderr);
    return 2;
  }
  std::string error;
  options.credentials = flexvqa::client::MakeCredentials(&options.security, &error);
  if (!options.credentials) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  std::vector<std::string> prompts = {"What is in the picture?", "Describe the image in detail.",
                                      "What colour is the largest object?",
                                      "How many people are there?", "Is it day or night?"};
  if (!options.prompts_file.empty()) {
    std::ifstream file(options.prompts_file);
    prompts.clear();
    for (std::string line; std::getline(file, line);) {
      if (!line.empty()) prompts.push_back(line);
    }
    if (prompts.empty()) {
      std::fprintf(stderr, "no prompts in %s\n", options.prompts_file.c_str());
      return 2;
    }
  }
  std::vector<std::string> images;
  for (const std::string& path : options.images) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 2;
    }
    std::ostringstream bytes;
    bytes << file.rdbuf();
    images.push_back(bytes.str());
  }
  // The mix: every prompt with every image (or none), in a fixed order.
  std::vector<GenerateRequest> mix;
  const size_t variants = std::max<size_t>(1, images.size());
  for (size_t i = 0; i < prompts.size() * variants; ++i) {
    GenerateRequest request;
    request.set_question(prompts[i % prompts.size()]);
    if (!images.empty()) request.add_images()->set_data(images[i % images.size()]);
    request.mutable_sampling()->set_max_new_tokens(options.max_new_tokens);
    request.mutable_sampling()->set_temperature(options.temperature);
    request.mutable_sampling()->set_seed(options.seed + i);
    request.mutable_sampling()->set_ignore_eos(options.ignore_eos);
    mix.push_back(std::move(request));
  }
  Generator generator(options, std::move(mix));
  generator.Run();
  generator.Report();
  return 0;
}
