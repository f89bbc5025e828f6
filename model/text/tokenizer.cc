#include "model/text/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <queue>

#include "model/text/utf8.h"

namespace flexvqa {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";      // U+2581, the whitespace marker.
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD.
const std::string kEmpty;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string ReplaceSpaceSymbols(std::string_view piece) {
  std::string out;
  size_t pos = 0;
  while (pos < piece.size()) {
    if (piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out.push_back(' ');
      pos += kSpaceSymbol.size();
    } else {
      out.push_back(piece[pos++]);
    }
  }
  return out;
}

// Appends `bytes` with every byte that starts no valid UTF-8 character replaced by U+FFFD, as
// sentencepiece_processor.cc (Decode, ProcessBytePieces) does for a run of byte pieces.
void AppendBytesAsUtf8(std::string_view bytes, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t length = 0;
    if (ClassifyUtf8At(bytes, pos, &length) == Utf8Sequence::kValid) {
      out->append(bytes.substr(pos, length));
      pos += length;
    } else {
      out->append(kReplacementChar);
      ++pos;
    }
  }
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& tokenizer_model_path) {
  std::ifstream file(tokenizer_model_path, std::ios::binary);
  if (!file) return NotFoundError("tokenizer model not found: " + tokenizer_model_path);
  const std::string serialized((std::istreambuf_iterator<char>(file)),
                               std::istreambuf_iterator<char>());
  auto model = ParseSentencePieceModel(serialized);
  if (!model.ok()) return model.status().WithContext(tokenizer_model_path);
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  FLEXVQA_RETURN_IF_ERROR(
      tokenizer->Init(std::move(model).value()).WithContext(tokenizer_model_path));
  return tokenizer;
}

Status Tokenizer::Init(SentencePieceModel model) {
  using ModelType = SentencePieceModel::ModelType;
  if (model.model_type != ModelType::kBpe) {
    return UnimplementedError(
        "only BPE SentencePiece models are supported (LLaMA's kind); this one is " +
        std::string(model.model_type == ModelType::kUnigram ? "UNIGRAM"
                    : model.model_type == ModelType::kWord  ? "WORD"
                                                            : "CHAR"));
  }
  // A charsmap is a compiled normalization table (nmt_nfkc, nfkc, *_cf, a rule TSV); LLaMA's
  // "identity" has none. A denormalizer table would rewrite decoded text: no released model we
  // serve has one, and Decode does not apply it.
  if (!model.denormalizer_charsmap.empty()) {
    return UnimplementedError("SentencePiece denormalizer with a precompiled charsmap ('" +
                              model.normalizer_name + "' model) is not supported");
  }
  if (!model.precompiled_charsmap.empty()) {
    auto charsmap = PrecompiledCharsMap::Parse(model.precompiled_charsmap);
    if (!charsmap.ok()) return charsmap.status();
    charsmap_ = std::move(charsmap).value();
  }
  byte_fallback_ = model.byte_fallback;
  add_dummy_prefix_ = model.add_dummy_prefix;
  remove_extra_whitespaces_ = model.remove_extra_whitespaces;
  escape_whitespaces_ = model.escape_whitespaces;
  treat_whitespace_as_suffix_ = model.treat_whitespace_as_suffix;

  const size_t n = model.pieces.size();
  pieces_.reserve(n);
  scores_.reserve(n);
  types_.reserve(n);
  for (SentencePiece& sp : model.pieces) {
    pieces_.push_back(std::move(sp.piece));
    scores_.push_back(sp.score);
    types_.push_back(sp.type);
  }
  // pieces_ is final from here on, so the maps can view its strings.
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = static_cast<int32_t>(i);
    const PieceType type = types_[i];
    const bool is_normal =
        type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
    (is_normal ? normal_ids_ : reserved_ids_).emplace(pieces_[i], id);
    if (type == PieceType::kUserDefined) user_defined_lengths_.push_back(pieces_[i].size());
    if (type == PieceType::kUnused) has_unused_ = true;
    if (type == PieceType::kUnknown) model_unk_id_ = id;
    if (type == PieceType::kByte) byte_ids_[BytePieceValue(pieces_[i])] = id;
  }
  std::sort(user_defined_lengths_.begin(), user_defined_lengths_.end(), std::greater<size_t>());
  user_defined_lengths_.erase(
      std::unique(user_defined_lengths_.begin(), user_defined_lengths_.end()),
      user_defined_lengths_.end());

  // sentencepiece_processor.cc: the special ids are found by their piece texts and their types.
  const auto special_id = [this](const std::string& piece, PieceType type) {
    const int32_t id = PieceToId(piece);
    return types_[id] == type ? id : -1;
  };
  unk_id_ = special_id(model.unk_piece, PieceType::kUnknown);
  bos_id_ = special_id(model.bos_piece, PieceType::kControl);
  eos_id_ = special_id(model.eos_piece, PieceType::kControl);

  // sentencepiece's decoder drops the leading "▁" of the text for models that add a dummy prefix or
  // remove extra whitespace (sentencepiece_processor.cc, Decode: DecodeSentencePiece).
  const bool strip_at_start = add_dummy_prefix_ || remove_extra_whitespaces_;
  bytes_.resize(n);
  bytes_at_start_.resize(n);
  skipped_in_decode_.resize(n);
  for (size_t id = 0; id < n; ++id) {
    const PieceType type = types_[id];
    if (type == PieceType::kControl || type == PieceType::kUnknown || type == PieceType::kUnused) {
      skipped_in_decode_[id] = true;
      continue;
    }
    if (type == PieceType::kByte) {
      bytes_[id] = bytes_at_start_[id] =
          std::string(1, static_cast<char>(BytePieceValue(pieces_[id])));
      continue;
    }
    bytes_[id] = ReplaceSpaceSymbols(pieces_[id]);
    bytes_at_start_[id] =
        strip_at_start && StartsWith(pieces_[id], kSpaceSymbol) ? bytes_[id].substr(1) : bytes_[id];
  }
  return Status::Ok();
}

