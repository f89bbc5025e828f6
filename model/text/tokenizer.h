// Tokenizer: a LLaMA SentencePiece tokenizer.model, loaded once, then immutable (const methods are
// thread-safe). Encode/Decode reproduce sentencepiece 0.1.97 for BPE models with any normalizer
// (identity, or a precompiled charsmap: nmt_nfkc, nfkc, nmt_nfkc_cf, nfkc_cf, a rule TSV), without
// linking it; TokenBytes feeds the streaming detokenizer. Load errors: NOT_FOUND, INVALID_ARGUMENT
// (not a SentencePiece model, a broken charsmap), UNIMPLEMENTED (not BPE, a denormalizer table).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/status.h"
#include "model/text/precompiled_charsmap.h"
#include "model/text/sentencepiece_model.h"

namespace flexvqa {

class Tokenizer {
 public:
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& tokenizer_model_path);
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Sentencepiece encoding with the model's own normalizer (LLaMA: identity, dummy prefix "▁"), so
  // Encode("Hi") is ["▁Hi"]. add_bos prepends bos_id(). No EOS is ever added.
  std::vector<int32_t> Encode(const std::string& text, bool add_bos) const;
  // Control, unknown, unused and out-of-vocabulary ids (image placeholders) are skipped (as Hugging
  // Face's skip_special_tokens). Invalid byte sequences from byte-fallback pieces become U+FFFD, as
  // sentencepiece does.
  std::string Decode(const std::vector<int32_t>& ids) const;

  // The raw bytes `id` contributes to decoded text: "▁" -> ' ', "<0xAB>" -> that byte, control,
  // unknown and out-of-vocabulary ids -> "". at_start drops the leading space of a piece at the
  // start of the text, which undoes the dummy prefix as sentencepiece's decoder does. Bytes may be
  // a partial UTF-8 sequence.
  const std::string& TokenBytes(int32_t id, bool at_start) const;

  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int unk_id() const { return unk_id_; }
  int vocab_size() const { return static_cast<int>(bytes_.size()); }
  // The piece text ("▁the", "<0x0A>", "</s>"); "" outside the vocabulary.
  std::string IdToPiece(int32_t id) const;

 private:
  using PieceType = SentencePiece::Type;
  // A stretch of normalized text and the id it maps to (unknown text maps to the unknown piece).
  using EncodedPiece = std::pair<std::string_view, int32_t>;

  Tokenizer() = default;
  Status Init(SentencePieceModel model);
  bool InVocab(int32_t id) const { return id >= 0 && id < vocab_size(); }
  // sentencepiece's ModelInterface::PieceToId: reserved pieces first, then the others, else unk.
  int32_t PieceToId(std::string_view piece) const;
  // Length of the longest user-defined piece `text` starts with; 0 if none.
  size_t MatchUserDefined(std::string_view text) const;
  // sentencepiece's Normalizer::Normalize (normalizer.cc), with the charsmap when there is one.
  std::string Normalize(std::string_view text) const;
  // bpe_model.cc, Model::SampleEncode without dropout.
  std::vector<EncodedPiece> EncodeBpe(std::string_view normalized) const;

  std::vector<std::string> pieces_;  // By id. Never resized after Init: the maps view them.
  std::vector<float> scores_;
  std::vector<PieceType> types_;
  std::unordered_map<std::string_view, int32_t> normal_ids_;    // NORMAL, USER_DEFINED, UNUSED.
  std::unordered_map<std::string_view, int32_t> reserved_ids_;  // UNKNOWN, CONTROL, BYTE.
  std::vector<size_t> user_defined_lengths_;                    // Distinct, longest first.
  bool has_unused_ = false;
  int32_t byte_ids_[256] = {};
  int32_t model_unk_id_ = 0;  // The UNKNOWN piece, whatever unk_piece says.

  std::optional<PrecompiledCharsMap> charsmap_;  // None: the identity normalizer.
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool treat_whitespace_as_suffix_ = false;

  std::vector<std::string> bytes_;           // TokenBytes(id, false), by id.
  std::vector<std::string> bytes_at_start_;  // TokenBytes(id, true), by id.
  std::vector<bool> skipped_in_decode_;      // Control, unknown or unused.
  int bos_id_ = -1;
  int eos_id_ = -1;
  int unk_id_ = -1;
};

}  // namespace flexvqa
