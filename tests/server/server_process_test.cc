// The server as a process (flexvqa_fake_server: the real main over the fake engine): SIGTERM drains
// (health NOT_SERVING, new calls UNAVAILABLE, the running stream completes) and the process exits
// 0; past the drain time the rest ends UNAVAILABLE, still exit 0. Issue 11: SIGHUP drains too; a
// second server on a taken port fails to start; a listener that file-descriptor exhaustion stopped
// turns health NOT_SERVING (self-probe) and the log says why.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

extern char** environ;

namespace flexvqa {
namespace {

using namespace std::chrono_literals;
using Health = grpc::health::v1::HealthCheckResponse;

class ServerProcess {
 public:
  // `max_files` > 0: started under `ulimit -n max_files` (soft and hard: it cannot raise it).
  explicit ServerProcess(std::vector<std::string> flags, int max_files = 0) {
    static int count = 0;
    const std::string stem = ::testing::TempDir() + "/fake_server_" + std::to_string(getpid()) +
                             "_" + std::to_string(count++);
    port_file_ = stem + ".port";
    log_file_ = stem + ".log";
    std::remove(port_file_.c_str());
    std::vector<std::string> args = {FAKE_SERVER_PATH, "--port_file=" + port_file_};
    args.insert(args.end(), flags.begin(), flags.end());
    if (max_files > 0) {
      args.insert(
          args.begin(),
          {"/bin/sh", "-c", "ulimit -n " + std::to_string(max_files) + " && exec \"$@\"", "sh"});
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::remove(port_file_.c_str());
    std::remove(log_file_.c_str());
  }
  std::string Log() const {
    std::ifstream file(log_file_);
    return std::string(std::istreambuf_iterator<char>(file), {});
  }
  // The process must start and bind: polled, as nothing else can tell.
  int WaitForPort() {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      int port = 0;
      if (std::ifstream(port_file_) >> port && port > 0) return port;
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }
  void Signal(int signal) { kill(pid_, signal); }
  // The exit code, or -1 when the process is still running after 60 s (polled: waitpid has no
  // timeout).
  int WaitExit() {
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(5ms);
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  std::string port_file_;
  std::string log_file_;
};

v1::GenerateRequest LongRequest(int tokens) {
  v1::GenerateRequest request;
  request.set_question("tell me everything");
  request.mutable_sampling()->set_max_new_tokens(tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

struct Client {
  // A channel of its own (a local subchannel pool): its connection is never shared with another.
  explicit Client(int port)
      : channel(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                          grpc::InsecureChannelCredentials(), LocalPool())),
        stub(v1::VqaService::NewStub(channel)),
        health(grpc::health::v1::Health::NewStub(channel)) {}
  static grpc::ChannelArguments LocalPool() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return args;
  }
  Health::ServingStatus Check(std::chrono::milliseconds timeout = 5s) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    Health response;
    if (!health->Check(&context, {}, &response).ok()) return Health::UNKNOWN;
    return response.status();
  }
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::VqaService::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
};

// Reads a stream to its end; `first` is set once the first delta arrived.
std::pair<grpc::Status, int> ReadAll(Client& client, const v1::GenerateRequest& request,
                                     std::promise<void>* first) {
  grpc::ClientContext context;
  auto reader = client.stub->Generate(&context, request);
  v1::GenerateResponse response;
  int tokens = 0;
  bool signalled = false;
  while (reader->Read(&response)) {
    tokens += response.delta().token_ids_size();
    if (!signalled) first->set_value(), signalled = true;
  }
  if (!signalled) first->set_value();
  return {reader->Finish(), tokens};
}

TEST(ServerProcessTest, SigtermDrainsThenExitsZero) {
  ServerProcess server({"--drain_ms=30000", "--max_new_tokens=4000"});
  const int port = server.WaitForPort();
  ASSERT_GT(port, 0);
  Client client(port);
  EXPECT_EQ(client.Check(), Health::SERVING);

  std::promise<void> first;
  auto stream =
      std::async(std::launch::async, [&] { return ReadAll(client, LongRequest(3000), &first); });
  first.get_future().wait();
  server.Signal(SIGTERM);
  // The signal is asynchronous: poll the health status the drain sets first.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (client.Check() != Health::NOT_SERVING && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(client.Check(), Health::NOT_SERVING);
  grpc::ClientContext context;
  v1::AnswerResponse answer;
  EXPECT_EQ(client.stub->Answer(&context, LongRequest(4), &answer).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  auto [status, tokens] = stream.get();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 3000);  // The running request finished.
  EXPECT_EQ(server.WaitExit(), 0);
}

TEST(ServerProcessTest, PastTheDrainTimeRunningRequestsEndUnavailable) {
  ServerProcess server({"--drain_ms=100", "--max_new_tokens=4000"});
  const int port = server.WaitForPort();
  ASSERT_GT(port, 0);
  Client client(port);
  std::promise<void> first;
  auto stream =
      std::async(std::launch::async, [&] { return ReadAll(client, LongRequest(4000), &first); });
  first.get_future().wait();
  server.Signal(SIGINT);
  auto [status, tokens] = stream.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(tokens, 4000);
  EXPECT_EQ(server.WaitExit(), 0);
}

// A terminal hang-up used to kill the process with its streams (24 reset, no final message).
TEST(ServerProcessTest, SighupDrainsLikeSigterm) {
  ServerProcess server({"--drain_ms=30000", "--max_new_tokens=4000"});
  const int port = server.WaitForPort();
  ASSERT_GT(port, 0);
  Client client(port);
  std::promise<void> first;
  auto stream =
      std::async(std::launch::async, [&] { return ReadAll(client, LongRequest(2000), &first); });
  first.get_future().wait();
  server.Signal(SIGHUP);
  auto [status, tokens] = stream.get();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 2000);
  EXPECT_EQ(server.WaitExit(), 0);
  EXPECT_NE(server.Log().find("Hangup: draining"), std::string::npos) << server.Log();
}

// With SO_REUSEPORT a second process bound the same port and took new connections while the real
// server still reported serving.
TEST(ServerProcessTest, ASecondServerOnTheSamePortFailsToStart) {
  ServerProcess first({});
  const int port = first.WaitForPort();
  ASSERT_GT(port, 0);
  ServerProcess second({"--listen_address=127.0.0.1:" + std::to_string(port)});
  EXPECT_EQ(second.WaitExit(), 1);
  EXPECT_NE(second.Log().find("cannot listen on 127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << second.Log();
  EXPECT_EQ(Client(port).Check(), Health::SERVING);
}

// Idle connections past the file-descriptor limit made gRPC 1.51 log "Failed accept4: Too many
// open files" and stop accepting for good, while the process looked alive (issue 11, finding 1).
// Now the server's own listener (server/connection_gate.h) caps open connections below what the
// limit allows (24 under `ulimit -n 128`, ConnectionCapFor) and closes the excess as it arrives:
// the listener keeps accepting, health stays SERVING, and a new client gets in once the flood
// has left. Loopback, 200 connections, bounded by the waits below.
TEST(ServerProcessTest, AFloodOfConnectionsPastTheFileLimitLeavesTheListenerAccepting) {
  ServerProcess server({"--liveness_interval_ms=100", "--self_probe_timeout_ms=300",
                        "--self_probe_failures=2", "--log_json"},
                       /*max_files=*/128);
  const int port = server.WaitForPort();
  ASSERT_GT(port, 0);
  Client before(port);  // Connected before the flood: it can still ask.
  ASSERT_EQ(before.Check(), Health::SERVING);
  std::vector<int> sockets;
  for (int i = 0; i < 200; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    sockets.push_back(fd);
  }
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (server.Log().find("refused") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);  // Polling the log: the process gives no other signal.
  }
  EXPECT_NE(server.Log().find("max_connections lowered to 24"), std::string::npos) << server.Log();
  EXPECT_NE(server.Log().find("refused"), std::string::npos) << server.Log();
  EXPECT_EQ(before.Check(), Health::SERVING);  // Connections that got in are served.
  for (int fd : sockets) close(fd);
  // The flood's connections are closed by the clients; a new one gets in (UNKNOWN: no answer
  // within the call's deadline, as before the fix).
  Health::ServingStatus after = Health::UNKNOWN;
  while (after != Health::SERVING && std::chrono::steady_clock::now() < deadline) {
    after = Client(port).Check(500ms);
  }
  EXPECT_EQ(after, Health::SERVING);
  EXPECT_EQ(before.Check(), Health::SERVING);
  const std::string log = server.Log();
  EXPECT_EQ(log.find("Failed accept4"), std::string::npos) << log;
  EXPECT_EQ(log.find("accepts no connection"), std::string::npos) << log;  // The self-probe held.
  // --log_json: every line is JSON, the gate's own included.
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) {
      EXPECT_TRUE(line.front() == '{' && line.back() == '}') << line;
    }
  }
}

// libprotobuf logs an ERROR line for every request with a string that is not UTF-8, which let a
// client flood the log: now one line per 10 s, with the count of those dropped; under --log_json
// that line is JSON like every other.
TEST(ServerProcessTest, ProtobufErrorsAClientCausesAreThrottled) {
  ServerProcess server({"--log_json"});
  const int port = server.WaitForPort();
  ASSERT_GT(port, 0);
  Client client(port);
  v1::GenerateRequest request = LongRequest(4);
  request.set_question(std::string("caf\xc3", 4));
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext context;
    v1::AnswerResponse answer;
    EXPECT_EQ(client.stub->Answer(&context, request, &answer).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  server.Signal(SIGTERM);
  EXPECT_EQ(server.WaitExit(), 0);
  const std::string log = server.Log();
  size_t lines = 0;
  for (size_t at = log.find("invalid UTF-8"); at != std::string::npos;
       at = log.find("invalid UTF-8", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 1u) << log;
  std::istringstream each(log);
  for (std::string line; std::getline(each, line);) {
    if (!line.empty()) {
      EXPECT_TRUE(line.front() == '{' && line.back() == '}') << line;
    }
  }
}

}  // namespace
}  // namespace flexvqa
