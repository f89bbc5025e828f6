// The connection limits of server/transport.h, each tried against the real server on 127.0.0.1
// (issue 11, finding 1: nothing limited connections or streams or closed idle or half-open
// connections): the cap on open connections (server/connection_gate.h), streams per connection, the
// idle and maximum connection age (calls in flight finish in the grace time), the handshake timeout
// for a socket that never speaks, the raised RLIMIT_NOFILE and gRPC's receive limit above the
// service's.
#include "server/transport.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>
#include <future>
#include <vector>

#include "server/connection_gate.h"
#include "tests/server/service_fixture.h"

namespace flexvqa {
namespace {

using namespace std::chrono_literals;
using testing::EngineHold;
using testing::FakeEngineOptions;
using testing::kWait;
using testing::Question;
using testing::StreamResult;

class TransportTest : public testing::ServiceTest {
 protected:
  // True when the fixture's connection left READY (the server sent GOAWAY) within kWait.
  bool ConnectionClosedByServer() {
    return channel_->WaitForStateChange(GRPC_CHANNEL_READY,
                                        std::chrono::system_clock::now() + kWait);
  }
  // A channel on a connection of its own (not shared through the global subchannel pool).
  std::unique_ptr<v1::VqaService::Stub> SecondConnection() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::VqaService::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials(), args));
  }
  bool AcceptedReaches(int64_t count, std::chrono::milliseconds within) {
    return server_->scheduler().WaitFor(
        [count](const SchedulerStats& s) { return s.accepted >= count; }, within);
  }
};

// A raw TCP connection to the server; -1 when connect failed.
int RawConnection(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// True when the server closed `fd` (EOF or reset) within `within`. The server's own HTTP/2
// SETTINGS frame may come first on a connection it kept: those bytes are read and skipped.
bool ClosedByServer(int fd, std::chrono::milliseconds within) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd wait{fd, POLLIN, 0};
    if (poll(&wait, 1, 50) != 1) continue;
    char buffer[256];
    if (read(fd, buffer, sizeof(buffer)) <= 0) return true;
  }
  return false;
}

TEST_F(TransportTest, ConnectionsBeyondTheCapAreClosedWhileOpenOnesAndLaterOnesWork) {
  server_options_.connections.max_connections = 3;
  server_options_.connections.handshake_timeout = 60s;  // The silent connection keeps its slot.
  StartServer();
  const ConnectionGate& gate = server_->connections();
  ASSERT_EQ(gate.max_connections(), 3);
  ASSERT_TRUE(Generate(Question("first", 4)).status.ok());  // The fixture's connection: 1 open.
  auto second = SecondConnection();
  auto ask = [](v1::VqaService::Stub& stub, std::chrono::milliseconds timeout) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    v1::AnswerResponse answer;
    return stub.Answer(&context, Question("q", 4), &answer);
  };
  ASSERT_TRUE(ask(*second, kWait).ok());
  const int third = RawConnection(server_->port());  // Holds a slot without speaking HTTP/2.
  ASSERT_GE(third, 0);
  ASSERT_TRUE(gate.WaitFor([](const ConnectionGateStats& s) { return s.open == 3; }, kWait));

  // Over the cap: the kernel completes the connect, the gate closes it at once.
  std::vector<int> excess;
  for (int i = 0; i < 5; ++i) excess.push_back(RawConnection(server_->port()));
  for (int fd : excess) {
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(ClosedByServer(fd, kWait));
    close(fd);
  }
  auto refused = SecondConnection();
  const grpc::Status over = ask(*refused, 5s);
  EXPECT_EQ(over.error_code(), grpc::StatusCode::UNAVAILABLE) << over.error_message();
  EXPECT_GE(gate.Stats().refused, 6);
  EXPECT_EQ(gate.Stats().open, 3);

  // The connections that got in still work.
  EXPECT_TRUE(Generate(Question("still", 4)).status.ok());
  EXPECT_TRUE(ask(*second, kWait).ok());

  // One leaves: its slot is free again, and a new connection gets in.
  close(third);
  ASSERT_TRUE(gate.WaitFor([](const ConnectionGateStats& s) { return s.open == 2; }, kWait));
  auto later = SecondConnection();
  EXPECT_TRUE(ask(*later, kWait).ok());
  EXPECT_EQ(gate.Stats().open, 3);
  EXPECT_EQ(server_->ProbeOnce().ok(), true);  // At the cap the self-probe does not fail.
}

