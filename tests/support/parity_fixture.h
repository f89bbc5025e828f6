// Test support: reference-parity fixtures (a model directory, pixel_values, the prompt's logits and
// the greedy tokens, as tests/parity/make_*_fixture.py write them) and the two checks every parity
// test runs against our engine as the scheduler drives it (PrepareTokens, Admit, Prefill, Decode,
// the engine's sampler; model/llava_engine.h): prompt logits within a tolerance, and greedy
// decoding token for token with the logits it chose from. Header-only; fp32 on CPU.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/engine.h"
#include "model/llava_engine.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "tests/support/engine_runner.h"

namespace flexvqa::testing {

// The files of one fixture directory, parsed.
struct ParityFixture {
  std::string dir;
  std::string producer;            // What computed the expected values.
  std::vector<int64_t> input_ids;  // [T], image placeholders included.
  at::Tensor pixel_values;         // [1, 3, S, S] fp32
  at::Tensor logits;               // [T, V] fp32
  std::vector<int64_t> greedy_tokens;
  std::vector<double> greedy_margins;  // Top-1 minus top-2 logit per greedy step (optional).
  std::string model_dir;
  LlavaConfig config;
};

// Reads a raw little-endian float32 file of `shape` (this host is little-endian: x86-64, aarch64).
inline StatusOr<at::Tensor> ReadFloat32File(const std::string& path,
                                            const std::vector<int64_t>& shape) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  if (static_cast<int64_t>(bytes.size()) != t.numel() * 4) {
    return DataLossError(path + " holds " + std::to_string(bytes.size()) + " bytes, expected " +
                         std::to_string(t.numel() * 4));
  }
  std::memcpy(t.data_ptr<float>(), bytes.data(), bytes.size());
  return t;
}

// Loads fixture.json, pixel_values.f32, logits.f32 and the config of the model directory it names.
inline StatusOr<ParityFixture> LoadParityFixture(const std::string& dir) {
  ParityFixture f;
  f.dir = dir;
  std::ifstream in(dir + "/fixture.json");
  if (!in) return NotFoundError("cannot open " + dir + "/fixture.json");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
    f.producer = j.value("producer", "");
    f.input_ids = j.at("input_ids").get<std::vector<int64_t>>();
    f.greedy_tokens = j.at("greedy_tokens").get<std::vector<int64_t>>();
    f.greedy_margins = j.value("greedy_margins", std::vector<double>());
    FLEXVQA_ASSIGN_OR_RETURN(f.pixel_values,
                             ReadFloat32File(dir + "/pixel_values.f32",
                                             j.at("pixel_shape").get<std::vector<int64_t>>()));
    FLEXVQA_ASSIGN_OR_RETURN(
        f.logits,
        ReadFloat32File(dir + "/logits.f32", j.at("logits_shape").get<std::vector<int64_t>>()));
    f.model_dir = dir + "/" + j.value("model_dir", "model");
    FLEXVQA_ASSIGN_OR_RETURN(f.config, LoadLlavaConfig(f.model_dir));
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(dir + "/fixture.json: " + e.what());
  }
  if (f.logits.size(0) != static_cast<int64_t>(f.input_ids.size())) {
    return InvalidArgumentError(dir + ": logits has " + std::to_string(f.logits.size(0)) +
                                " rows for " + std::to_string(f.input_ids.size()) + " input ids");
  }
  return f;
}

// The engine loaded on the fixture's model (fp32, CPU), with a sink that records the logits it
// samples from.
class ParityHarness {
 public:
  static constexpr int kMaxPositions = 256;

  static StatusOr<std::unique_ptr<ParityHarness>> Open(const std::string& dir) {
    auto h = std::unique_ptr<ParityHarness>(new ParityHarness());
    FLEXVQA_ASSIGN_OR_RETURN(h->fixture_, LoadParityFixture(dir));
    EngineOptions options;
    options.model_dir = h->fixture_.model_dir;
    options.max_sequences = 2;
    options.max_context = kMaxPositions;
    options.dtype = "float32";
    FLEXVQA_ASSIGN_OR_RETURN(h->engine_, CreateLlavaEngine(options, &h->sink_));
    return h;
  }

  const ParityFixture& fixture() const { return fixture_; }

  // The fixture's prompt and pixels as the engine's request: greedy, `new_tokens` long.
  StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(int new_tokens) {
    GenerationRequest r;
    r.sampling.max_new_tokens = new_tokens;
    r.sampling.temperature = 0.0f;
    r.sampling.ignore_eos = true;
    const at::Tensor pixels = fixture_.pixel_values.contiguous();
    return PrepareTokens(
        *engine_, std::vector<int32_t>(fixture_.input_ids.begin(), fixture_.input_ids.end()),
        std::nullopt,
        std::vector<float>(pixels.data_ptr<float>(), pixels.data_ptr<float>() + pixels.numel()), r);
  }

  // The engine's logits [T, V] at every prompt position (its prefill, through the sink).
  at::Tensor PromptLogits() {
    sink_.Clear();
    sink_.set_prompt_rows(true);
    auto prepared = Prepare(1);
    EXPECT_TRUE(prepared.ok()) << prepared.status().ToString();
    if (!prepared.ok()) return {};
    const EngineRun run = RunPreparedInLockstep(*engine_, {*prepared})[0];
    EXPECT_TRUE(run.status.ok()) << run.status.ToString();
    sink_.set_prompt_rows(false);
    return Rows(0, static_cast<int>(fixture_.input_ids.size()));
  }

