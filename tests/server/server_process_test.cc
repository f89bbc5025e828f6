// The server as a process (flexvqa_fake_server: the real main over the fake engine): SIGTERM drains
// (health NOT_SERVING, new calls UNAVAILABLE, the running stream completes) and the process exits
// 0; past the drain time the rest ends UNAVAILABLE, still exit 0.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <future>
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
  explicit ServerProcess(std::vector<std::string> flags) {
    port_file_ = ::testing::TempDir() + "/fake_server_port_" + std::to_string(getpid());
    std::remove(port_file_.c_str());
    std::vector<std::string> args = {FAKE_SERVER_PATH, "--port_file=" + port_file_};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ), 0);
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::remove(port_file_.c_str());
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
  int WaitExit() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  std::string port_file_;
};

v1::GenerateRequest LongRequest(int tokens) {
  v1::GenerateRequest request;
  request.set_question("tell me everything");
  request.mutable_sampling()->set_max_new_tokens(tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

struct Client {
  explicit Client(int port)
      : channel(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                    grpc::InsecureChannelCredentials())),
        stub(v1::VqaService::NewStub(channel)),
        health(grpc::health::v1::Health::NewStub(channel)) {}
  Health::ServingStatus Check() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
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

}  // namespace
}  // namespace flexvqa
