// Bearer-token authentication and the caller's identity. A TokenSet is loaded once in main from a
// file and read-only afterwards (any thread). Verify compares a presented token against every
// known one in constant time (SHA-256 digests compared with CRYPTO_memcmp, no early exit), so the
// time taken tells nothing about how much of a token matched. ClientIdentity names the caller for
// per-client limits: the token's name, else the TLS client certificate's CN, else the peer address.
#pragma once

#include <grpcpp/server_context.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "model/status.h"

namespace flexvqa {

inline constexpr int kMinTokenBytes = 16;

class TokenSet {
 public:
  // One token per line, optionally followed by whitespace and a name (default "token<line>");
  // blank lines and lines starting with '#' are skipped. INVALID_ARGUMENT (naming the line, never
  // the token) for a token shorter than kMinTokenBytes or a duplicate; NOT_FOUND for a missing
  // file; an empty file is INVALID_ARGUMENT (it would lock everybody out).
  static StatusOr<TokenSet> Parse(const std::string& text);
  static StatusOr<TokenSet> Load(const std::string& path);

  // The name of the token `presented` equals; nullopt when none does.
  std::optional<std::string> Verify(const std::string& presented) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::array<unsigned char, 32> digest;
    std::string name;
  };
  std::vector<Entry> entries_;
};

// The token of an "authorization: Bearer <token>" header value; nullopt for anything else.
std::optional<std::string> BearerToken(const std::string& header_value);

// The identity ("token:<name>") of a caller whose one authorization header is `authorization`
// (null: none, or several), or UNAUTHENTICATED saying nothing about why. Both protocols' check.
StatusOr<std::string> AuthenticateHeader(const std::string* authorization, const TokenSet& tokens);

// Checks the call's bearer token when `tokens` is not null. Returns the caller's identity, or
// UNAUTHENTICATED with a message that says nothing about why (missing, malformed or unknown).
StatusOr<std::string> Authenticate(const grpc::ServerContextBase& context, const TokenSet* tokens);

}  // namespace flexvqa
