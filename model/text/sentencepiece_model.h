// SentencePieceModel: what a SentencePiece tokenizer.model (a serialized sentencepiece.ModelProto,
// sentencepiece_model.proto of v0.1.97) holds for encoding and decoding, read by a small protobuf
// wire-format parser so that the runtime links neither libprotobuf nor libsentencepiece. Pure and
// thread-safe; hostile or truncated input is INVALID_ARGUMENT, never a crash.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/status.h"

namespace flexvqa {

// ModelProto.SentencePiece; the enum values are the proto's.
struct SentencePiece {
  enum class Type : uint8_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  std::string piece;
  float score = 0.0f;
  Type type = Type::kNormal;  // Default: NORMAL, as the proto.
};

// Only the fields the tokenizer reads; every other field is skipped. Defaults are the proto's.
struct SentencePieceModel {
  enum class ModelType : uint8_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

  std::vector<SentencePiece> pieces;  // ModelProto.pieces (1); the index is the token id.

  // TrainerSpec (ModelProto field 2).
  ModelType model_type = ModelType::kUnigram;  // 3
  bool treat_whitespace_as_suffix = false;     // 24
  bool byte_fallback = false;                  // 35
  // sentencepiece finds the special tokens by these texts, not by the trained *_id fields.
  std::string unk_piece = "<unk>";  // 45
  std::string bos_piece = "<s>";    // 46
  std::string eos_piece = "</s>";   // 47

  // NormalizerSpec (ModelProto field 3).
  std::string normalizer_name;           // 1
  std::string precompiled_charsmap;      // 2; empty for the "identity" normalizer.
  bool add_dummy_prefix = true;          // 3
  bool remove_extra_whitespaces = true;  // 4
  bool escape_whitespaces = true;        // 5

  // ModelProto.denormalizer_spec (5): only whether it would rewrite decoded text.
  std::string denormalizer_charsmap;
};

// Parses `serialized` and checks what sentencepiece's ModelInterface::InitializePieces checks: at
// least one piece, no empty piece, no piece twice within the normal (NORMAL, USER_DEFINED, UNUSED)
// or the reserved (UNKNOWN, CONTROL, BYTE) group, exactly one UNKNOWN, BYTE pieces only with
// byte_fallback and then all 256 "<0xXX>", no NaN score. Errors: INVALID_ARGUMENT.
StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view serialized);

// "<0xAB>" -> 0xAB, exactly as sentencepiece spells byte pieces (upper-case hex); -1 otherwise.
int BytePieceValue(std::string_view piece);

}  // namespace flexvqa
