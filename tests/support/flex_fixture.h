// Test support for FlexAttention: the reference fixture tests/fixtures/flex_tiny (written by
// tests/parity/make_flex_fixture.py) and a harness that runs its cases through the same LlavaModel
// functions the engine uses (two-resolution vision pass, packed prefill, lockstep greedy decode,
// one HighResSequence per request, FlexAttention hook), at any batch size. Header-only; fp32 on
// CPU.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/llava_model.h"
#include "model/modes/flex_attention.h"
#include "model/nn/kv_cache.h"
#include "tests/support/parity_fixture.h"
#include "tests/support/tiny_model.h"

namespace flexvqa::testing {

inline constexpr char kFlexFixtureDir[] = "tests/fixtures/flex_tiny";

struct FlexCase {
  std::string image;  // File name in the fixture directory.
  int width = 0, height = 0;
  std::vector<int32_t> input_ids;
  int threshold = 0;
  std::vector<int64_t> tokens;                  // Reference greedy tokens.
  std::vector<std::vector<std::string>> masks;  // [step][fa layer]: 81 chars of 0/1.
  std::vector<std::vector<double>> margins;     // [step]: selection margins..., greedy margin.
  at::Tensor logits;                            // [steps, V]
};

struct FlexFixture {
  std::string dir;
  int steps = 0;
  std::vector<FlexCase> cases;
  LlavaConfig config;
};

inline StatusOr<FlexFixture> LoadFlexFixture(const std::string& relative = kFlexFixtureDir) {
  FlexFixture f;
  f.dir = std::string(FLEXVQA_SOURCE_DIR) + "/" + relative;
  std::ifstream in(f.dir + "/fixture.json");
  if (!in) return NotFoundError("cannot open " + f.dir + "/fixture.json");
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    f.steps = j.at("steps").get<int>();
    const int64_t vocab = j.at("vocab").get<int64_t>();
    const auto& cases = j.at("cases");
    FLEXVQA_ASSIGN_OR_RETURN(at::Tensor logits,
                             ReadFloat32File(f.dir + "/logits.f32",
                                             {static_cast<int64_t>(cases.size()), f.steps, vocab}));
    for (size_t i = 0; i < cases.size(); ++i) {
      const auto& c = cases[i];
      FlexCase fc;
      fc.image = c.at("image").get<std::string>();
      fc.width = c.at("width").get<int>();
      fc.height = c.at("height").get<int>();
      fc.input_ids = c.at("input_ids").get<std::vector<int32_t>>();
      fc.threshold = c.at("threshold").get<int>();
      fc.tokens = c.at("tokens").get<std::vector<int64_t>>();
      fc.masks = c.at("masks").get<std::vector<std::vector<std::string>>>();
      fc.margins = c.at("margins").get<std::vector<std::vector<double>>>();
      fc.logits = logits[static_cast<int64_t>(i)];
      f.cases.push_back(std::move(fc));
    }
    FLEXVQA_ASSIGN_OR_RETURN(f.config,
                             LoadLlavaConfig(f.dir + "/" + j.value("model_dir", "model")));
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(f.dir + "/fixture.json: " + e.what());
  }
  return f;
}

// One request for the harness: prompt ids (image placeholders expanded), an encoded image, the
// threshold.
struct FlexInput {
  std::vector<int32_t> input_ids;
  std::string image_bytes;  // Empty: no image.
  int threshold = 48;
  bool hierarchical = true;  // false: LR-only (the 1008 pipeline's LR tokens, plain attention).
};

struct FlexRun {
  at::Tensor logits;  // [steps, V] fp32
  std::vector<int64_t> tokens;
  SelectionTrace trace;
  int64_t computed_blocks = 0;
};

// The fixture's model loaded as the engine loads it, with a KV cache of 8 slots.
class FlexHarness {
 public:
  static StatusOr<std::unique_ptr<FlexHarness>> Open(const LlavaConfig& config) {
    auto h = std::unique_ptr<FlexHarness>(new FlexHarness());
    h->config_ = config;
    FLEXVQA_ASSIGN_OR_RETURN(h->model_,
                             LlavaModel::Load(config, at::kFloat, at::Device(at::kCPU), 1024));
    const TextConfig& t = config.text;
    KvCacheShape shape{t.num_hidden_layers, 8, 1024, t.num_key_value_heads, t.head_dim()};
    FLEXVQA_ASSIGN_OR_RETURN(KvCache cache,
                             KvCache::Create(shape, at::kFloat, at::Device(at::kCPU)));
    h->cache_ = std::make_unique<KvCache>(std::move(cache));
    return h;
  }

  const LlavaModel& model() const { return *model_; }

