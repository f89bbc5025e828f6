// Streaming text output: StreamingDetokenizer turns generated token ids into UTF-8 deltas that
// never split a character; StopStringMatcher cuts the text at the first stop string, holding back
// text that may start one. One instance per sequence, used by one thread. The Tokenizer must
// outlive the detokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/text/tokenizer.h"

namespace flexvqa {

class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // The text completed by `token` (often ""). Bytes of a UTF-8 sequence that later tokens may
  // complete are held; bytes that can never form a character become U+FFFD, so a bad stream cannot
  // stall. For valid text, the concatenation of every Push and Flush equals tokenizer.Decode(all
  // tokens).
  std::string Push(int32_t token);
  // Ends the stream: a held incomplete sequence becomes U+FFFD. The detokenizer is then reset.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;  // Undelivered bytes: a prefix of one UTF-8 sequence.
  bool at_start_ =
      true;  // Nothing decoded yet: the next piece's leading space is the dummy prefix.
};

class StopStringMatcher {
 public:
  // Stop strings are valid UTF-8 (the engine validates them); empty ones are ignored.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  // Appends text and returns what is now safe to deliver: everything except a tail that could begin
  // a stop string. Once a stop string appears, returns the text before it and stopped() becomes
  // true; the stop string and everything after it are dropped, and later calls return "".
  std::string Push(std::string_view text);
  // The held tail, when generation ends for another reason (EOS, length). "" once stopped.
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_strings_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace flexvqa