TEST(TransportLimitsTest, TheConnectionCapLeavesDescriptorsForEverythingElse) {
  EXPECT_EQ(ConnectionCapFor(1000, 1 << 20), 1000);
  // 128 descriptors: 64 + 16 reserved, two per connection.
  EXPECT_EQ(ConnectionCapFor(1000, 128), 24);
  EXPECT_EQ(ConnectionCapFor(1000, 10), 1);  // Never 0: the server must still take one.
  EXPECT_EQ(ConnectionCapFor(5, 1 << 20), 5);
}

TEST(TransportLimitsTest, ASecondListenerOnTheSamePortFails) {
  auto first = ConnectionGate::Listen("127.0.0.1:0", 4);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = ConnectionGate::Listen("127.0.0.1:" + std::to_string((*first)->port()), 4);
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(ConnectionGate::Listen("127.0.0.1", 4).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TransportTest, StreamsBeyondTheLimitOfAConnectionWaitOnTheClient) {
  server_options_.connections.max_concurrent_streams = 2;
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  StartServer(options);
  std::vector<std::future<StreamResult>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(std::async(std::launch::async, [&] { return Generate(Question("q", 4)); }));
  }
  ASSERT_TRUE(AcceptedReaches(2, kWait));
  EXPECT_FALSE(AcceptedReaches(3, 300ms));  // The third waits for a stream of this connection.
  auto other = SecondConnection();          // Another connection has streams of its own.
  auto fourth = std::async(std::launch::async, [&] {
    auto context = Context();
    return testing::ReadGenerateStream(*other, context.get(), Question("other", 4));
  });
  EXPECT_TRUE(AcceptedReaches(3, kWait));
  hold.Release();
  for (auto& call : calls) EXPECT_TRUE(call.get().status.ok());
  EXPECT_TRUE(fourth.get().status.ok());
  EXPECT_EQ(server_->scheduler().Stats().accepted, 4);
}

TEST_F(TransportTest, AnIdleConnectionIsClosed) {
  server_options_.connections.max_idle = 200ms;
  StartServer();
  ASSERT_TRUE(Generate(Question("hello", 4)).status.ok());
  ASSERT_EQ(channel_->GetState(false), GRPC_CHANNEL_READY);
  EXPECT_TRUE(ConnectionClosedByServer());
  EXPECT_TRUE(Generate(Question("again", 4)).status.ok());  // The client simply reconnects.
}

TEST_F(TransportTest, AnOldConnectionIsClosedAndItsCallFinishesInTheGraceTime) {
  server_options_.connections.max_age = 300ms;
  server_options_.connections.max_age_grace = 30s;
  EngineHold hold;
  FakeEngineOptions options;
  options.step_hook = hold.Hook();
  StartServer(options);
  auto running = std::async(std::launch::async, [&] { return Generate(Question("long", 4)); });
  hold.WaitEntered();  // A call is in flight: the connection is not idle.
  EXPECT_TRUE(ConnectionClosedByServer());
  hold.Release();
  EXPECT_TRUE(running.get().status.ok());
}

TEST_F(TransportTest, ASocketThatNeverCompletesTheHandshakeIsClosed) {
  server_options_.connections.handshake_timeout = 200ms;
  StartServer();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server_->port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  // Sends nothing (no HTTP/2 preface): the server must close it. Its own SETTINGS frame may come
  // first; read until EOF (or a reset).
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  ssize_t got = 1;
  while (got > 0 && std::chrono::steady_clock::now() < deadline) {
    pollfd wait{fd, POLLIN, 0};
    if (poll(&wait, 1, 100) != 1) continue;
    char buffer[256];
    got = read(fd, buffer, sizeof(buffer));
  }
  EXPECT_LE(got, 0);
  close(fd);
}

TEST(TransportLimitsTest, TheSoftFileLimitIsRaisedToTheHardOne) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  ASSERT_GT(limit.rlim_max, 64u);
  rlimit low = limit;
  low.rlim_cur = 64;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  EXPECT_EQ(RaiseFileLimit(), static_cast<long>(limit.rlim_max));
  rlimit now{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &now), 0);
  EXPECT_EQ(now.rlim_cur, limit.rlim_max);
}

TEST(TransportLimitsTest, GrpcReceivesAQuarterMoreThanTheServiceAccepts) {
  EXPECT_EQ(TransportReceiveLimit(64 << 20), 80 << 20);
  EXPECT_EQ(TransportReceiveLimit(1000), 1000 + (1 << 20));  // At least 1 MiB more.
  EXPECT_EQ(TransportReceiveLimit(int64_t{3} << 30), INT_MAX);
}

}  // namespace
}  // namespace flexvqa
