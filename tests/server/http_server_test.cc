// The HTTP wrapper behind /metrics (cpp-httplib): a client that sends part of a request and
// stalls no longer holds the endpoint (the hand-written one served one connection at a time: a
// byte a second held it indefinitely, issue 11 finding 4); unknown paths get 404; a second server
// on the same port fails (no SO_REUSEPORT).
#include "server/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "server/metrics_endpoint.h"

namespace flexvqa {
namespace {

using namespace std::chrono_literals;

// A loopback TCP connection that sends `bytes` and then nothing.
class StalledClient {
 public:
  StalledClient(int port, const std::string& bytes) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                 send(fd_, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size());
  }
  ~StalledClient() { close(fd_); }
  bool connected() const { return connected_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

TEST(HttpServerTest, StalledClientsDoNotBlockAScrape) {
  std::atomic<int> scrapes{0};
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", [&] {
    ++scrapes;
    return std::string("flexvqa_up 1\n");
  });
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  const int port = (*endpoint)->port();
  // Fewer than the pool's threads (4), each holding one: the old endpoint was blocked by one.
  StalledClient a(port, "GET /metr"), b(port, "G"), c(port, "GET /metrics HTTP/1.1\r\nHost: x");
  ASSERT_TRUE(a.connected() && b.connected() && c.connected());
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(3, 0);
  const auto start = std::chrono::steady_clock::now();
  auto response = client.Get("/metrics");
  ASSERT_TRUE(response) << httplib::to_string(response.error());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "flexvqa_up 1\n");
  EXPECT_NE(response->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_EQ(scrapes.load(), 1);
  auto missing = client.Get("/other");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

TEST(HttpServerTest, ASecondServerOnTheSamePortFails) {
  HttpServerOptions options;
  options.listen_address = "127.0.0.1:0";
  auto first = HttpServer::Start(options, [](httplib::Server&) {});
  ASSERT_TRUE(first.ok());
  options.listen_address = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = HttpServer::Start(options, [](httplib::Server&) {});
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  options.listen_address = "no-port";
  EXPECT_EQ(HttpServer::Start(options, [](httplib::Server&) {}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flexvqa
