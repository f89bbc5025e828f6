// flexvqa_train_tokenizer: trains the tiny LLaMA-like SentencePiece model
// (tools/tiny/tokenizer_trainer.h). A separate program because libsentencepiece must not share a
// process with LibTorch or gRPC.
//   flexvqa_train_tokenizer CORPUS MODEL_PREFIX VOCAB_SIZE
#include <cstdio>
#include <cstdlib>

#include "tools/tiny/tokenizer_trainer.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: flexvqa_train_tokenizer CORPUS MODEL_PREFIX VOCAB_SIZE\n");
    return 2;
  }
  const flexvqa::Status status = flexvqa::TrainTinyTokenizer(argv[1], argv[2], std::atoi(argv[3]));
  if (!status.ok()) {
    std::fprintf(stderr, "flexvqa_train_tokenizer: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
