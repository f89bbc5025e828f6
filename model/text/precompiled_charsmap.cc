#include "model/text/precompiled_charsmap.h"

namespace flexvqa {
namespace {

uint32_t LittleEndian32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// One unit of a Darts-clone double array (darts.h, DoubleArrayUnit): bits 0-7 the label (bit 31
// set on a value unit, so that a value never equals a label), bit 8 "has a leaf", bit 9 the
// offset's scale, bits 10-31 the offset to the children.
bool HasLeaf(uint32_t unit) { return ((unit >> 8) & 1) == 1; }
uint32_t Value(uint32_t unit) { return unit & ((1u << 31) - 1); }
uint32_t Label(uint32_t unit) { return unit & ((1u << 31) | 0xFF); }
uint32_t Offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

// normalizer.cc, NormalizePrefix: only this many prefix matches are kept, and the longest of
// them wins.
constexpr int kMaxTrieResults = 32;

}  // namespace

StatusOr<PrecompiledCharsMap> PrecompiledCharsMap::Parse(std::string_view blob) {
  // normalizer.cc refuses a blob no longer than the size field and a trie size at least the blob
  // size; a trie that would end past the blob is refused here too (sentencepiece reads past it).
  if (blob.size() <= 4) {
    return InvalidArgumentError("precompiled charsmap of " + std::to_string(blob.size()) +
                                " bytes is broken");
  }
  const uint32_t trie_bytes = LittleEndian32(blob.data());
  if (trie_bytes > blob.size() - 4) {
    return InvalidArgumentError("precompiled charsmap: trie of " + std::to_string(trie_bytes) +
                                " bytes exceeds the " + std::to_string(blob.size()) + "-byte blob");
  }
  PrecompiledCharsMap map;
  // Darts' set_array(data, size / sizeof(unit)): a trailing partial unit is ignored.
  map.units_.resize(trie_bytes / 4);
  for (size_t i = 0; i < map.units_.size(); ++i) {
    map.units_[i] = LittleEndian32(blob.data() + 4 + 4 * i);
  }
  map.normalized_.assign(blob.substr(4 + trie_bytes));
  return map;
}

size_t PrecompiledCharsMap::LongestMatch(std::string_view input,
                                         std::string_view* replacement) const {
  // Darts' commonPrefixSearch from the root, with every index checked against the array (Darts
  // trusts its array; this one comes from a file).
  const auto unit_at = [this](uint64_t id, uint32_t* unit) {
    if (id >= units_.size()) return false;
    *unit = units_[id];
    return true;
  };
  uint32_t unit = 0;
  if (!unit_at(0, &unit)) return 0;
  uint64_t node = Offset(unit);
  size_t longest = 0;
  uint32_t longest_value = 0;
  int results = 0;
  for (size_t i = 0; i < input.size(); ++i) {
    const uint8_t byte = static_cast<uint8_t>(input[i]);
    node ^= byte;
    if (!unit_at(node, &unit) || Label(unit) != byte) break;
    node ^= Offset(unit);
    if (HasLeaf(unit)) {
      uint32_t leaf = 0;
      if (!unit_at(node, &leaf)) break;
      if (results++ < kMaxTrieResults) {
        longest = i + 1;
        longest_value = Value(leaf);
      }
    }
  }
  if (longest == 0) return 0;
  // normalizer.cc reads the replacement as a C string at the value's offset.
  if (longest_value >= normalized_.size()) return 0;
  const size_t end = normalized_.find('\0', longest_value);
  if (end == std::string::npos) return 0;
  *replacement = std::string_view(normalized_).substr(longest_value, end - longest_value);
  return longest;
}

}  // namespace flexvqa
