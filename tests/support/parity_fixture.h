// Test support: reference-parity fixtures (a model directory, pixel_values, the prompt's logits and
// the greedy tokens, as tests/parity/make_*_fixture.py write them) and the two checks every parity
// test runs against our engine: prompt logits within a tolerance, and greedy decoding through the
// KV cache token for token. Header-only; fp32 on CPU.
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
#include <string>
#include <vector>

#include "model/llava_model.h"
#include "model/nn/kv_cache.h"
#include "model/status.h"
#include "model/weights/model_config.h"

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
    FLEXVQA_ASSIGN_OR_RETURN(f.config, LoadLlavaConfig(dir + "/" + j.value("model_dir", "model")));
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(dir + "/fixture.json: " + e.what());
  }
  if (f.logits.size(0) != static_cast<int64_t>(f.input_ids.size())) {
    return InvalidArgumentError(dir + ": logits has " + std::to_string(f.logits.size(0)) +
                                " rows for " + std::to_string(f.input_ids.size()) + " input ids");
  }
  return f;
}

// Our engine loaded on the fixture's model: fp32, CPU, one KV-cache slot per call.
class ParityHarness {
 public:
  static constexpr int64_t kMaxPositions = 256;

  static StatusOr<std::unique_ptr<ParityHarness>> Open(const std::string& dir) {
    auto h = std::unique_ptr<ParityHarness>(new ParityHarness());
    FLEXVQA_ASSIGN_OR_RETURN(h->fixture_, LoadParityFixture(dir));
    FLEXVQA_ASSIGN_OR_RETURN(h->model_, LlavaModel::Load(h->fixture_.config, at::kFloat,
                                                         at::Device(at::kCPU), kMaxPositions));
    const TextConfig& t = h->fixture_.config.text;
    KvCacheShape shape{t.num_hidden_layers, /*num_slots=*/2, static_cast<int>(kMaxPositions),
                       t.num_key_value_heads, t.head_dim()};
    FLEXVQA_ASSIGN_OR_RETURN(KvCache cache,
                             KvCache::Create(shape, at::kFloat, at::Device(at::kCPU)));
    h->cache_ = std::make_unique<KvCache>(std::move(cache));
    return h;
  }

  const ParityFixture& fixture() const { return fixture_; }
  const LlavaModel& model() const { return *model_; }

  at::Tensor InputIds() const {
    return at::tensor(fixture_.input_ids, at::TensorOptions().dtype(at::kLong));
  }

  // Our logits [T, V] of the fixture's prompt, in a fresh slot.
  at::Tensor PromptLogits() {
    const int slot = cache_->Allocate();
    at::Tensor logits = model_->PromptLogits(InputIds(), fixture_.pixel_values, *cache_, slot);
    cache_->Free(slot);
    return logits;
  }

  // Greedy decoding as the engine does it: prefill the prompt, then one token per step through the
  // KV cache (the generated tokens are plain embeddings, never image features), argmax each time.
  std::vector<int64_t> Greedy(int n) {
    const int slot = cache_->Allocate();
    const LlamaDecoder& decoder = model_->decoder();
    std::vector<int64_t> tokens;
    at::Tensor logits =
        model_->PromptLogits(InputIds(), fixture_.pixel_values, *cache_, slot);  // [T, V]
    int64_t position = static_cast<int64_t>(fixture_.input_ids.size());
    while (true) {
      tokens.push_back(logits[logits.size(0) - 1].argmax().item<int64_t>());
      if (static_cast<int>(tokens.size()) == n) break;
      const at::Tensor id = at::tensor({tokens.back()}, at::TensorOptions().dtype(at::kLong));
      const at::Tensor hidden =
          decoder.Forward(decoder.Embed(id), {{slot, position, 0, 1}}, *cache_);
      logits = decoder.Logits(hidden);  // [1, V]
      ++position;
    }
    cache_->Free(slot);
    return tokens;
  }

 private:
  ParityHarness() = default;
  ParityFixture fixture_;
  std::unique_ptr<LlavaModel> model_;
  std::unique_ptr<KvCache> cache_;
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

// Check (b): greedy decoding with the KV cache gives exactly the fixture's tokens.
inline void ExpectGreedyTokensMatch(ParityHarness& harness) {
  const ParityFixture& f = harness.fixture();
  const std::vector<int64_t> ours = harness.Greedy(static_cast<int>(f.greedy_tokens.size()));
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
}

}  // namespace flexvqa::testing
