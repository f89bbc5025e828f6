#include "model/text/sentencepiece_model.h"

#include <cmath>
#include <cstring>
#include <unordered_set>

namespace flexvqa {
namespace {

// Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
enum WireType : int {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// Nesting protobuf itself allows before giving up; only hostile input comes near it.
constexpr int kMaxGroupDepth = 100;

// Reads one message's fields front to back. Every read is bounded by the message's own bytes, so a
// length or count taken from the input can never reach past them.
class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}

  bool done() const { return pos_ == data_.size(); }

  Status ReadVarint(uint64_t* value) {
    uint64_t result = 0;
    // A varint is at most 10 bytes (64 bits, 7 per byte).
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= data_.size()) return Error("truncated varint");
      const uint8_t byte = static_cast<uint8_t>(data_[pos_++]);
      result |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) {
        *value = result;
        return Status::Ok();
      }
    }
    return Error("varint longer than 10 bytes");
  }

  Status ReadTag(uint32_t* field, int* wire_type) {
    uint64_t tag = 0;
    FLEXVQA_RETURN_IF_ERROR(ReadVarint(&tag));
    *field = static_cast<uint32_t>(tag >> 3);
    *wire_type = static_cast<int>(tag & 7);
    if (tag > 0xFFFFFFFFu || *field == 0) return Error("invalid field number");
    if (*wire_type > kFixed32) return Error("invalid wire type " + std::to_string(*wire_type));
    return Status::Ok();
  }

  Status ReadFixed32(uint32_t* value) {
    if (data_.size() - pos_ < 4) return Error("truncated fixed32");
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += 4;
    *value = v;
    return Status::Ok();
  }

  Status ReadLengthDelimited(std::string_view* bytes) {
    uint64_t length = 0;
    FLEXVQA_RETURN_IF_ERROR(ReadVarint(&length));
    if (length > data_.size() - pos_) return Error("length past the end of the message");
    *bytes = data_.substr(pos_, static_cast<size_t>(length));
    pos_ += static_cast<size_t>(length);
    return Status::Ok();
  }

  // Typed reads of known fields. A known field with an unexpected wire type is skipped as an
  // unknown one, as protobuf's parser does.
  Status ReadString(int wire_type, uint32_t field, std::string* out) {
    if (wire_type != kLengthDelimited) return Skip(field, wire_type);
    std::string_view bytes;
    FLEXVQA_RETURN_IF_ERROR(ReadLengthDelimited(&bytes));
    out->assign(bytes.data(), bytes.size());
    return Status::Ok();
  }
  Status ReadBool(int wire_type, uint32_t field, bool* out) {
    if (wire_type != kVarint) return Skip(field, wire_type);
    uint64_t v = 0;
    FLEXVQA_RETURN_IF_ERROR(ReadVarint(&v));
    *out = v != 0;
    return Status::Ok();
  }
  // Enums travel as varints; `*out` is left alone (the proto default) and false returned when the
  // field was skipped for its wire type.
  Status ReadEnum(int wire_type, uint32_t field, uint64_t* out, bool* read) {
    *read = false;
    if (wire_type != kVarint) return Skip(field, wire_type);
    FLEXVQA_RETURN_IF_ERROR(ReadVarint(out));
    *read = true;
    return Status::Ok();
  }
  Status ReadFloat(int wire_type, uint32_t field, float* out) {
    if (wire_type != kFixed32) return Skip(field, wire_type);
    uint32_t bits = 0;
    FLEXVQA_RETURN_IF_ERROR(ReadFixed32(&bits));
    std::memcpy(out, &bits, sizeof(*out));
    return Status::Ok();
  }

  // Skips the value of a field whose tag was just read.
  Status Skip(uint32_t field, int wire_type, int depth = 0) {
    switch (wire_type) {
      case kVarint: {
        uint64_t ignored = 0;
        return ReadVarint(&ignored);
      }
      case kFixed64:
        if (data_.size() - pos_ < 8) return Error("truncated fixed64");
        pos_ += 8;
        return Status::Ok();
      case kLengthDelimited: {
        std::string_view ignored;
        return ReadLengthDelimited(&ignored);
      }
      case kFixed32: {
        uint32_t ignored = 0;
        return ReadFixed32(&ignored);
      }
      case kStartGroup:
        if (depth >= kMaxGroupDepth) return Error("groups nested too deeply");
        while (true) {
          if (done()) return Error("unterminated group");
          uint32_t inner_field = 0;
          int inner_type = 0;
          FLEXVQA_RETURN_IF_ERROR(ReadTag(&inner_field, &inner_type));
          if (inner_type == kEndGroup) {
            if (inner_field != field) return Error("mismatched end of group");
            return Status::Ok();
          }
          FLEXVQA_RETURN_IF_ERROR(Skip(inner_field, inner_type, depth + 1));
        }
      default:
        return Error("unexpected end of group");
    }
  }

 private:
  Status Error(const std::string& what) const {
    return InvalidArgumentError("malformed SentencePiece model: " + what + " at byte " +
                                std::to_string(pos_) + " of a " + std::to_string(data_.size()) +
                                "-byte message");
  }

  std::string_view data_;
  size_t pos_ = 0;
};

