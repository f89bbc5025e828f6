// The tokenizer and the streaming detokenizer of the tiny model's tokenizer.model (the committed
// fixture tests/fixtures/flex_tiny/model/tokenizer.model), on arbitrary input:
//  - Encode on any bytes (valid UTF-8 or not) gives ids inside the vocabulary; Decode never throws.
//  - The input read as token ids (two bytes each, any value, out-of-vocabulary ones included) goes
//    through StreamingDetokenizer: every delta is valid UTF-8, and the deltas add up to Decode
//    (the contract of model/text/detokenizer.h) when the bytes are valid text. With invalid bytes
//    they agree up to the number of U+FFFD in a row: Decode replaces each bad byte (as
//    sentencepiece), the detokenizer a held incomplete sequence as one (documented there).
//  - StopStringMatcher over those deltas never returns text containing its stop string.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/text/detokenizer.h"
#include "model/text/tokenizer.h"
#include "model/text/utf8.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

const flexvqa::Tokenizer& TinyTokenizer() {
  static const std::unique_ptr<flexvqa::Tokenizer> tokenizer = [] {
    auto loaded = flexvqa::Tokenizer::Load(FLEXVQA_SOURCE_DIR
                                           "/tests/fixtures/flex_tiny/model/tokenizer.model");
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
      std::abort();
    }
    return std::move(loaded).value();
  }();
  return *tokenizer;
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Runs of U+FFFD as one.
std::string CollapseReplacements(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, kReplacement.size(), kReplacement) == 0) {
      if (out.size() < kReplacement.size() ||
          out.compare(out.size() - kReplacement.size(), kReplacement.size(), kReplacement) != 0) {
        out += kReplacement;
      }
      i += kReplacement.size();
    } else {
      out += s[i++];
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const flexvqa::Tokenizer& tokenizer = TinyTokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);

  const std::vector<int32_t> encoded = tokenizer.Encode(text, /*add_bos=*/size % 2 == 0);
  for (const int32_t id : encoded) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size());
  FUZZ_CHECK(flexvqa::IsValidUtf8(tokenizer.Decode(encoded)));

  // Ids a little beyond the vocabulary, and negative ones, are what image placeholders look like.
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    const int16_t raw = static_cast<int16_t>(data[i] | (data[i + 1] << 8));
    ids.push_back(raw % (tokenizer.vocab_size() + 8));
  }
  flexvqa::StreamingDetokenizer detokenizer(tokenizer);
  flexvqa::StopStringMatcher matcher({"\n", "ab"});
  std::string streamed, kept;
  auto deliver = [&](const std::string& delta) {
    FUZZ_CHECK(flexvqa::IsValidUtf8(delta));
    streamed += delta;
    const std::string safe = matcher.Push(delta);
    FUZZ_CHECK(safe.find('\n') == std::string::npos);
    kept += safe;
  };
  for (const int32_t id : ids) deliver(detokenizer.Push(id));
  deliver(detokenizer.Flush());
  kept += matcher.Flush();
  const std::string decoded = tokenizer.Decode(ids);
  if (decoded.find(kReplacement) == std::string::npos) {
    FUZZ_CHECK(streamed == decoded);
  } else {
    FUZZ_CHECK(CollapseReplacements(streamed) == CollapseReplacements(decoded));
  }
  FUZZ_CHECK(kept.find("ab") == std::string::npos && kept.find('\n') == std::string::npos);
  FUZZ_CHECK(streamed.compare(0, kept.size(), kept) == 0);  // The kept text is a prefix.
  return 0;
}
