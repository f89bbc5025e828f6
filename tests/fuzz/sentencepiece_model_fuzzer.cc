// ParseSentencePieceModel (the protobuf wire-format reader behind Tokenizer::Load) on arbitrary
// bytes: truncated varints, lengths past the end, wrong wire types and nested garbage are
// INVALID_ARGUMENT, never a crash; an accepted model satisfies what the parser promises to check.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/text/sentencepiece_model.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto model = flexvqa::ParseSentencePieceModel(bytes);
  if (!model.ok()) {
    FUZZ_CHECK(model.status().code() == flexvqa::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(!model->pieces.empty());
  int unknown = 0;
  for (const flexvqa::SentencePiece& piece : model->pieces) {
    FUZZ_CHECK(!piece.piece.empty() && !std::isnan(piece.score));
    unknown += piece.type == flexvqa::SentencePiece::Type::kUnknown;
  }
  FUZZ_CHECK(unknown == 1);
  return 0;
}
