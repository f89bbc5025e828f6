// Trains a tiny LLaMA-like SentencePiece BPE model (byte fallback, <unk>=0 <s>=1 </s>=2, dummy
// prefix, identity normalization) so that tests and the tiny checkpoint need no downloaded
// tokenizer. Writes <model_prefix>.model and <model_prefix>.vocab. Deterministic; not thread-safe
// against concurrent calls (sentencepiece's log level is process-global). Errors: NOT_FOUND
// (corpus), INVALID_ARGUMENT (training).
#pragma once

#include <string>

#include "model/status.h"

namespace flexvqa {

// The corpus shipped for this purpose: FLEXVQA_DATA_DIR "/tiny_corpus.txt".
// vocab_size must cover 259 byte/control pieces plus every distinct character of the corpus
// (512 suffices for tiny_corpus.txt).
Status TrainTinyTokenizer(const std::string& corpus_path, const std::string& model_prefix,
                          int vocab_size);

}  // namespace flexvqa
