#include "model/text/prompt.h"

#include <string_view>

#include "model/text/utf8.h"

namespace flexvqa {
namespace {

constexpr char kEndOfTurn[] = "</s>";  // sep2 of conv_vicuna_v1.

// The rendered prompt as text pieces separated by the two places that are not plain text, so that
// the text and the token ids come from one description of the template.
struct PromptPart {
  enum class Kind { kText, kImage, kEos };
  Kind kind;
  std::string text;
};

// conv_vicuna_v1.get_prompt (SeparatorStyle.TWO): system + sep, then "ROLE: message" + seps[i % 2]
// per turn with seps = [" ", "</s>"], then "ASSISTANT:" for the reply to generate.
std::vector<PromptPart> BuildParts(const std::vector<ChatTurn>& turns, bool has_image) {
  std::vector<PromptPart> parts;
  std::string text = std::string(kVicunaV1System) + " ";
  for (size_t i = 0; i < turns.size(); ++i) {
    const bool user = turns[i].role == ChatTurn::Role::kUser;
    text += user ? "USER: " : "ASSISTANT: ";
    if (i == 0 && has_image) {
      // llava/eval/run_llava.py: DEFAULT_IMAGE_TOKEN + "\n" + question (mm_use_im_start_end =
      // false).
      parts.push_back({PromptPart::Kind::kText, std::move(text)});
      parts.push_back({PromptPart::Kind::kImage, ""});
      text = "\n";
    }
    text += turns[i].text;
    if (i % 2 == 0) {
      text += " ";
    } else {
      parts.push_back({PromptPart::Kind::kText, std::move(text)});
      parts.push_back({PromptPart::Kind::kEos, ""});
      text.clear();
    }
  }
  text += "ASSISTANT:";
  parts.push_back({PromptPart::Kind::kText, std::move(text)});
  return parts;
}

std::string_view Trim(std::string_view s) {
  const char* kSpace = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

}  // namespace

Status ValidateConversation(const std::vector<ChatTurn>& turns) {
  if (turns.empty())
    return InvalidArgumentError("the conversation has no turns; send at least a question");
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string where = "turn " + std::to_string(i);
    const ChatTurn::Role expected = i % 2 == 0 ? ChatTurn::Role::kUser : ChatTurn::Role::kAssistant;
    if (turns[i].role != expected) {
      return InvalidArgumentError(
          where + " must be the " + (expected == ChatTurn::Role::kUser ? "user's" : "assistant's") +
          ": turns alternate user, assistant, user, ... starting with the user");
    }
    if (!IsValidUtf8(turns[i].text)) {
      return InvalidArgumentError(where + " is not valid UTF-8 (first bad byte at offset " +
                                  std::to_string(ValidUtf8PrefixLength(turns[i].text)) + ")");
    }
    if (turns[i].text.find(kImagePlaceholder) != std::string::npos) {
      return InvalidArgumentError(where +
                                  " contains the reserved text \"<image>\"; send the image in the "
                                  "image field, it is placed in the prompt automatically");
    }
    if (Trim(turns[i].text).empty())
      return InvalidArgumentError(where + " is empty or only whitespace");
  }
  if (turns.back().role != ChatTurn::Role::kUser) {
    return InvalidArgumentError(
        "the last turn must be the user's question, not an assistant answer");
  }
  return Status::Ok();
}

std::string RenderVicunaV1(const std::vector<ChatTurn>& turns, bool has_image) {
  std::string out;
  for (const PromptPart& part : BuildParts(turns, has_image)) {
    switch (part.kind) {
      case PromptPart::Kind::kText:
        out += part.text;
        break;
      case PromptPart::Kind::kImage:
        out += kImagePlaceholder;
        break;
      case PromptPart::Kind::kEos:
        out += kEndOfTurn;
        break;
    }
  }
  return out;
}

StatusOr<std::vector<int32_t>> BuildLlavaPrompt(const Tokenizer& tokenizer,
                                                const std::vector<ChatTurn>& turns,
                                                const PromptOptions& options) {
  FLEXVQA_RETURN_IF_ERROR(ValidateConversation(turns));
  if (options.has_image && options.num_image_tokens <= 0) {
    return InvalidArgumentError("num_image_tokens must be positive when the prompt has an image");
  }
  std::vector<int32_t> ids;
  bool first_chunk = true;
  for (const PromptPart& part : BuildParts(turns, options.has_image)) {
    switch (part.kind) {
      case PromptPart::Kind::kText: {
        // tokenizer_image_token encodes every chunk with BOS and drops it from all but the first;
        // each chunk gets sentencepiece's dummy prefix of its own (hence "▁" before the "\n" after
        // the image).
        const std::vector<int32_t> chunk = tokenizer.Encode(part.text, first_chunk);
        ids.insert(ids.end(), chunk.begin(), chunk.end());
        break;
      }
      case PromptPart::Kind::kImage:
        ids.insert(ids.end(), static_cast<size_t>(options.num_image_tokens),
                   options.image_token_id);
        break;
      case PromptPart::Kind::kEos:
        ids.push_back(tokenizer.eos_id());
        break;
    }
    first_chunk = false;
  }
  return ids;
}

}  // namespace flexvqa
