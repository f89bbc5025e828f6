// Test support for FlexAttention: the reference fixture tests/fixtures/flex_tiny (written by
// tests/parity/make_flex_fixture.py) and a harness that runs its cases through the engine as the
// scheduler drives it (PrepareTokens with the case's prompt ids and image, Admit, one packed
// Prefill, lockstep greedy Decode; model/llava_engine.h), at any batch size, recording the logits
// each token was sampled from. The LR-only comparison (plain attention over the 1008 pipeline's LR
// tokens) has no engine mode and runs on LlavaModel with no hooks. Header-only; fp32 on CPU.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/llava_engine.h"
#include "model/llava_model.h"
#include "model/nn/kv_cache.h"
#include "tests/support/engine_runner.h"
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
};

struct FlexRun {
  at::Tensor logits;  // [steps, V] fp32
  std::vector<int64_t> tokens;
  SelectionTrace trace;
  int64_t computed_blocks = 0;
};

// (FA layer, block) pairs a trace ever selected: the HR key/value blocks a lazy engine computed.
inline int64_t BlocksEverSelected(const SelectionTrace& t) {
  const size_t grid = static_cast<size_t>(t.grid) * t.grid;
  std::vector<uint8_t> seen(static_cast<size_t>(t.num_fa_layers) * grid, 0);
  for (int step = 0; step < t.num_steps; ++step) {
    for (size_t i = 0; i < seen.size(); ++i) seen[i] |= t.masks[step * seen.size() + i];
  }
  return std::count(seen.begin(), seen.end(), 1);
}

// The fixture's model behind the engine (8 slots, fp32), with a logits sink.
class FlexHarness {
 public:
  static StatusOr<std::unique_ptr<FlexHarness>> Open(const LlavaConfig& config) {
    auto h = std::unique_ptr<FlexHarness>(new FlexHarness());
    h->config_ = config;
    EngineOptions options;
    options.model_dir = config.model_dir;
    options.max_sequences = 8;
    options.max_context = 1024;
    options.dtype = "float32";
    FLEXVQA_ASSIGN_OR_RETURN(h->engine_, CreateLlavaEngine(options, &h->sink_));
    return h;
  }

  Engine& engine() { return *engine_; }

  // Runs the inputs together through the engine: one prefill, `steps - 1` lockstep greedy decode
  // steps. Each input's logits, tokens and trace are its own.
  std::vector<FlexRun> Run(const std::vector<FlexInput>& inputs, int steps) {
    std::vector<std::shared_ptr<const PreparedRequest>> prepared;
    for (const FlexInput& in : inputs) {
      GenerationRequest r;
      r.sampling.max_new_tokens = steps;
      r.sampling.temperature = 0.0f;
      r.sampling.ignore_eos = true;
      r.selection_threshold = in.threshold;
      std::optional<ImageInput> image;
      if (!in.image_bytes.empty()) image = ImageInput{in.image_bytes, ""};
      auto p = PrepareTokens(*engine_, in.input_ids, image, {}, r);
      EXPECT_TRUE(p.ok()) << p.status().ToString();
      if (!p.ok()) return std::vector<FlexRun>(inputs.size());
      prepared.push_back(*p);
    }
    sink_.Clear();
    const std::vector<EngineRun> engine_runs = RunPreparedInLockstep(*engine_, prepared);
    std::vector<FlexRun> runs(inputs.size());
    auto rows = sink_.rows().begin();  // Sequence ids follow admission order.
    EXPECT_EQ(sink_.rows().size(), inputs.size());
    for (size_t i = 0; i < inputs.size() && rows != sink_.rows().end(); ++i, ++rows) {
      EXPECT_TRUE(engine_runs[i].status.ok()) << engine_runs[i].status.ToString();
      runs[i].tokens.assign(engine_runs[i].tokens.begin(), engine_runs[i].tokens.end());
      runs[i].trace = engine_runs[i].trace;
      runs[i].computed_blocks = BlocksEverSelected(runs[i].trace);
      std::vector<at::Tensor> logits;
      for (const auto& [position, row] : rows->second) logits.push_back(at::tensor(row));
      EXPECT_EQ(static_cast<int>(logits.size()), steps);
      if (!logits.empty()) runs[i].logits = at::stack(logits);
    }
    return runs;
  }

  // Plain causal attention over the 1008 pipeline's LR tokens (no HR keys, no selection): the
  // model with no hooks, batch 1, greedy.
  FlexRun RunLowResOnly(const FlexInput& in, int steps) {
    if (!model_) {
      auto model = LlavaModel::Load(config_, at::kFloat, at::Device(at::kCPU), 1024);
      EXPECT_TRUE(model.ok()) << model.status().ToString();
      const TextConfig& t = config_.text;
      auto cache =
          KvCache::Create({t.num_hidden_layers, 1, 1024, t.num_key_value_heads, t.head_dim()},
                          at::kFloat, at::Device(at::kCPU));
      EXPECT_TRUE(cache.ok());
      if (!model.ok() || !cache.ok()) return {};
      model_ = std::move(*model);
      cache_ = std::make_unique<KvCache>(std::move(*cache));
    }
    const Mode& mode = model_->mode();
    auto image = DecodeImage(in.image_bytes, "", ImageLimits());
    EXPECT_TRUE(image.ok()) << image.status().ToString();
    ModeInput views;
    EXPECT_TRUE(mode.PrepareImage(*image, &views).ok());
    const int64_t hs = mode.preprocess().crop_size, ls = config_.vision.image_size;
    const EncodedImages encoded =
        mode.Encode(model_->encoder(), at::tensor(views.pixels).view({1, 3, ls, ls}),
                    at::tensor(views.highres_pixels).view({1, 3, hs, hs}));
    PromptChunk p;
    p.tokens = &in.input_ids;
    p.slot = cache_->Allocate();
    p.image_features = encoded.sequence[0];
    FlexRun run;
    std::vector<at::Tensor> logits = {model_->PrefillLogits({p}, *cache_)[0]};
    for (int step = 1;; ++step) {
      run.tokens.push_back(logits.back().argmax().item<int64_t>());
      if (step == steps) break;
      logits.push_back(
          model_->DecodeLogits({static_cast<int32_t>(run.tokens.back())}, {p.slot}, *cache_)[0]);
    }
    cache_->Free(p.slot);
    run.logits = at::stack(logits);
    return run;
  }

 private:
  FlexHarness() = default;
  LlavaConfig config_;
  RecordingSink sink_;
  std::unique_ptr<Engine> engine_;
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