  // Runs the inputs together: one vision pass, one packed prefill, `steps - 1` lockstep greedy
  // decode steps. Each input's logits and trace are its own.
  std::vector<FlexRun> Run(const std::vector<FlexInput>& inputs, int steps) {
    const FlexAttentionConfig& fc = config_.flex;
    PreprocessOptions pre;
    pre.crop_size = pre.resize_shortest_edge = fc.highres_size;
    pre.mean = config_.image_mean;
    pre.std = config_.image_std;
    pre.pad_to_square = config_.image_aspect_ratio == "pad";
    std::vector<at::Tensor> highs, lows;
    std::vector<std::array<int, 2>> sizes;
    for (const FlexInput& in : inputs) {
      if (in.image_bytes.empty()) continue;
      auto image = DecodeImage(in.image_bytes, "", ImageLimits());
      EXPECT_TRUE(image.ok()) << image.status().ToString();
      auto views = PreprocessFlexAttention(*image, pre, fc.lowres_size);
      EXPECT_TRUE(views.ok()) << views.status().ToString();
      const int64_t hs = fc.highres_size, ls = fc.lowres_size;
      highs.push_back(at::tensor(views->high).view({3, hs, hs}));
      lows.push_back(at::tensor(views->low).view({3, ls, ls}));
      sizes.push_back({image->width, image->height});
    }
    at::Tensor lr, hr;
    if (!highs.empty())
      std::tie(lr, hr) = model_->EncodeTwoResolutions(at::stack(highs), at::stack(lows));
    std::vector<std::unique_ptr<HighResSequence>> states(inputs.size());
    std::vector<PromptChunk> prompts;
    std::vector<int> slots;
    int image = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      PromptChunk p;
      p.tokens = &inputs[i].input_ids;
      p.slot = cache_->Allocate();
      slots.push_back(p.slot);
      if (!inputs[i].image_bytes.empty()) {
        p.image_features = lr[image];
        if (inputs[i].hierarchical) {
          const auto& ids = inputs[i].input_ids;
          const int64_t begin =
              std::find(ids.begin(), ids.end(), config_.image_token_id) - ids.begin();
          states[i] = std::make_unique<HighResSequence>(*model_->highres(), hr[image].clone(),
                                                        begin, sizes[image][0], sizes[image][1],
                                                        inputs[i].threshold);
        }
        ++image;
      }
      prompts.push_back(p);
    }
    std::vector<HighResSequence*> raw;
    for (auto& s : states) raw.push_back(s.get());
    std::vector<std::vector<at::Tensor>> logits(inputs.size());
    std::vector<FlexRun> runs(inputs.size());
    at::Tensor step_logits;
    {
      FlexAttention hook(*model_->highres(), raw);
      step_logits = model_->PrefillLogits(prompts, *cache_, &hook);
    }
    for (int step = 0;; ++step) {
      std::vector<int32_t> next;
      for (size_t i = 0; i < inputs.size(); ++i) {
        logits[i].push_back(step_logits[static_cast<int64_t>(i)]);
        runs[i].tokens.push_back(step_logits[static_cast<int64_t>(i)].argmax().item<int64_t>());
        next.push_back(static_cast<int32_t>(runs[i].tokens.back()));
      }
      if (step + 1 == steps) break;
      FlexAttention hook(*model_->highres(), raw);
      step_logits = model_->DecodeLogits(next, slots, *cache_, &hook);
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      runs[i].logits = at::stack(logits[i]);
      if (states[i]) {
        runs[i].trace = states[i]->trace();
        runs[i].computed_blocks = states[i]->computed_blocks();
      }
      cache_->Free(slots[i]);
    }
    return runs;
  }

 private:
  FlexHarness() = default;
  LlavaConfig config_;
  std::unique_ptr<LlavaModel> model_;
  std::unique_ptr<KvCache> cache_;
};

inline std::string ReadFixtureFile(const FlexFixture& f, const std::string& name) {
  std::ifstream in(f.dir + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing " << f.dir << "/" << name;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline FlexInput InputOf(const FlexFixture& f, const FlexCase& c) {
  FlexInput in;
  in.input_ids = c.input_ids;
  in.image_bytes = ReadFixtureFile(f, c.image);
  in.threshold = c.threshold;
  return in;
}

// The trace's mask of (step, fa layer) as 81 chars of 0/1.
inline std::string MaskString(const SelectionTrace& t, int step, int fa) {
  const size_t n = static_cast<size_t>(t.grid) * t.grid;
  const size_t at = (static_cast<size_t>(step) * t.num_fa_layers + fa) * n;
  std::string s;
  for (size_t i = 0; i < n; ++i) s += t.masks[at + i] ? '1' : '0';
  return s;
}

}  // namespace flexvqa::testing