Status ParsePiece(std::string_view data, SentencePiece* piece) {
  WireReader reader(data);
  while (!reader.done()) {
    uint32_t field = 0;
    int type = 0;
    FLEXVQA_RETURN_IF_ERROR(reader.ReadTag(&field, &type));
    if (field == 1) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadString(type, field, &piece->piece));
    } else if (field == 2) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadFloat(type, field, &piece->score));
    } else if (field == 3) {
      uint64_t value = 0;
      bool read = false;
      FLEXVQA_RETURN_IF_ERROR(reader.ReadEnum(type, field, &value, &read));
      if (!read) continue;
      // protobuf would keep an unknown value aside and leave NORMAL; a piece type this reader does
      // not know means a model it cannot encode with faithfully.
      if (value < 1 || value > 6)
        return InvalidArgumentError("unknown SentencePiece type " + std::to_string(value));
      piece->type = static_cast<SentencePiece::Type>(value);
    } else {
      FLEXVQA_RETURN_IF_ERROR(reader.Skip(field, type));
    }
  }
  return Status::Ok();
}

Status ParseTrainerSpec(std::string_view data, SentencePieceModel* model) {
  WireReader reader(data);
  while (!reader.done()) {
    uint32_t field = 0;
    int type = 0;
    FLEXVQA_RETURN_IF_ERROR(reader.ReadTag(&field, &type));
    switch (field) {
      case 3: {
        uint64_t value = 0;
        bool read = false;
        FLEXVQA_RETURN_IF_ERROR(reader.ReadEnum(type, field, &value, &read));
        if (!read) break;
        if (value < 1 || value > 4)
          return InvalidArgumentError("unknown SentencePiece model_type " + std::to_string(value));
        model->model_type = static_cast<SentencePieceModel::ModelType>(value);
        break;
      }
      case 24:
        FLEXVQA_RETURN_IF_ERROR(reader.ReadBool(type, field, &model->treat_whitespace_as_suffix));
        break;
      case 35:
        FLEXVQA_RETURN_IF_ERROR(reader.ReadBool(type, field, &model->byte_fallback));
        break;
      case 45:
        FLEXVQA_RETURN_IF_ERROR(reader.ReadString(type, field, &model->unk_piece));
        break;
      case 46:
        FLEXVQA_RETURN_IF_ERROR(reader.ReadString(type, field, &model->bos_piece));
        break;
      case 47:
        FLEXVQA_RETURN_IF_ERROR(reader.ReadString(type, field, &model->eos_piece));
        break;
      default:
        FLEXVQA_RETURN_IF_ERROR(reader.Skip(field, type));
    }
  }
  return Status::Ok();
}

