// The LLaVA-1.5 prompt: conversation template "vicuna_v1" (LLaVA llava/conversation.py,
// conv_vicuna_v1, SeparatorStyle.TWO) rendered and tokenised as llava/mm_utils.py
// tokenizer_image_token does, with the image placeholder expanded to one id per image feature. Pure
// functions, thread-safe. Errors: INVALID_ARGUMENT for malformed conversations, with a message fit
// for the API caller.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/engine.h"
#include "model/status.h"
#include "model/text/tokenizer.h"

namespace flexvqa {

inline constexpr char kVicunaV1System[] =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, "
    "detailed, and polite answers to the human's questions.";
inline constexpr char kImagePlaceholder[] = "<image>";

struct PromptOptions {
  bool has_image = false;  // The image joins the first user turn as "<image>\n" + text.
  int image_token_id =
      32000;  // Placeholder id the engine replaces by image features (llava-hf: 32000).
  int num_image_tokens =
      576;  // Copies of image_token_id; > 0 when has_image. Default: CLIP-L/14 @ 336.
};

// Checks the conversation: non-empty, roles alternate user/assistant starting and ending with the
// user, every turn valid UTF-8, non-blank, and free of the literal "<image>".
Status ValidateConversation(const std::vector<ChatTurn>& turns);

// The prompt text exactly as LLaVA renders it, e.g. "<system> USER: <image>\nHi ASSISTANT:";
// earlier answers end with "</s>". No validation.
std::string RenderVicunaV1(const std::vector<ChatTurn>& turns, bool has_image);

// Validates, then tokenises the rendered prompt: BOS, the text chunks (each sentencepiece-encoded
// on its own, as tokenizer_image_token does), num_image_tokens copies of image_token_id where
// "<image>" stands, and eos_id() where the template puts "</s>". A "</s>" typed by the user stays
// plain text.
StatusOr<std::vector<int32_t>> BuildLlavaPrompt(const Tokenizer& tokenizer,
                                                const std::vector<ChatTurn>& turns,
                                                const PromptOptions& options);

}  // namespace flexvqa
