// TLS and mutual TLS over loopback with throwaway certificates made by `openssl` at test time (no
// key is committed): TLS serves a client that trusts the CA and refuses a plaintext one; mutual TLS
// refuses a client without a certificate; a renewed certificate is picked up without a restart;
// the self-probe passes under both.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "server/vqa_server.h"
#include "tests/server/fake_engine.h"
#include "tests/server/service_fixture.h"

namespace flexvqa {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// A CA and certificates it signs, in a private temporary directory.
class Certificates {
 public:
  Certificates() {
    dir_ = fs::path(::testing::TempDir()) / ("tls_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  ~Certificates() { fs::remove_all(dir_); }

  // Writes <name>.key and <name>.pem: a self-signed CA when `ca` is empty, else signed by `ca`.
  bool Make(const std::string& name, const std::string& common_name, const std::string& ca = "") {
    const std::string key = Path(name + ".key"), pem = Path(name + ".pem");
    std::string command;
    if (ca.empty()) {
      command =
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
          " -subj /CN=" +
          common_name + " -keyout " + key + " -out " + pem;
    } else {
      std::ofstream(Path(name + ".ext")) << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
      command = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=" +
                common_name + " -keyout " + key + " -out " + Path(name + ".csr") +
                " && openssl x509 -req -days 1 -in " + Path(name + ".csr") + " -CA " +
                Path(ca + ".pem") + " -CAkey " + Path(ca + ".key") + " -CAcreateserial -extfile " +
                Path(name + ".ext") + " -out " + pem;
    }
    return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
  }
  std::string Path(const std::string& file) const { return (dir_ / file).string(); }
  std::string Read(const std::string& file) const {
    std::ifstream in(Path(file));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // Replaces <to>.key/.pem with <from>'s atomically (rename), as a Secret update does.
  void Replace(const std::string& to, const std::string& from) {
    for (const char* ext : {".key", ".pem"}) {
      fs::copy_file(Path(from + ext), Path(to + ext + ".new"),
                    fs::copy_options::overwrite_existing);
      fs::rename(Path(to + ext + ".new"), Path(to + ext));
    }
  }

 private:
  fs::path dir_;
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.Make("ca", "flexvqa-test-ca"));
    ASSERT_TRUE(certs_.Make("server", "localhost", "ca"));
    ASSERT_TRUE(certs_.Make("client", "alice-client", "ca"));
  }
  void Start(bool mutual) {
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.tls.cert_file = certs_.Path("server.pem");
    options.tls.key_file = certs_.Path("server.key");
    if (mutual) options.tls.client_ca_file = certs_.Path("ca.pem");
    options.tls.reload_interval_s = 1;
    options.liveness.check_interval = 0ms;  // ProbeOnce below instead.
    auto server = VqaServer::Start(&engine_, options, {});
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }
  // One Answer over a fresh connection with these credentials.
  grpc::Status Ask(const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto stub = v1::VqaService::NewStub(grpc::CreateCustomChannel(
        "localhost:" + std::to_string(server_->port()), credentials, args));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    v1::AnswerResponse answer;
    return stub->Answer(&context, testing::Question("hello?", 4), &answer);
  }
  std::shared_ptr<grpc::ChannelCredentials> Trusting(const std::string& ca,
                                                     const std::string& client = "") {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = certs_.Read(ca + ".pem");
    if (!client.empty()) {
      options.pem_cert_chain = certs_.Read(client + ".pem");
      options.pem_private_key = certs_.Read(client + ".key");
    }
    return grpc::SslCredentials(options);
  }

  Certificates certs_;
  testing::FakeEngine engine_;
  std::unique_ptr<VqaServer> server_;
};

TEST_F(TlsTest, TlsServesAClientThatTrustsTheCaAndRefusesPlaintext) {
  Start(/*mutual=*/false);
  EXPECT_TRUE(Ask(Trusting("ca")).ok());
  EXPECT_EQ(Ask(grpc::InsecureChannelCredentials()).error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(certs_.Make("other-ca", "someone-else"));
  EXPECT_EQ(Ask(Trusting("other-ca")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(server_->ProbeOnce().ok()) << server_->ProbeOnce().ToString();
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateTheCaSigned) {
  Start(/*mutual=*/true);
  EXPECT_TRUE(Ask(Trusting("ca", "client")).ok());
  EXPECT_EQ(Ask(Trusting("ca")).error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(certs_.Make("rogue-ca", "rogue"));
  ASSERT_TRUE(certs_.Make("rogue", "mallory", "rogue-ca"));
  EXPECT_EQ(Ask(Trusting("ca", "rogue")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(server_->ProbeOnce().ok()) << server_->ProbeOnce().ToString();
}

// A renewed certificate (here: from a new CA, so that the switch is visible) reaches new
// connections within the reload interval, without a restart.
TEST_F(TlsTest, ARenewedCertificateIsServedWithoutARestart) {
  Start(/*mutual=*/false);
  ASSERT_TRUE(Ask(Trusting("ca")).ok());
  ASSERT_TRUE(certs_.Make("ca2", "flexvqa-test-ca-2"));
  ASSERT_TRUE(certs_.Make("server2", "localhost", "ca2"));
  certs_.Replace("server", "server2");
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!Ask(Trusting("ca2")).ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);  // The file watcher re-reads every second.
  }
  EXPECT_TRUE(Ask(Trusting("ca2")).ok());
  EXPECT_FALSE(Ask(Trusting("ca")).ok());
}

TEST(TlsOptionsTest, HalfAKeyPairOrAMissingFileDoesNotStart) {
  testing::FakeEngine engine;
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tls.cert_file = "/nonexistent/server.pem";
  EXPECT_EQ(VqaServer::Start(&engine, options, {}).status().code(), StatusCode::kInvalidArgument);
  options.tls.key_file = "/nonexistent/server.key";
  EXPECT_EQ(VqaServer::Start(&engine, options, {}).status().code(), StatusCode::kNotFound);
  options.tls = {};
  options.tls.client_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(VqaServer::Start(&engine, options, {}).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flexvqa
