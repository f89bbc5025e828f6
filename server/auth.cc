#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <set>
#include <sstream>

namespace flexvqa {

namespace {

std::array<unsigned char, 32> Digest(const std::string& text) {
  std::array<unsigned char, 32> digest;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

// "ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7"; "ipv6:[::1]:5000" -> "ipv6:[::1]": one identity per
// host, whatever port a connection comes from.
std::string PeerHost(const std::string& peer) {
  const size_t colon = peer.rfind(':');
  const size_t first = peer.find(':');
  return colon != std::string::npos && colon != first ? peer.substr(0, colon) : peer;
}

}  // namespace

StatusOr<TokenSet> TokenSet::Parse(const std::string& text) {
  TokenSet set;
  std::set<std::string> names;
  std::istringstream lines(text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    std::istringstream fields(line);
    std::string token, name;
    if (!(fields >> token) || token[0] == '#') continue;
    const std::string where = "token file line " + std::to_string(number);
    if (token.size() < static_cast<size_t>(kMinTokenBytes)) {
      return InvalidArgumentError(where + ": a token needs at least " +
                                  std::to_string(kMinTokenBytes) + " characters");
    }
    if (!(fields >> name)) name = "token" + std::to_string(number);
    Entry entry{Digest(token), name};
    for (const Entry& e : set.entries_) {
      if (e.digest == entry.digest) return InvalidArgumentError(where + ": duplicate token");
    }
    if (!names.insert(name).second) {
      return InvalidArgumentError(where + ": duplicate name '" + name + "'");
    }
    set.entries_.push_back(std::move(entry));
  }
  if (set.entries_.empty()) return InvalidArgumentError("the token file holds no token");
  return set;
}

StatusOr<TokenSet> TokenSet::Load(const std::string& path) {
  std::ifstream file(path);
  if (!file) return NotFoundError("cannot read the token file " + path);
  std::ostringstream text;
  text << file.rdbuf();
  StatusOr<TokenSet> set = Parse(text.str());
  if (!set.ok()) return set.status().WithContext(path);
  return set;
}

std::optional<std::string> TokenSet::Verify(const std::string& presented) const {
  const std::array<unsigned char, 32> digest = Digest(presented);
  const Entry* match = nullptr;
  for (const Entry& entry : entries_) {  // Every entry, always: no early exit.
    const bool equal = CRYPTO_memcmp(entry.digest.data(), digest.data(), digest.size()) == 0;
    if (equal) match = &entry;
  }
  if (match == nullptr) return std::nullopt;
  return match->name;
}

std::optional<std::string> BearerToken(const std::string& header_value) {
  constexpr char kScheme[] = "Bearer ";
  constexpr size_t kLength = sizeof(kScheme) - 1;
  if (header_value.size() <= kLength || header_value.compare(0, kLength, kScheme) != 0) {
    return std::nullopt;
  }
  return header_value.substr(kLength);
}

StatusOr<std::string> AuthenticateHeader(const std::string* authorization, const TokenSet& tokens) {
  std::optional<std::string> name;
  if (authorization != nullptr) {
    if (auto token = BearerToken(*authorization)) name = tokens.Verify(*token);
  }
  if (!name) return UnauthenticatedError("unauthenticated");
  return "token:" + *name;
}

StatusOr<std::string> Authenticate(const grpc::ServerContextBase& context, const TokenSet* tokens) {
  if (tokens != nullptr) {
    const auto& metadata = context.client_metadata();
    const auto header = metadata.find("authorization");
    if (header == metadata.end() || metadata.count("authorization") != 1) {
      return AuthenticateHeader(nullptr, *tokens);
    }
    const std::string value(header->second.data(), header->second.size());
    return AuthenticateHeader(&value, *tokens);
  }
  if (const auto auth = context.auth_context(); auth != nullptr) {
    const std::vector<grpc::string_ref> cn = auth->FindPropertyValues("x509_common_name");
    if (!cn.empty()) return "cn:" + std::string(cn.front().data(), cn.front().size());
  }
  return PeerHost(context.peer());
}

}  // namespace flexvqa