// Fills the normalizer fields of `model`, or only the charsmap (into *charsmap) for the
// denormalizer.
Status ParseNormalizerSpec(std::string_view data, SentencePieceModel* model,
                           std::string* charsmap) {
  WireReader reader(data);
  while (!reader.done()) {
    uint32_t field = 0;
    int type = 0;
    FLEXVQA_RETURN_IF_ERROR(reader.ReadTag(&field, &type));
    const bool normalizer = model != nullptr;
    if (field == 2) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadString(type, field, charsmap));
    } else if (normalizer && field == 1) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadString(type, field, &model->normalizer_name));
    } else if (normalizer && field == 3) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadBool(type, field, &model->add_dummy_prefix));
    } else if (normalizer && field == 4) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadBool(type, field, &model->remove_extra_whitespaces));
    } else if (normalizer && field == 5) {
      FLEXVQA_RETURN_IF_ERROR(reader.ReadBool(type, field, &model->escape_whitespaces));
    } else {
      FLEXVQA_RETURN_IF_ERROR(reader.Skip(field, type));
    }
  }
  return Status::Ok();
}

// The checks of sentencepiece's model_interface.cc, InitializePieces, which refuses to load a model
// that fails them.
Status CheckPieces(const SentencePieceModel& model) {
  using Type = SentencePiece::Type;
  if (model.pieces.empty()) return InvalidArgumentError("SentencePiece model has no pieces");
  std::unordered_set<std::string_view> normal, reserved;
  bool byte_found[256] = {};
  int unknown_count = 0;
  for (const SentencePiece& sp : model.pieces) {
    if (sp.piece.empty()) return InvalidArgumentError("SentencePiece model has an empty piece");
    if (std::isnan(sp.score))
      return InvalidArgumentError("piece '" + sp.piece + "' has a NaN score");
    const bool is_normal =
        sp.type == Type::kNormal || sp.type == Type::kUserDefined || sp.type == Type::kUnused;
    if (!(is_normal ? normal : reserved).insert(sp.piece).second)
      return InvalidArgumentError("piece '" + sp.piece + "' is defined twice");
    if (sp.type == Type::kUnknown) ++unknown_count;
    if (sp.type == Type::kByte) {
      if (!model.byte_fallback)
        return InvalidArgumentError("byte piece '" + sp.piece + "' without byte_fallback");
      const int byte = BytePieceValue(sp.piece);
      if (byte < 0) return InvalidArgumentError("malformed byte piece '" + sp.piece + "'");
      byte_found[byte] = true;
    }
  }
  if (unknown_count != 1)
    return InvalidArgumentError("SentencePiece model must have exactly one unknown piece, has " +
                                std::to_string(unknown_count));
  if (model.byte_fallback) {
    for (bool found : byte_found) {
      if (!found) return InvalidArgumentError("byte_fallback without all 256 byte pieces");
    }
  }
  return Status::Ok();
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

int BytePieceValue(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  const int high = HexDigit(piece[3]);
  const int low = HexDigit(piece[4]);
  if (high < 0 || low < 0) return -1;
  return high * 16 + low;
}

StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view serialized) {
  SentencePieceModel model;
  WireReader reader(serialized);
  while (!reader.done()) {
    uint32_t field = 0;
    int type = 0;
    FLEXVQA_RETURN_IF_ERROR(reader.ReadTag(&field, &type));
    // Sub-messages of the wrong wire type are skipped as unknown fields, as protobuf does.
    if (type != kLengthDelimited || field < 1 || field > 5 || field == 4) {
      FLEXVQA_RETURN_IF_ERROR(reader.Skip(field, type));
      continue;
    }
    std::string_view bytes;
    FLEXVQA_RETURN_IF_ERROR(reader.ReadLengthDelimited(&bytes));
    if (field == 1) {
      model.pieces.emplace_back();
      FLEXVQA_RETURN_IF_ERROR(ParsePiece(bytes, &model.pieces.back()));
    } else if (field == 2) {
      // A sub-message seen twice is merged, field by field, as protobuf does.
      FLEXVQA_RETURN_IF_ERROR(ParseTrainerSpec(bytes, &model));
    } else if (field == 3) {
      FLEXVQA_RETURN_IF_ERROR(ParseNormalizerSpec(bytes, &model, &model.precompiled_charsmap));
    } else {
      FLEXVQA_RETURN_IF_ERROR(ParseNormalizerSpec(bytes, nullptr, &model.denormalizer_charsmap));
    }
  }
  FLEXVQA_RETURN_IF_ERROR(CheckPieces(model));
  return model;
}

}  // namespace flexvqa
