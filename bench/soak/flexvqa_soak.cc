// flexvqa_soak: drives a flexvqa server over loopback for --duration_s with a hostile mix (normal
// streams, unary Answer calls, client cancels, short deadlines, bad inputs, slow readers, and
// client processes SIGKILLed mid-stream), then checks what must hold after any load:
//   - every request ends exactly once with the status its kind allows (none lost or duplicated),
//     an OK stream has exactly one final message, last, that echoes its id and counts its tokens;
//   - the server counted every request once (flexvqa_requests_total grew by the number sent,
//     killed clients' streams included, less at most those cancelled or past their deadline
//     before any response, which may never have reached it);
//   - once idle, nothing is held: flexvqa_requests_running/waiting, the KV-cache and the
//     high-resolution cache memory gauges are 0 and the free KV slots back to their idle value;
//   - memory is flat: once idle, resident memory is within --max_rss_growth_mb of its level before
//     the load (the server hands freed heap back when idle: server/heap.h), and the live heap
//     (flexvqa_heap_in_use_bytes, malloc's count, which allocator retention does not inflate)
//     within --max_heap_growth_mb: a leak fails the second whatever the allocator keeps.
//     Reported: start (before the load), steady state (half-way), max and end.
// With --server_bin it starts the server itself (port 0, --port_file) and stops it with SIGTERM
// (exit status 0 required). Exit status: 0 when every check holds, 1 otherwise (each violation is
// printed), 2 for bad flags. bench/RESULTS.md ("Soak") has the CI and the one-hour commands.
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/soak/soak_load.h"
#include "flexvqa/v1/vqa.grpc.pb.h"

extern char** environ;

