// Transport security and bearer tokens for the C++ clients (flexvqa_client, flexvqa_loadgen), one
// set of flags for both: --tls_ca (TLS, verifying the server against this CA bundle),
// --tls_cert/--tls_key (a client certificate, for mutual TLS), --token or --token_file (sent as
// "authorization: Bearer <token>" on every call; FLEXVQA_TOKEN in the environment as well).
// Header-only; main's thread, except AddAuth, which any thread may call.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

namespace flexvqa::client {

inline constexpr char kSecurityUsage[] =
    "         [--tls_ca=CA.pem [--tls_cert=CERT.pem --tls_key=KEY.pem]]\n"
    "         [--token=TOKEN | --token_file=FILE]\n";

struct ChannelSecurity {
  std::string tls_ca, tls_cert, tls_key;
  std::string token;  // Filled from --token, --token_file or FLEXVQA_TOKEN.
  std::string token_file;
};

// True when `name` is one of the security flags (and stores `value`).
inline bool ParseSecurityFlag(const std::string& name, const std::string& value,
                              ChannelSecurity* s) {
  if (name == "tls_ca") return s->tls_ca = value, true;
  if (name == "tls_cert") return s->tls_cert = value, true;
  if (name == "tls_key") return s->tls_key = value, true;
  if (name == "token") return s->token = value, true;
  if (name == "token_file") return s->token_file = value, true;
  return false;
}

inline bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::ostringstream text;
  text << file.rdbuf();
  *out = text.str();
  return true;
}

// Plaintext without --tls_ca. Null with *error set when a file cannot be read or the flags do not
// fit together. Resolves the token (its file's first word).
inline std::shared_ptr<grpc::ChannelCredentials> MakeCredentials(ChannelSecurity* s,
                                                                 std::string* error) {
  if (s->token.empty() && !s->token_file.empty()) {
    std::string text;
    if (!ReadFile(s->token_file, &text)) return *error = "cannot read " + s->token_file, nullptr;
    std::istringstream(text) >> s->token;
  }
  if (const char* env = std::getenv("FLEXVQA_TOKEN"); s->token.empty() && env != nullptr) {
    s->token = env;
  }
  if (s->tls_cert.empty() != s->tls_key.empty()) {
    return *error = "set both --tls_cert and --tls_key, or neither", nullptr;
  }
  if (s->tls_ca.empty()) {
    if (!s->tls_cert.empty()) return *error = "--tls_cert needs --tls_ca (TLS)", nullptr;
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions options;
  if (!ReadFile(s->tls_ca, &options.pem_root_certs))
    return *error = "cannot read " + s->tls_ca, nullptr;
  if (!s->tls_cert.empty() && (!ReadFile(s->tls_cert, &options.pem_cert_chain) ||
                               !ReadFile(s->tls_key, &options.pem_private_key))) {
    return *error = "cannot read " + s->tls_cert + " or " + s->tls_key, nullptr;
  }
  return grpc::SslCredentials(options);
}

inline void AddAuth(const ChannelSecurity& s, grpc::ClientContext* context) {
  if (!s.token.empty()) context->AddMetadata("authorization", "Bearer " + s.token);
}

}  // namespace flexvqa::client
