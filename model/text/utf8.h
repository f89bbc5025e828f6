// Strict UTF-8 checks (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF) for
// prompt validation and the streaming detokenizer. Header-only, pure functions, thread-safe.
#pragma once

#include <cstddef>
#include <string_view>

namespace flexvqa {

// What sits at one position of a byte string.
enum class Utf8Sequence { kValid, kIncomplete, kInvalid };

// Classifies the sequence starting at s[pos] (pos < s.size()). kValid sets *length to its byte
// count; kIncomplete means the bytes up to the end of s are a proper prefix of some valid sequence
// (more bytes could complete it); kInvalid means no continuation can make it valid, and *length is
// 1 so that a caller replacing bad bytes always makes progress.
inline Utf8Sequence ClassifyUtf8At(std::string_view s, size_t pos, size_t* length) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = byte(pos);
  *length = 1;
  if (lead < 0x80) return Utf8Sequence::kValid;
  size_t need = 0;
  // The allowed range of the second byte is what rules out overlong forms, surrogates and >
  // U+10FFFF.
  unsigned char lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return Utf8Sequence::kInvalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (pos + i >= s.size()) return Utf8Sequence::kIncomplete;
    const unsigned char c = byte(pos + i);
    const bool ok = i == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return Utf8Sequence::kInvalid;
  }
  *length = need;
  return Utf8Sequence::kValid;
}

// Length in bytes of the longest prefix of s that is valid UTF-8.
inline size_t ValidUtf8PrefixLength(std::string_view s) {
  size_t pos = 0;
  size_t length = 0;
  while (pos < s.size() && ClassifyUtf8At(s, pos, &length) == Utf8Sequence::kValid) pos += length;
  return pos;
}

inline bool IsValidUtf8(std::string_view s) { return ValidUtf8PrefixLength(s) == s.size(); }

// True when s is valid UTF-8 except for a trailing truncated sequence that more bytes could
// complete.
inline bool EndsWithIncompleteUtf8(std::string_view s) {
  const size_t pos = ValidUtf8PrefixLength(s);
  size_t length = 0;
  return pos < s.size() && ClassifyUtf8At(s, pos, &length) == Utf8Sequence::kIncomplete;
}

}  // namespace flexvqa
