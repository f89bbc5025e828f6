#include "model/text/prompt.h"

#include "model/request_validation.h"

namespace flexvqa {
namespace {

constexpr char kEndOfTurn[] = "</s>";  // sep2 of conv_llava_v1 and conv_vicuna_v1.

// LLaVA llava/conversation.py (commit 053c284), conv_llava_v1 and conv_vicuna_v1.
constexpr char kLlavaV1System[] =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions.";
constexpr char kVicunaV1System[] =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";

struct TemplateSpec {
  ChatTemplate id;
  const char* name;
  const char* system;     // "" for none.
  bool eos_after_answer;  // sep2 = "</s>" (LLaVA's SeparatorStyle.TWO); else " ".
};
// Indexed by the enum's value.
constexpr TemplateSpec kTemplates[] = {
    {ChatTemplate::kLlavaV1, "llava_v1", kLlavaV1System, true},
    {ChatTemplate::kVicunaV1, "vicuna_v1", kVicunaV1System, true},
    {ChatTemplate::kLlavaHf, "llava_hf", "", false},
};
static_assert(kTemplates[0].id == ChatTemplate::kLlavaV1 &&
                  kTemplates[1].id == ChatTemplate::kVicunaV1 &&
                  kTemplates[2].id == ChatTemplate::kLlavaHf,
              "kTemplates is indexed by ChatTemplate");
const TemplateSpec& Spec(ChatTemplate chat_template) {
  return kTemplates[static_cast<int>(chat_template)];
}

// The rendered prompt as text pieces separated by the two places that are not plain text, so that
// the text and the token ids come from one description of the template.
struct PromptPart {
  enum class Kind { kText, kImage, kEos };
  Kind kind;
  std::string text;
};

// conv_*_v1.get_prompt (SeparatorStyle.TWO): system + sep, then "ROLE: message" + seps[i % 2]
// per turn with seps = [" ", "</s>"], then "ASSISTANT:" for the reply to generate. The llava-hf
// chat template (transformers tests/models/llava/test_processor_llava.py pins its output) is the
// same without the system prompt and with " " after answers: "ROLE: " + text + " " per message,
// then "ASSISTANT:".
std::vector<PromptPart> BuildParts(ChatTemplate chat_template, const std::vector<ChatTurn>& turns,
                                   bool has_image) {
  const TemplateSpec& spec = Spec(chat_template);
  std::vector<PromptPart> parts;
  const std::string system = spec.system;
  std::string text = system.empty() ? "" : system + " ";
  for (size_t i = 0; i < turns.size(); ++i) {
    const bool user = turns[i].role == ChatTurn::Role::kUser;
    text += user ? "USER: " : "ASSISTANT: ";
    if (i == 0 && has_image) {
      // llava/eval/run_llava.py and the llava-hf template: "<image>\n" + question
      // (mm_use_im_start_end = false).
      parts.push_back({PromptPart::Kind::kText, std::move(text)});
      parts.push_back({PromptPart::Kind::kImage, ""});
      text = "\n";
    }
    text += turns[i].text;
    if (user || !spec.eos_after_answer) {
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

}  // namespace

StatusOr<ChatTemplate> ParseChatTemplate(std::string_view name) {
  for (const TemplateSpec& spec : kTemplates) {
    if (name == spec.name) return spec.id;
  }
  return InvalidArgumentError("unknown chat template '" + std::string(name.substr(0, 64)) +
                              "': use llava_v1, vicuna_v1 or llava_hf");
}

const char* ChatTemplateName(ChatTemplate chat_template) { return Spec(chat_template).name; }

const char* ChatTemplateSystem(ChatTemplate chat_template) { return Spec(chat_template).system; }

std::string RenderPrompt(ChatTemplate chat_template, const std::vector<ChatTurn>& turns,
                         bool has_image) {
  std::string out;
  for (const PromptPart& part : BuildParts(chat_template, turns, has_image)) {
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
  if (options.has_image && options.num_image_tokens <= 0) {
    return InvalidArgumentError("num_image_tokens must be positive when the prompt has an image");
  }
  std::vector<int32_t> ids;
  bool first_chunk = true;
  for (const PromptPart& part : BuildParts(options.chat_template, turns, options.has_image)) {
    switch (part.kind) {
      case PromptPart::Kind::kText: {
        // tokenizer_image_token encodes every chunk with BOS and drops it from all but the first;
        // each chunk gets sentencepiece's dummy prefix of its own (hence "▁" before the "\n" after
        // the image, 29871 13 in LLaMA's vocabulary, in both LLaVA and llava-hf).
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