  // Greedy decoding of `n` tokens by the engine; `logits` gets the rows it chose them from [n, V].
  std::vector<int64_t> Greedy(int n, at::Tensor* logits) {
    sink_.Clear();
    auto prepared = Prepare(n);
    EXPECT_TRUE(prepared.ok()) << prepared.status().ToString();
    if (!prepared.ok()) return {};
    const EngineRun run = RunPreparedInLockstep(*engine_, {*prepared})[0];
    EXPECT_TRUE(run.status.ok()) << run.status.ToString();
    EXPECT_EQ(run.reason, FinishReason::kLength);
    *logits = Rows(static_cast<int>(fixture_.input_ids.size()) - 1, n);
    return std::vector<int64_t>(run.tokens.begin(), run.tokens.end());
  }

 private:
  ParityHarness() = default;

  // The one recorded sequence's rows at positions first .. first + count - 1, as [count, V].
  at::Tensor Rows(int first, int count) {
    EXPECT_EQ(sink_.rows().size(), 1u);
    if (sink_.rows().size() != 1) return {};
    const auto& rows = sink_.rows().begin()->second;
    std::vector<at::Tensor> out;
    for (const auto& [position, row] : rows) {
      EXPECT_EQ(position, first + static_cast<int>(out.size())) << "rows must be contiguous";
      out.push_back(at::tensor(row));
    }
    EXPECT_EQ(static_cast<int>(out.size()), count);
    return out.empty() ? at::Tensor() : at::stack(out);
  }

  ParityFixture fixture_;
  RecordingSink sink_;
  std::unique_ptr<Engine> engine_;
};

// Check (a): every prompt position's logits within `tolerance` (max abs diff) of the fixture's.
// The measured difference is printed and recorded as the test property max_abs_logit_diff.
inline void ExpectPromptLogitsMatch(ParityHarness& harness, double tolerance) {
  const ParityFixture& f = harness.fixture();
  const int64_t image_tokens = std::count(f.input_ids.begin(), f.input_ids.end(),
                                          static_cast<int64_t>(f.config.image_token_id));
  ASSERT_EQ(image_tokens, f.config.num_image_tokens())
      << "the fixture's prompt must hold one image's placeholders";
  const at::Tensor ours = harness.PromptLogits();
  ASSERT_TRUE(ours.defined());
  ASSERT_EQ(ours.sizes(), f.logits.sizes());
  const at::Tensor diff = (ours - f.logits).abs();
  const double max_diff = diff.max().item<double>();
  const int64_t worst = diff.argmax().item<int64_t>();
  const int64_t vocab = f.logits.size(1);
  std::printf(
      "[parity] %s: max abs logit diff %.3g over [%lld, %lld] (position %lld, token %lld); "
      "reference: %s\n",
      f.dir.c_str(), max_diff, static_cast<long long>(f.logits.size(0)),
      static_cast<long long>(vocab), static_cast<long long>(worst / vocab),
      static_cast<long long>(worst % vocab), f.producer.c_str());
  ::testing::Test::RecordProperty("max_abs_logit_diff", std::to_string(max_diff));
  EXPECT_LE(max_diff, tolerance) << "max abs logit diff " << max_diff << " at position "
                                 << worst / vocab << ", token " << worst % vocab << " (ours "
                                 << ours.view(-1)[worst].item<float>() << ", reference "
                                 << f.logits.view(-1)[worst].item<float>() << ")";
  // The comparison means something only if the image and the positions move the logits.
  EXPECT_GT((f.logits[0] - f.logits[f.logits.size(0) - 1]).abs().max().item<double>(), 1e-2);
}

// Check (b): greedy decoding by the engine gives exactly the fixture's tokens, every one of them,
// and each step's top-1 minus top-2 logit margin within 2 x the logits' tolerance of the
// reference's (when the fixture records margins): the decode steps' logits agree, not only their
// argmax.
inline void ExpectGreedyTokensMatch(ParityHarness& harness, double tolerance = 1e-4) {
  const ParityFixture& f = harness.fixture();
  at::Tensor logits;
  const std::vector<int64_t> ours =
      harness.Greedy(static_cast<int>(f.greedy_tokens.size()), &logits);
  ASSERT_EQ(ours.size(), f.greedy_tokens.size());
  size_t first_difference = 0;
  while (first_difference < ours.size() &&
         ours[first_difference] == f.greedy_tokens[first_difference]) {
    ++first_difference;
  }
  std::printf("[parity] %s: greedy tokens: the first %zu of %zu identical\n", f.dir.c_str(),
              first_difference, f.greedy_tokens.size());
  if (first_difference < ours.size()) {
    const std::string margin = first_difference < f.greedy_margins.size()
                                   ? " (reference top-1/top-2 margin there: " +
                                         std::to_string(f.greedy_margins[first_difference]) + ")"
                                   : "";
    ADD_FAILURE() << "greedy token " << first_difference << " differs: ours "
                  << ours[first_difference] << ", reference " << f.greedy_tokens[first_difference]
                  << margin;
  }
  ASSERT_TRUE(logits.defined());
  ASSERT_EQ(logits.size(0), static_cast<int64_t>(ours.size()));
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(logits[i].argmax().item<int64_t>(), ours[i]) << "step " << i << " sampled greedily";
  }
  if (f.greedy_margins.empty()) return;
  ASSERT_EQ(f.greedy_margins.size(), ours.size());
  const at::Tensor top2 = std::get<0>(logits.topk(2, 1));  // [n, 2]
  const at::Tensor margins = top2.select(1, 0) - top2.select(1, 1);
  const at::Tensor expected = at::tensor(f.greedy_margins, at::TensorOptions().dtype(at::kDouble));
  const double worst = (margins.to(at::kDouble) - expected).abs().max().item<double>();
  std::printf("[parity] %s: max |margin diff| over %zu greedy steps: %.3g\n", f.dir.c_str(),
              ours.size(), worst);
  EXPECT_LE(worst, 2 * tolerance);
}

}  // namespace flexvqa::testing
