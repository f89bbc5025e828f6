// PrecompiledCharsMap: SentencePiece's compiled normalization table (NormalizerSpec
// .precompiled_charsmap, what nmt_nfkc, nfkc, nmt_nfkc_cf, nfkc_cf and normalization_rule_tsv
// models carry), read and searched as libsentencepiece's normalizer.cc does, without linking it.
// Immutable after Parse; const methods are thread-safe. A hostile table is INVALID_ARGUMENT at
// Parse or, for offsets only a search can reach, a non-match: never a read out of bounds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/status.h"

namespace flexvqa {

class PrecompiledCharsMap {
 public:
  // The blob's layout (normalizer.cc, DecodePrecompiledCharsMap): a little-endian uint32 byte
  // size of the trie, the trie (a Darts-clone double array of uint32 units), then the
  // replacement strings, each ending in NUL; a trie value is a byte offset into them.
  static StatusOr<PrecompiledCharsMap> Parse(std::string_view blob);

  // The longest prefix of `input` the table rewrites (normalizer.cc, NormalizePrefix: the longest
  // of Darts' commonPrefixSearch results). Returns its length in bytes and sets *replacement to
  // what it becomes (possibly empty: the character is deleted); 0 when no prefix matches.
  size_t LongestMatch(std::string_view input, std::string_view* replacement) const;

 private:
  std::vector<uint32_t> units_;  // The double array.
  std::string normalized_;       // The NUL-terminated replacement strings.
};

}  // namespace flexvqa
