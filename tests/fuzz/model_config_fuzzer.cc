// ParseLlavaConfigJson on arbitrary text: malformed JSON, wrong types, absurd sizes and missing
// keys are a status, never a crash, an exception or an overflow; an accepted config has positive
// sizes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/weights/model_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto config = flexvqa::ParseLlavaConfigJson(text);
  if (!config.ok()) {
    FUZZ_CHECK(!config.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(config->text.hidden_size > 0 && config->text.num_hidden_layers > 0);
  FUZZ_CHECK(config->vision.image_size > 0 && config->vision.patch_size > 0);
  FUZZ_CHECK(config->num_image_tokens() > 0);
  return 0;
}
