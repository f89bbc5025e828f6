// The LLaVA-1.5 prompt in one of three named chat templates (docs/chat_templates.md), rendered and
// tokenised as the reference code does, with the image placeholder expanded to one id per image
// feature. Pure functions, thread-safe. The conversation is validated beforehand, once, by
// model/request_validation.h; these functions assume a valid one.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/engine.h"
#include "model/status.h"
#include "model/text/tokenizer.h"

namespace flexvqa {

enum class ChatTemplate {
  // LLaVA llava/conversation.py conv_llava_v1 (SeparatorStyle.TWO): "A chat between a curious
  // human ..." + " USER: q ASSISTANT: a</s>USER: ... ASSISTANT:".
  kLlavaV1,
  // conv_vicuna_v1: the same with "... curious user ... user's questions", what LLaVA-1.5's
  // evaluation scripts pass (--conv-mode vicuna_v1). Default for the original-LLaVA layout.
  kVicunaV1,
  // The llava-hf processor's chat template: "USER: <image>\nq ASSISTANT: a USER: ... ASSISTANT:",
  // no system prompt, no "</s>" after answers. Default for the llava-hf layout.
  kLlavaHf,
};

// "llava_v1" | "vicuna_v1" | "llava_hf". INVALID_ARGUMENT naming the choices otherwise.
StatusOr<ChatTemplate> ParseChatTemplate(std::string_view name);
const char* ChatTemplateName(ChatTemplate chat_template);
// The system prompt of conv_llava_v1 and conv_vicuna_v1; "" for llava_hf.
const char* ChatTemplateSystem(ChatTemplate chat_template);

struct PromptOptions {
  bool has_image = false;  // The image joins the first user turn as "<image>\n" + text.
  // Placeholder id the engine replaces by image features (llava-hf: 32000).
  int image_token_id = 32000;
  // Copies of image_token_id; > 0 when has_image. Default: CLIP-L/14 @ 336.
  int num_image_tokens = 576;
  // Default: LLaVA-1.5's evaluation template. The engine sets its own (ModelInfo::chat_template).
  ChatTemplate chat_template = ChatTemplate::kVicunaV1;
};

// The prompt text exactly as the template renders it, e.g. llava_hf's
// "USER: <image>\nHi ASSISTANT:".
std::string RenderPrompt(ChatTemplate chat_template, const std::vector<ChatTurn>& turns,
                         bool has_image);

// Tokenises the rendered prompt as the template's own code does: BOS, then each stretch of text
// between the image and end-of-turn markers sentencepiece-encoded on its own with its dummy prefix
// (LLaVA's tokenizer_image_token; Hugging Face's tokenizer splits at the added <image> token and
// prefixes each piece the same way), num_image_tokens copies of image_token_id where "<image>"
// stands, and eos_id() where the template puts "</s>". A "</s>" typed by the user stays text.
// INVALID_ARGUMENT only for num_image_tokens <= 0 with an image.
StatusOr<std::vector<int32_t>> BuildLlavaPrompt(const Tokenizer& tokenizer,
                                                const std::vector<ChatTurn>& turns,
                                                const PromptOptions& options);

}  // namespace flexvqa
