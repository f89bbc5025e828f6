#include "model/text/detokenizer.h"

#include <algorithm>
#include <utility>

#include "model/text/utf8.h"

namespace flexvqa {
namespace {

constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD.

}  // namespace

std::string StreamingDetokenizer::Push(int32_t token) {
  pending_ += tokenizer_.TokenBytes(token, at_start_);
  // sentencepiece stops treating pieces as text-initial once one produced text or had its leading
  // "▁" consumed (sentencepiece_processor.cc, Decode: bos_ws_seen); both mean the plain bytes are
  // non-empty.
  if (!tokenizer_.TokenBytes(token, false).empty()) at_start_ = false;
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    size_t length = 0;
    const Utf8Sequence kind = ClassifyUtf8At(pending_, pos, &length);
    if (kind == Utf8Sequence::kIncomplete) break;
    if (kind == Utf8Sequence::kValid) {
      out.append(pending_, pos, length);
    } else {
      out += kReplacementChar;  // As sentencepiece does per undecodable byte.
    }
    pos += length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out = pending_.empty() ? "" : kReplacementChar;
  pending_.clear();
  at_start_ = true;
  return out;
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (std::string& s : stop_strings) {
    if (!s.empty()) stop_strings_.push_back(std::move(s));
  }
}

std::string StopStringMatcher::Push(std::string_view text) {
  if (stopped_) return "";
  held_.append(text);
  // The earliest stop string wins. Every occurrence starts inside held_, because text that could
  // begin one was never released.
  size_t stop_at = std::string::npos;
  for (const std::string& s : stop_strings_) stop_at = std::min(stop_at, held_.find(s));
  if (stop_at != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, stop_at);
    held_.clear();
    return out;
  }
  // Hold the longest tail that is a proper prefix of a stop string. It starts where a stop string
  // starts, so it never splits a UTF-8 character.
  size_t keep = 0;
  for (const std::string& s : stop_strings_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStringMatcher::Flush() {
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

}  // namespace flexvqa