int32_t Tokenizer::PieceToId(std::string_view piece) const {
  if (auto it = reserved_ids_.find(piece); it != reserved_ids_.end()) return it->second;
  if (auto it = normal_ids_.find(piece); it != normal_ids_.end()) return it->second;
  return model_unk_id_;
}

size_t Tokenizer::MatchUserDefined(std::string_view text) const {
  for (size_t length : user_defined_lengths_) {
    if (length > text.size()) continue;
    const auto it = normal_ids_.find(text.substr(0, length));
    if (it != normal_ids_.end() && types_[it->second] == PieceType::kUserDefined) return length;
  }
  return 0;
}

std::string Tokenizer::Normalize(std::string_view input) const {
  // normalizer.cc, NormalizePrefix: a user-defined piece whole, else the longest prefix the
  // charsmap rewrites, else one character, else one invalid byte, which becomes U+FFFD.
  const auto next_unit = [this](std::string_view text) -> std::pair<std::string_view, size_t> {
    if (const size_t length = MatchUserDefined(text); length > 0) {
      return {text.substr(0, length), length};
    }
    if (charsmap_) {
      std::string_view replacement;
      if (const size_t length = charsmap_->LongestMatch(text, &replacement); length > 0) {
        return {replacement, length};
      }
    }
    size_t length = 0;
    if (ClassifyUtf8At(text, 0, &length) != Utf8Sequence::kValid) return {kReplacementChar, 1};
    return {text.substr(0, length), length};
  };
  std::string out;
  if (remove_extra_whitespaces_) {
    while (!input.empty()) {
      const auto [unit, consumed] = next_unit(input);
      if (unit != " ") break;
      input.remove_prefix(consumed);
    }
  }
  if (input.empty()) return out;
  out.reserve(input.size() * 3);
  const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : " ";
  if (!treat_whitespace_as_suffix_ && add_dummy_prefix_) out.append(space);
  bool is_prev_space = remove_extra_whitespaces_;
  while (!input.empty()) {
    auto [unit, consumed] = next_unit(input);
    while (is_prev_space && !unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
    if (!unit.empty()) {
      for (char c : unit) {
        if (escape_whitespaces_ && c == ' ') {
          out.append(kSpaceSymbol);
        } else {
          out.push_back(c);
        }
      }
      is_prev_space = unit.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) is_prev_space = false;
  }
  if (remove_extra_whitespaces_) {
    while (out.size() >= space.size() &&
           out.compare(out.size() - space.size(), space.size(), space) == 0)
      out.resize(out.size() - space.size());
  }
  if (treat_whitespace_as_suffix_ && add_dummy_prefix_) out.append(space);
  return out;
}

std::vector<Tokenizer::EncodedPiece> Tokenizer::EncodeBpe(std::string_view normalized) const {
  struct Symbol {
    int prev;     // -1 at the start.
    int next;     // -1 at the end.
    bool freeze;  // A user-defined piece: never merged.
    std::string_view piece;
  };
  struct SymbolPair {
    int left;
    int right;
    float score;
    size_t size;
  };
  // The highest score first; among equal scores the leftmost, as bpe_model.cc's
  // SymbolPairComparator. Which merge wins decides the result, so this order must be the same.
  const auto lower_priority = [](const SymbolPair& a, const SymbolPair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<SymbolPair, std::vector<SymbolPair>, decltype(lower_priority)> agenda(
      lower_priority);
  std::vector<Symbol> symbols;
  symbols.reserve(normalized.size());
  // Merged UNUSED pieces and what they were made of, to split them again at the end.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;

  const auto maybe_add_pair = [&](int left, int right) {
    if (left == -1 || right == -1 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view piece(symbols[left].piece.data(),
                                 symbols[left].piece.size() + symbols[right].piece.size());
    const auto it = normal_ids_.find(piece);
    if (it == normal_ids_.end()) return;
    agenda.push(SymbolPair{left, right, scores_[it->second], piece.size()});
    if (types_[it->second] == PieceType::kUnused) {
      rev_merge[piece] = {symbols[left].piece, symbols[right].piece};
    }
  };

  // Split into characters (user-defined pieces whole); normalized text is valid UTF-8.
  std::string_view rest = normalized;
  while (!rest.empty()) {
    size_t length = MatchUserDefined(rest);
    const bool freeze = length > 0;
    if (!freeze) {
      static constexpr char kCharLength[] = "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4";
      length = std::min<size_t>(rest.size(), kCharLength[static_cast<uint8_t>(rest[0]) >> 4]);
    }
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(
        Symbol{index - 1, rest.size() == length ? -1 : index + 1, freeze, rest.substr(0, length)});
    rest.remove_prefix(length);
  }
  if (symbols.empty()) return {};
  for (size_t i = 1; i < symbols.size(); ++i)
    maybe_add_pair(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!agenda.empty()) {
    const SymbolPair top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale: one side was merged away or grew since this pair was queued.
    if (left.piece.empty() || right.piece.empty() ||
        left.piece.size() + right.piece.size() != top.size) {
      continue;
    }
    left.piece = std::string_view(left.piece.data(), top.size);
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.piece = std::string_view();
    maybe_add_pair(left.prev, top.left);
    maybe_add_pair(top.left, left.next);
  }

  std::vector<EncodedPiece> output;
  output.reserve(symbols.size());
  std::function<void(std::string_view)> resegment = [&](std::string_view w) {
    const int32_t id = PieceToId(w);
    const auto it =
        has_unused_ && types_[id] == PieceType::kUnused ? rev_merge.find(w) : rev_merge.end();
    if (it == rev_merge.end()) {
      output.emplace_back(w, id);
      return;
    }
    resegment(it->second.first);
    resegment(it->second.second);
  };
  for (int index = 0; index != -1; index = symbols[index].next) resegment(symbols[index].piece);
  return output;
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::string normalized = Normalize(text);
  // sentencepiece_processor.cc, PopulateSentencePieceText: unknown text becomes its UTF-8 bytes
  // with byte fallback; without it, a run of unknown pieces becomes one unknown id.
  bool prev_unknown = false;
  for (const auto& [piece, id] : EncodeBpe(normalized)) {
    const bool unknown = types_[id] == PieceType::kUnknown;
    if (unknown && byte_fallback_) {
      for (char c : piece) ids.push_back(byte_ids_[static_cast<uint8_t>(c)]);
    } else if (!(unknown && prev_unknown)) {
      ids.push_back(id);
    }
    prev_unknown = unknown;
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  // sentencepiece_processor.cc, Decode: runs of byte pieces are validated as UTF-8 together; the
  // leading "▁" is dropped until a piece consumed one or some text was produced.
  std::string text;
  std::string byte_run;
  bool is_bos_ws = true;
  bool bos_ws_seen = false;
  for (int32_t id : ids) {
    if (!InVocab(id) || skipped_in_decode_[id]) continue;
    if (types_[id] == PieceType::kByte) {
      byte_run += bytes_[id];
      continue;
    }
    AppendBytesAsUtf8(byte_run, &text);
    byte_run.clear();
    if (bos_ws_seen || !text.empty()) is_bos_ws = false;
    const std::string& piece_bytes = is_bos_ws ? bytes_at_start_[id] : bytes_[id];
    // With remove_extra_whitespaces sentencepiece keeps stripping until text appears.
    bos_ws_seen =
        is_bos_ws && piece_bytes.size() != bytes_[id].size() && !remove_extra_whitespaces_;
    text += piece_bytes;
  }
  AppendBytesAsUtf8(byte_run, &text);
  return text;
}

const std::string& Tokenizer::TokenBytes(int32_t id, bool at_start) const {
  if (!InVocab(id)) return kEmpty;
  return at_start ? bytes_at_start_[id] : bytes_[id];
}

std::string Tokenizer::IdToPiece(int32_t id) const { return InVocab(id) ? pieces_[id] : ""; }

}  // namespace flexvqa
