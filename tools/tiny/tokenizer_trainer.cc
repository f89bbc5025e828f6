#include "tools/tiny/tokenizer_trainer.h"

#include <sentencepiece_trainer.h>

#include <fstream>
#include <string>
#include <unordered_map>

namespace flexvqa {

Status TrainTinyTokenizer(const std::string& corpus_path, const std::string& model_prefix,
                          int vocab_size) {
  if (!std::ifstream(corpus_path))
    return NotFoundError("tokenizer corpus not found: " + corpus_path);
  if (vocab_size <= 0) return InvalidArgumentError("vocab_size must be positive");
  // The settings of LLaMA's tokenizer.model (its trainer_spec), scaled down; a map rather than a
  // flag string so that paths with spaces survive.
  const std::unordered_map<std::string, std::string> args = {
      {"input", corpus_path},
      {"model_prefix", model_prefix},
      {"vocab_size", std::to_string(vocab_size)},
      {"model_type", "bpe"},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"unk_piece", "<unk>"},
      {"bos_piece", "<s>"},
      {"eos_piece", "</s>"},
      {"add_dummy_prefix", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"character_coverage", "1.0"},
      {"num_threads", "1"},
      {"minloglevel", "2"},  // Errors only: training otherwise prints pages of progress to stderr.
  };
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) {
    return InvalidArgumentError("training the tokenizer from " + corpus_path +
                                " failed: " + status.ToString());
  }
  return Status::Ok();
}

}  // namespace flexvqa