namespace flexvqa::soak {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "usage: flexvqa_soak (--server=host:port --metrics=host:port | --server_bin=PATH\n"
    "         [--server_arg=ARG ...]) [--duration_s=S] [--concurrency=C] [--images=a.jpg,b.png]\n"
    "         [--killed_clients_every_s=S] [--max_rss_growth_mb=M] [--max_heap_growth_mb=M]\n"
    "         [--seed=N]\n";

struct Options {
  std::string server, metrics;
  std::string server_bin;
  std::vector<std::string> server_args;
  double duration_s = 120;
  int concurrency = 8;
  std::vector<std::string> images;
  double killed_clients_every_s = 10;
  double max_rss_growth_mb = 96;
  double max_heap_growth_mb = 16;
  uint64_t seed = 1;
  // Child mode (internal): open this many streams against --server, print "ready" after the first
  // token, then wait to be killed.
  int child_streams = 0;
};

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return false;
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    try {
      if (name == "server") {
        o->server = value;
      } else if (name == "metrics") {
        o->metrics = value;
      } else if (name == "server_bin") {
        o->server_bin = value;
      } else if (name == "server_arg") {
        o->server_args.push_back(value);
      } else if (name == "duration_s") {
        o->duration_s = std::stod(value);
      } else if (name == "concurrency") {
        o->concurrency = std::stoi(value);
      } else if (name == "killed_clients_every_s") {
        o->killed_clients_every_s = std::stod(value);
      } else if (name == "max_rss_growth_mb") {
        o->max_rss_growth_mb = std::stod(value);
      } else if (name == "max_heap_growth_mb") {
        o->max_heap_growth_mb = std::stod(value);
      } else if (name == "seed") {
        o->seed = std::stoull(value);
      } else if (name == "child_streams") {
        o->child_streams = std::stoi(value);
      } else if (name == "images") {
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
  const bool external = !o->server.empty() && !o->metrics.empty();
  return (o->child_streams > 0 ? !o->server.empty() : external != !o->server_bin.empty()) &&
         o->duration_s > 0 && o->concurrency > 0;
}

// Waits for a child process to exit, at most `timeout`; its exit status, or -1 on timeout.
int WaitExit(pid_t pid, std::chrono::milliseconds timeout) {
  // The raw system call: glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++.
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return -1;
  pollfd p{pidfd, POLLIN, 0};
  const int ready = poll(&p, 1, static_cast<int>(timeout.count()));
  close(pidfd);
  int status = 0;
  if (ready != 1 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

pid_t Spawn(const std::vector<std::string>& argv, int stdout_fd) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

// The server under test, started with port 0; its ports come from --port_file.
class ServerProcess {
 public:
  bool Start(const Options& o, std::string* grpc_address, std::string* metrics_address) {
    char dir[] = "/tmp/flexvqa_soak_XXXXXX";
    if (mkdtemp(dir) == nullptr) return false;
    dir_ = dir;
    const std::string port_file = dir_ + "/ports";
    std::vector<std::string> argv = {o.server_bin, "--listen_address=127.0.0.1:0",
                                     "--metrics_listen_address=127.0.0.1:0",
                                     "--port_file=" + port_file};
    argv.insert(argv.end(), o.server_args.begin(), o.server_args.end());
    pid_ = Spawn(argv, -1);
    if (pid_ < 0) return false;
    // The port file is the server's only signal that it serves (renamed into place when written).
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(120);
    int grpc_port = 0, metrics_port = 0;
    while (Clock::now() < deadline) {
      std::ifstream in(port_file);
      if (in >> grpc_port >> metrics_port) break;
      if (WaitExit(pid_, std::chrono::milliseconds(50)) != -1) {
        pid_ = -1;
        return false;
      }
    }
    if (grpc_port <= 0 || metrics_port <= 0) return false;
    *grpc_address = "127.0.0.1:" + std::to_string(grpc_port);
    *metrics_address = "127.0.0.1:" + std::to_string(metrics_port);
    return true;
  }
  // SIGTERM, then the exit status (-1 if it did not exit within 60 s; it is then killed).
  int Stop() {
    if (pid_ < 0) return -1;
    kill(pid_, SIGTERM);
    int status = WaitExit(pid_, std::chrono::seconds(60));
    if (status == -1) {
      kill(pid_, SIGKILL);
      WaitExit(pid_, std::chrono::seconds(10));
    }
    pid_ = -1;
    return status;
  }
  ~ServerProcess() {
    if (pid_ >= 0) Stop();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

 private:
  pid_t pid_ = -1;
  std::string dir_;
};

// One child process holding `streams` streams open, SIGKILLed once every stream has reached the
// server (or after 60 s). True when they all had: only then is the server's count of them known.
bool RunKilledClient(const std::string& self, const std::string& server, int streams) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  const pid_t pid =
      Spawn({self, "--server=" + server, "--child_streams=" + std::to_string(streams)}, fds[1]);
  close(fds[1]);
  bool ready = false;
  if (pid >= 0) {
    pollfd p{fds[0], POLLIN, 0};
    char byte = 0;
    // "ready" on stdout, or end of file (the child died), or the bound.
    ready = poll(&p, 1, 60'000) == 1 && read(fds[0], &byte, 1) == 1;
    kill(pid, SIGKILL);
    WaitExit(pid, std::chrono::seconds(10));
  }
  close(fds[0]);
  return ready;
}

int RunChild(const Options& o) {
  auto stub =
      v1::VqaService::NewStub(grpc::CreateChannel(o.server, grpc::InsecureChannelCredentials()));
  // "ready" once every stream has reached the server (its first message, or its end), so that the
  // parent's count of killed streams is exact.
  std::atomic<int> reached{0};
  const auto reach = [&] {
    if (++reached == o.child_streams) {
      std::fputs("ready\n", stdout);
      std::fflush(stdout);
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < o.child_streams; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      v1::GenerateRequest request;
      request.set_request_id("killed-" + std::to_string(getpid()) + "-" + std::to_string(i));
      request.set_question("Describe the image in detail.");
      request.mutable_sampling()->set_max_new_tokens(kLongAnswerTokens);
      request.mutable_sampling()->set_ignore_eos(true);
      auto reader = stub->Generate(&context, request);
      v1::GenerateResponse response;
      bool first = true;
      while (reader->Read(&response)) {
        if (first) reach();
        first = false;
      }
      if (first) reach();
      reader->Finish();
    });
  }
  for (std::thread& t : threads) t.join();
  return 0;
}

// The scraped gauges and counters that the checks read.
struct Scrape {
  bool ok = false;
  double requests_total = 0;  // Generate and Answer, every code.
  double running = 0, waiting = 0, free_slots = 0, kv_bytes = 0, hr_bytes = 0, rss_bytes = 0;
  double heap_bytes = -1;  // -1: the server does not export flexvqa_heap_in_use_bytes.
};

Scrape ScrapeMetrics(const std::string& address) {
  Scrape s;
  const size_t colon = address.rfind(':');
  httplib::Client client(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  const httplib::Result result = client.Get("/metrics");
  if (!result || result->status != 200) return s;
  std::istringstream text(result->body);
  for (std::string line; std::getline(text, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    const std::string name = line.substr(0, line.find_first_of("{ "));
    const double value = std::strtod(line.c_str() + space + 1, nullptr);
    if (name == "flexvqa_requests_total") {
      if (line.find("method=\"Generate\"") != std::string::npos ||
          line.find("method=\"Answer\"") != std::string::npos) {
        s.requests_total += value;
      }
    } else if (name == "flexvqa_requests_running") {
      s.running = value;
    } else if (name == "flexvqa_requests_waiting") {
      s.waiting = value;
    } else if (name == "flexvqa_kv_cache_free_slots") {
      s.free_slots = value;
    } else if (name == "flexvqa_kv_cache_memory_bytes") {
      s.kv_bytes = value;
    } else if (name == "flexvqa_hr_cache_memory_bytes") {
      s.hr_bytes = value;
    } else if (name == "process_resident_memory_bytes") {
      s.rss_bytes = value;
    } else if (name == "flexvqa_heap_in_use_bytes") {
      s.heap_bytes = value;
    }
  }
  s.ok = true;
  return s;
}

// Scrapes until `done` holds or `timeout` passes; *last is the last scrape. False on timeout.
template <typename Done>
bool WaitForMetrics(const std::string& address, Clock::duration timeout, Scrape* last, Done done) {
  const Clock::time_point deadline = Clock::now() + timeout;
  while (true) {
    *last = ScrapeMetrics(address);
    if (last->ok && done(*last)) return true;
    if (Clock::now() >= deadline) return false;
    // Polling: the scrape is the server's only signal of its state.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

bool WarmUp(const std::string& address) {
  auto stub =
      v1::VqaService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateRequest request;
  request.set_question("What is in the picture?");
  request.mutable_sampling()->set_max_new_tokens(2);
  v1::AnswerResponse response;
  const grpc::Status status = stub->Answer(&context, request, &response);
  if (!status.ok()) std::fprintf(stderr, "soak: warm-up: %s\n", status.error_message().c_str());
  return status.ok();
}

bool ReadImages(const std::vector<std::string>& paths, std::vector<std::string>* images) {
  for (const std::string& path : paths) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return false;
    }
    std::ostringstream bytes;
    bytes << file.rdbuf();
    images->push_back(bytes.str());
  }
  return true;
}

double Mb(double bytes) { return bytes / (1 << 20); }

int RunSoak(const Options& o, const std::string& self) {
  std::vector<std::string> images;
  if (!ReadImages(o.images, &images)) return 2;
  ServerProcess server_process;
  std::string grpc_address = o.server, metrics_address = o.metrics;
  if (!o.server_bin.empty() && !server_process.Start(o, &grpc_address, &metrics_address)) {
    std::fprintf(stderr, "soak: the server did not start\n");
    return 1;
  }
  std::printf("soak: server %s, metrics %s, %.0f s, concurrency %d\n", grpc_address.c_str(),
              metrics_address.c_str(), o.duration_s, o.concurrency);
  // One request first, so that the idle gauges (free KV slots) have their idle value.
  const Scrape initial = ScrapeMetrics(metrics_address);
  if (!initial.ok) {
    std::fprintf(stderr, "soak: cannot scrape %s/metrics\n", metrics_address.c_str());
    return 1;
  }
  if (!WarmUp(grpc_address)) return 1;
  Scrape before;
  if (!WaitForMetrics(metrics_address, std::chrono::seconds(30), &before, [&](const Scrape& s) {
        return s.requests_total == initial.requests_total + 1 && s.running == 0;
      })) {
    std::fprintf(stderr, "soak: the warm-up request was not counted, or the server is not idle\n");
    return 1;
  }

  LoadConfig load_config;
  load_config.concurrency = o.concurrency;
  load_config.seed = o.seed;
  load_config.images = std::move(images);
  Load load(grpc_address, load_config);
  load.Start();

  // The main thread: killed clients on their schedule, and RSS samples once a second.
  const Clock::time_point begin = Clock::now();
  const Clock::time_point end = begin + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(o.duration_s));
  // Steady state: half-way (allocator arenas and LibTorch's buffers for every image shape are in
  // use by then); reported, and the end is judged against the start.
  const Clock::time_point half_way = begin + (end - begin) / 2;
  std::vector<std::string> violations;
  // Streams of killed clients: seen by the server before the kill, or not confirmed (the server may
  // count them late, or never if the kill came first).
  int killed_streams = 0, killed_unconfirmed = 0, killed_clients = 0;
  Scrape steady;
  double rss_max = 0;
  Clock::time_point next_kill = begin + std::chrono::seconds(1);
  while (Clock::now() < end) {
    if (o.killed_clients_every_s > 0 && Clock::now() >= next_kill) {
      constexpr int kStreamsPerClient = 3;
      if (RunKilledClient(self, grpc_address, kStreamsPerClient)) {
        killed_streams += kStreamsPerClient;
      } else {
        killed_unconfirmed += kStreamsPerClient;
        violations.push_back("a killed client's streams did not all reach the server in 60 s");
      }
      ++killed_clients;
      next_kill += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(o.killed_clients_every_s));
    }
    // The sampling period (the load runs on gRPC's threads meanwhile), not synchronisation.
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const Scrape s = ScrapeMetrics(metrics_address);
    if (s.ok && !steady.ok && Clock::now() >= half_way) steady = s;
    if (s.ok) rss_max = std::max(rss_max, s.rss_bytes);
  }
  if (!load.StopAndWait(std::chrono::seconds(120))) {
    violations.push_back("requests still in flight 120 s after the load stopped (lost)");
  }
  const LoadReport report = load.Report();
  violations.insert(violations.end(), report.violations.begin(), report.violations.end());

  // Idle: the server must count every request once and hold nothing. The gauges settle once the
  // killed clients' streams are noticed, and resident memory once the idle worker has handed the
  // freed heap back; wait for that, bounded.
  const double rss_limit = before.rss_bytes + o.max_rss_growth_mb * (1 << 20);
  const double expected_total =
      before.requests_total + report.started + killed_streams + killed_unconfirmed;
  const double least_total = expected_total - report.maybe_unseen - killed_unconfirmed;
  Scrape after;
  WaitForMetrics(metrics_address, std::chrono::seconds(60), &after, [&](const Scrape& s) {
    return s.requests_total >= least_total && s.running == 0 && s.waiting == 0 && s.kv_bytes == 0 &&
           s.hr_bytes == 0 && s.free_slots == before.free_slots && s.rss_bytes <= rss_limit;
  });
  char buf[256];
  if (after.requests_total < least_total || after.requests_total > expected_total) {
    std::snprintf(buf, sizeof(buf),
                  "flexvqa_requests_total grew by %.0f; %.0f requests were sent, of which %d may "
                  "never have reached the server",
                  after.requests_total - before.requests_total,
                  expected_total - before.requests_total, report.maybe_unseen + killed_unconfirmed);
    violations.push_back(buf);
  }
  if (after.running != 0 || after.waiting != 0 || after.kv_bytes != 0 || after.hr_bytes != 0 ||
      after.free_slots != before.free_slots) {
    std::snprintf(buf, sizeof(buf),
                  "not idle: running %.0f, waiting %.0f, kv %.0f B, hr cache %.0f B, free slots "
                  "%.0f (idle: %.0f)",
                  after.running, after.waiting, after.kv_bytes, after.hr_bytes, after.free_slots,
                  before.free_slots);
    violations.push_back(buf);
  }
  if (!steady.ok || after.rss_bytes > rss_limit) {
    std::snprintf(buf, sizeof(buf), "RSS once idle %.1f MB above its start (limit %.1f)",
                  Mb(after.rss_bytes - before.rss_bytes), o.max_rss_growth_mb);
    violations.push_back(buf);
  }
  if (before.heap_bytes >= 0 &&
      after.heap_bytes > before.heap_bytes + o.max_heap_growth_mb * (1 << 20)) {
    std::snprintf(buf, sizeof(buf), "live heap once idle %.1f MB above its start (limit %.1f)",
                  Mb(after.heap_bytes - before.heap_bytes), o.max_heap_growth_mb);
    violations.push_back(buf);
  }

  std::printf("soak: %d requests in %.0f s (%.1f/s) + %d streams of %d killed clients\n",
              report.started, std::chrono::duration<double>(Clock::now() - begin).count(),
              report.started / o.duration_s, killed_streams, killed_clients);
  std::printf("%s", report.summary.c_str());
  std::printf(
      "soak: server counted %.0f of %.0f; idle: running %.0f waiting %.0f kv %.0f B hr "
      "%.0f B free slots %.0f/%.0f\n",
      after.requests_total - before.requests_total, expected_total - before.requests_total,
      after.running, after.waiting, after.kv_bytes, after.hr_bytes, after.free_slots,
      before.free_slots);
  std::printf("soak: RSS start %.1f MB, steady (half-way) %.1f MB, max %.1f MB, end %.1f MB\n",
              Mb(before.rss_bytes), Mb(steady.rss_bytes), Mb(rss_max), Mb(after.rss_bytes));
  std::printf("soak: live heap start %.1f MB, steady %.1f MB, end %.1f MB\n", Mb(before.heap_bytes),
              Mb(steady.heap_bytes), Mb(after.heap_bytes));
  if (!o.server_bin.empty()) {
    const int exit_status = server_process.Stop();
    if (exit_status != 0) {
      violations.push_back("server exit status " + std::to_string(exit_status) + " after SIGTERM");
    }
  }
  for (const std::string& v : violations) std::printf("soak: VIOLATION %s\n", v.c_str());
  std::printf("soak: %s\n", violations.empty() ? "PASS" : "FAIL");
  return violations.empty() ? 0 : 1;
}

}  // namespace
}  // namespace flexvqa::soak

int main(int argc, char** argv) {
  flexvqa::soak::Options options;
  if (!flexvqa::soak::Parse(argc, argv, &options)) {
    std::fputs(flexvqa::soak::kUsage, stderr);
    return 2;
  }
  if (options.child_streams > 0) return flexvqa::soak::RunChild(options);
  signal(SIGPIPE, SIG_IGN);
  return flexvqa::soak::RunSoak(options, "/proc/self/exe");
}
