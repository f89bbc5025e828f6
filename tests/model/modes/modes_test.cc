// The attention modes hd, composite and xattn (docs/modes.md) against a plain reference of their
// equations written here: full [T x T] attention matrices (and [T x M] cross-attention), no KV
// cache, batch 1, the whole sequence recomputed at every greedy step. The engine's LlavaModel path
// (packed prefill, KV-cache decode) must match its logits within 1e-4 for 16 steps and the engine
// its greedy tokens, alone and batched. The vision tower and the two-view preprocessing are shared
// with full/flex and tested there (hf_parity_test, flex_parity_test); here the reference stitches
// hd's tiles itself.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include "model/engine.h"
#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/llava_model.h"
#include "model/modes/mode.h"
#include "model/nn/flop_counter.h"
#include "model/nn/kv_cache.h"
#include "model/text/prompt.h"
#include "model/text/tokenizer.h"
#include "model/weights/weights.h"
#include "tests/support/engine_runner.h"
#include "tests/support/tiny_model.h"
#include "tools/tiny/tiny_llava.h"

namespace flexvqa {
namespace {

constexpr int kSteps = 16;

std::string TinyModeDir(const std::string& mode) {
  static std::map<std::string, std::string> dirs;
  auto it = dirs.find(mode);
  if (it != dirs.end()) return it->second;
  const std::string dir =
      ::testing::TempDir() + "flexvqa_tiny_mode_" + std::to_string(getpid()) + "_" + mode;
  TinyLlavaOptions options;
  options.layout = CheckpointLayout::kOriginalLlava;
  options.mode = mode;
  const Status status = WriteTinyLlava(dir, options);
  EXPECT_TRUE(status.ok()) << status.ToString();
  dirs[mode] = dir;
  return dir;
}

// The LLaMA decoder's equations over one whole sequence, written out.
class PlainReference {
 public:
  explicit PlainReference(const LlavaConfig& config) : config_(config) {
    auto weights = WeightLoader::Open(config);
    EXPECT_TRUE(weights.ok()) << weights.status().ToString();
    const TextConfig& t = config.text;
    const int64_t d = t.hidden_size, dh = t.head_dim(), h = t.num_attention_heads,
                  kv = t.num_key_value_heads, inter = t.intermediate_size;
    auto get = [&](WeightSection s, const std::string& name, std::vector<int64_t> shape) {
      auto w = (*weights)->Get(s, name, shape, at::kFloat, at::Device(at::kCPU));
      EXPECT_TRUE(w.ok()) << w.status().ToString();
      return w.ok() ? *w : at::Tensor();
    };
    embed_ = get(WeightSection::kText, "embed_tokens.weight", {t.vocab_size, d});
    norm_ = get(WeightSection::kText, "norm.weight", {d});
    lm_head_ = get(WeightSection::kLmHead, "weight", {t.vocab_size, d});
    for (int i = 0; i < t.num_hidden_layers; ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      Layer l;
      l.in_norm = get(WeightSection::kText, p + "input_layernorm.weight", {d});
      l.q = get(WeightSection::kText, p + "self_attn.q_proj.weight", {h * dh, d});
      l.k = get(WeightSection::kText, p + "self_attn.k_proj.weight", {kv * dh, d});
      l.v = get(WeightSection::kText, p + "self_attn.v_proj.weight", {kv * dh, d});
      l.o = get(WeightSection::kText, p + "self_attn.o_proj.weight", {d, h * dh});
      l.post_norm = get(WeightSection::kText, p + "post_attention_layernorm.weight", {d});
      l.gate = get(WeightSection::kText, p + "mlp.gate_proj.weight", {inter, d});
      l.up = get(WeightSection::kText, p + "mlp.up_proj.weight", {inter, d});
      l.down = get(WeightSection::kText, p + "mlp.down_proj.weight", {d, inter});
      if (config.mode.cross_attends(i)) {
        const int64_t c = config.mode.xattn_hidden;
        l.cross_norm = get(WeightSection::kText, p + "cross_attn_norm.weight", {d});
        l.cross_q = get(WeightSection::kText, p + "cross_attn.q_proj.weight", {c, d});
        l.cross_k = get(WeightSection::kText, p + "cross_attn.k_proj.weight", {c, d});
        l.cross_v = get(WeightSection::kText, p + "cross_attn.v_proj.weight", {c, d});
        l.cross_o = get(WeightSection::kText, p + "cross_attn.o_proj.weight", {d, c});
      }
      layers_.push_back(l);
    }
  }

  // ids [T] with the image placeholder rows taking `features` [n, D] in order;
  // `image_skips_attention`: composite. `highres` [M, D] (xattn): the HR features the
  // cross-attending layers read. Returns fp32 logits [T, V].
  at::Tensor Logits(const std::vector<int32_t>& ids, const at::Tensor& features,
                    bool image_skips_attention, const at::Tensor& highres = {}) {
    const TextConfig& t = config_.text;
    const int64_t n = static_cast<int64_t>(ids.size()), h = t.num_attention_heads,
                  dh = t.head_dim();
    const int64_t kv = t.num_key_value_heads;
    std::vector<at::Tensor> rows;
    at::Tensor image_row = at::zeros({n}, at::kBool);
    int64_t next_feature = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] == config_.image_token_id) {
        rows.push_back(features[next_feature++]);
        image_row[i] = true;
      } else {
        rows.push_back(embed_[ids[i]]);
      }
    }
    at::Tensor x = at::stack(rows);  // [T, D]
    // RoPE: angle(p, i) = p theta^(-2i/Dh), duplicated to Dh; rotate_half pairs x_i with x_{i +
    // Dh/2}.
    const at::Tensor inv_freq =
        at::pow(t.rope_theta, -at::arange(0, dh, 2, at::kFloat) / static_cast<double>(dh));
    const at::Tensor angles = at::arange(n, at::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);
    const at::Tensor cos = at::cat({angles, angles}, 1).cos(),
                     sin = at::cat({angles, angles}, 1).sin();
    auto rope = [&](const at::Tensor& y) {  // [heads, T, Dh]
      const at::Tensor rotated = at::cat({-y.narrow(2, dh / 2, dh / 2), y.narrow(2, 0, dh / 2)}, 2);
      return y * cos + rotated * sin;
    };
    auto rms = [&](const at::Tensor& y, const at::Tensor& w) {
      return y * at::rsqrt(y.pow(2).mean(-1, true) + t.rms_norm_eps) * w;
    };
    const at::Tensor future = at::ones({n, n}, at::kBool).triu(1);  // key j > query i
    for (const Layer& l : layers_) {
      const at::Tensor hs = rms(x, l.in_norm);
      const at::Tensor q = rope(at::matmul(hs, l.q.t()).view({n, h, dh}).transpose(0, 1));
      at::Tensor k = rope(at::matmul(hs, l.k.t()).view({n, kv, dh}).transpose(0, 1));
      at::Tensor v = at::matmul(hs, l.v.t()).view({n, kv, dh}).transpose(0, 1);
      k = k.repeat_interleave(h / kv, 0);
      v = v.repeat_interleave(h / kv, 0);
      at::Tensor scores =
          at::matmul(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(dh));  // [H, T, T]
      scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
      at::Tensor attn = at::matmul(at::softmax(scores, -1), v);  // [H, T, Dh]
      if (image_skips_attention) {
        // composite: an image row's attention output is zero, so its residual adds nothing.
        attn = attn.masked_fill(image_row.view({1, n, 1}), 0.0);
      }
      x = x + at::matmul(attn.transpose(0, 1).reshape({n, h * dh}), l.o.t());
      if (l.cross_q.defined() && highres.defined()) {
        // xattn: every row attends to every HR token (no mask, no RoPE), after self-attention,
        // residual.
        const int64_t hc = config_.mode.xattn_heads, dc = config_.mode.xattn_hidden / hc,
                      m = highres.size(0);
        const at::Tensor cq =
            at::matmul(rms(x, l.cross_norm), l.cross_q.t()).view({n, hc, dc}).transpose(0, 1);
        const at::Tensor ck = at::matmul(highres, l.cross_k.t()).view({m, hc, dc}).transpose(0, 1);
        const at::Tensor cv = at::matmul(highres, l.cross_v.t()).view({m, hc, dc}).transpose(0, 1);
        const at::Tensor probs =
            at::softmax(at::matmul(cq, ck.transpose(1, 2)) / std::sqrt(static_cast<double>(dc)),
                        -1);  // [Hc, T, M]
        x = x +
            at::matmul(at::matmul(probs, cv).transpose(0, 1).reshape({n, hc * dc}), l.cross_o.t());
      }
      const at::Tensor h2 = rms(x, l.post_norm);
      x = x +
          at::matmul(at::silu(at::matmul(h2, l.gate.t())) * at::matmul(h2, l.up.t()), l.down.t());
    }
    return at::matmul(rms(x, norm_), lm_head_.t());
  }

  // Greedy decoding, recomputing the whole sequence every step. Returns the tokens and the logits
  // that chose them [steps, V].
  std::pair<std::vector<int32_t>, at::Tensor> Greedy(std::vector<int32_t> ids,
                                                     const at::Tensor& features,
                                                     bool image_skips_attention,
                                                     const at::Tensor& highres, int steps) {
    const size_t prompt = ids.size();
    at::Tensor logits;
    for (int s = 0; s < steps; ++s) {
      logits = Logits(ids, features, image_skips_attention, highres);
      ids.push_back(static_cast<int32_t>(logits[-1].argmax().item<int64_t>()));
    }
    // Causal: the last forward's rows hold every step's logits.
    return {std::vector<int32_t>(ids.begin() + prompt, ids.end()),
            logits.narrow(0, prompt - 1, steps)};
  }

 private:
  struct Layer {
    at::Tensor in_norm, q, k, v, o, post_norm, gate, up, down;
    at::Tensor cross_norm, cross_q, cross_k, cross_v, cross_o;  // xattn layers only.
  };
  LlavaConfig config_;
  at::Tensor embed_, norm_, lm_head_;
  std::vector<Layer> layers_;
};

struct Case {
  std::string image;  // Source-tree path; empty: text only.
  std::string question;
};

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"tests/fixtures/flex_tiny/img_0_64x40.png", "What is in the picture?"},
      {"tests/fixtures/flex_tiny/img_1_30x72.png", "Where is the bright spot?"},
      {"tests/fixtures/preprocess/photo_64x48.jpg", "Describe the image."},
      {"", "Tell me a story."},
  };
  return cases;
}

class ModesTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = TinyModeDir(GetParam());
    auto config = LoadLlavaConfig(dir_);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    config_ = *config;
    ASSERT_STREQ(AttentionModeName(config_.mode.attention), GetParam().c_str());
  }

  // HR tiles per side and the image's tokens in the sequence, as docs/modes.md defines them.
  int Zoom() const {
    if (GetParam() == "hd") return config_.mode.hd_zoom;
    return GetParam() == "xattn" ? config_.mode.xattn_zoom : 0;
  }
  int ImageTokens() const {
    const int g = config_.vision.image_size / config_.vision.patch_size;
    return g * g + (GetParam() == "hd" ? Zoom() * g * Zoom() * g : 0);
  }

  GenerationRequest Request(const Case& c) const {
    GenerationRequest r;
    r.turns.push_back({ChatTurn::Role::kUser, c.question});
    if (!c.image.empty()) r.image = ImageInput{testing::ReadSourceFile(c.image), ""};
    r.sampling.max_new_tokens = kSteps;
    r.sampling.ignore_eos = true;
    return r;
  }

  std::vector<int32_t> PromptIds(const Case& c) const {
    auto tokenizer = Tokenizer::Load(dir_ + "/tokenizer.model");
    EXPECT_TRUE(tokenizer.ok());
    PromptOptions options;
    options.has_image = !c.image.empty();
    options.image_token_id = config_.image_token_id;
    options.num_image_tokens = ImageTokens();
    auto ids = BuildLlavaPrompt(**tokenizer, Request(c).turns, options);
    EXPECT_TRUE(ids.ok());
    return *ids;
  }

  // The image's rows as the mode defines them (and xattn's HR memory), built plainly from the
  // shared vision tower.
  struct Features {
    at::Tensor sequence;  // [image tokens, D]
    at::Tensor highres;   // xattn: [M, D]
  };
  Features ReferenceFeatures(const LlavaModel& model, const Case& c) const {
    if (c.image.empty()) return {};
    auto image = DecodeImage(testing::ReadSourceFile(c.image), "", ImageLimits());
    EXPECT_TRUE(image.ok());
    const int s = config_.vision.image_size;
    PreprocessOptions pre;
    pre.mean = config_.image_mean;
    pre.std = config_.image_std;
    pre.pad_to_square = config_.image_aspect_ratio == "pad";
    if (Zoom() == 0) {
      pre.crop_size = pre.resize_shortest_edge = s;
      auto pixels = PreprocessLlava(*image, pre);
      EXPECT_TRUE(pixels.ok());
      return {model.EncodeImages(at::tensor(*pixels).view({1, 3, s, s}))[0], {}};
    }
    // hd and xattn: LR tokens of the downsampled view; the Z x Z tiles' tokens on one (Z g) x (Z g)
    // grid, row-major (hd: after the LR tokens in the sequence; xattn: the cross-attention memory).
    const int z = Zoom(), g = s / config_.vision.patch_size;
    pre.crop_size = pre.resize_shortest_edge = z * s;
    auto views = PreprocessFlexAttention(*image, pre, s);
    EXPECT_TRUE(views.ok());
    const at::Tensor high = at::tensor(views->high).view({3, z * s, z * s});
    const at::Tensor low =
        model.EncodeImages(at::tensor(views->low).view({1, 3, s, s}))[0];  // [g^2, D]
    at::Tensor hr = at::zeros({z * g * z * g, low.size(1)});
    for (int ty = 0; ty < z; ++ty) {
      for (int tx = 0; tx < z; ++tx) {
        const at::Tensor tile = high.narrow(1, ty * s, s).narrow(2, tx * s, s).unsqueeze(0);
        const at::Tensor f = model.EncodeImages(tile)[0];  // [g^2, D]
        for (int r = 0; r < g; ++r) {
          for (int col = 0; col < g; ++col)
            hr[(ty * g + r) * (z * g) + tx * g + col] = f[r * g + col];
        }
      }
    }
    if (GetParam() == "xattn") return {low, hr};
    return {at::cat({low, hr}, 0), {}};
  }

  std::string dir_;
  LlavaConfig config_;
};

std::vector<std::vector<int32_t>> RunEngine(Engine& engine,
                                            const std::vector<GenerationRequest>& requests) {
  std::vector<std::vector<int32_t>> tokens;
  for (const testing::EngineRun& run : testing::RunInLockstep(engine, requests)) {
    EXPECT_TRUE(run.status.ok()) << run.status.ToString();
    tokens.push_back(run.tokens);
  }
  return tokens;
}

TEST_P(ModesTest, MatchesPlainReference) {
  auto model = LlavaModel::Load(config_, at::kFloat, at::Device(at::kCPU),
                                config_.text.max_position_embeddings);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const TextConfig& t = config_.text;
  KvCacheShape shape{t.num_hidden_layers, 1, t.max_position_embeddings, t.num_key_value_heads,
                     t.head_dim()};
  auto cache = KvCache::Create(shape, at::kFloat, at::Device(at::kCPU));
  ASSERT_TRUE(cache.ok());
  PlainReference reference(config_);
  EngineOptions options;
  options.model_dir = dir_;
  options.max_sequences = 4;
  auto engine = CreateLlavaEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  EXPECT_EQ((*engine)->Info().mode, GetParam());
  const bool composite = GetParam() == "composite";
  double worst = 0;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.image + " " + c.question);
    const std::vector<int32_t> ids = PromptIds(c);
    const auto [features, highres] = ReferenceFeatures(**model, c);
    if (features.defined()) {
      ASSERT_EQ(features.size(0), ImageTokens());
    }
    const auto [tokens, expected] = reference.Greedy(ids, features, composite, highres, kSteps);
    // The engine's model path with the reference's image rows: the mode's sequence state and
    // hooks (model/modes/mode.h), packed prefill, then KV-cache decode fed the reference's tokens.
    const Mode& mode = (*model)->mode();
    const std::unique_ptr<SlotPools> pools = mode.CreateSlotPools(1);
    PromptChunk chunk;
    chunk.tokens = &ids;
    chunk.slot = cache->Allocate();
    if (features.defined()) chunk.image_features = features;
    ModeInput input;
    SequenceStart start;
    start.tokens = &ids;
    start.input = &input;
    start.highres = highres;
    start.slot = chunk.slot;
    start.pools = pools.get();
    if (features.defined()) {
      start.image_begin = std::find(ids.begin(), ids.end(), config_.image_token_id) - ids.begin();
    }
    const std::unique_ptr<SequenceState> state = mode.BeginSequence(start);
    std::vector<at::Tensor> rows;
    {
      const std::unique_ptr<LayerHooks> hooks = mode.Hooks({state.get()}, pools.get());
      rows.push_back((*model)->PrefillLogits({chunk}, *cache, hooks.get())[0]);
    }
    for (int s = 1; s < kSteps; ++s) {
      const std::unique_ptr<LayerHooks> hooks = mode.Hooks({state.get()}, pools.get());
      rows.push_back((*model)->DecodeLogits({tokens[s - 1]}, {chunk.slot}, *cache, hooks.get())[0]);
    }
    cache->Free(chunk.slot);
    const double diff = (at::stack(rows) - expected).abs().max().item<double>();
    worst = std::max(worst, diff);
    EXPECT_LT(diff, 1e-4);
    // The engine end to end (its own preprocessing and vision pass).
    EXPECT_EQ(RunEngine(**engine, {Request(c)})[0], tokens);
    if ((composite || highres.defined()) && features.defined()) {
      // The mode matters: the same prompt under plain LLaVA equations gives other logits.
      const at::Tensor plain = reference.Logits(ids, features, false);
      EXPECT_GT((plain[-1] - expected[0]).abs().max().item<double>(), 1e-3);
    }
  }
  std::printf("[ mode %s ] max |logit diff| vs plain reference over %d steps: %.3g\n",
              GetParam().c_str(), kSteps, worst);
}

TEST_P(ModesTest, BatchedEqualsAlone) {
  EngineOptions options;
  options.model_dir = dir_;
  options.max_sequences = 4;
  auto engine = CreateLlavaEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<GenerationRequest> requests;
  for (const Case& c : Cases()) requests.push_back(Request(c));
  requests[1].sampling.max_new_tokens = 9;  // Ragged lengths: one leaves the batch early.
  const auto together = RunEngine(**engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i], RunEngine(**engine, {requests[i]})[0]) << "request " << i;
    EXPECT_EQ(together[i].size(), static_cast<size_t>(requests[i].sampling.max_new_tokens));
  }
}

// A slot's device state (xattn: its cross-attention keys/values, SlotPools) is written at every
// admission, a text-only one's too: a request run in a slot that held others runs as in a fresh
// engine.
TEST_P(ModesTest, ASlotForgetsItsLastRequest) {
  EngineOptions options;
  options.model_dir = dir_;
  options.max_sequences = 1;
  auto reused = CreateLlavaEngine(options);
  ASSERT_TRUE(reused.ok()) << reused.status().ToString();
  for (int c : {0, 3, 1}) {  // An image, text only, another image: one slot throughout.
    auto fresh = CreateLlavaEngine(options);
    ASSERT_TRUE(fresh.ok());
    const GenerationRequest r = Request(Cases()[c]);
    EXPECT_EQ(RunEngine(**reused, {r})[0], RunEngine(**fresh, {r})[0]) << "case " << c;
  }
}

TEST_P(ModesTest, ReportsFlopsOfTheShapesRun) {
  EngineOptions options;
  options.model_dir = dir_;
  auto engine = CreateLlavaEngine(options);
  ASSERT_TRUE(engine.ok());
  GenerationRequest r = Request(Cases()[0]);
  r.sampling.max_new_tokens = 1;
  auto prepared = (*engine)->Prepare(r);
  ASSERT_TRUE(prepared.ok());
  const int prompt = (*prepared)->prompt_tokens;
  EXPECT_EQ((*prepared)->image_tokens, ImageTokens());
  EXPECT_EQ((*engine)->Info().num_image_tokens, ImageTokens());
  auto id = (*engine)->Admit(*prepared);
  ASSERT_TRUE(id.ok());
  std::vector<TokenEvent> events;
  (*engine)->Prefill({*id}, &events);
  const FlopCount f = (*engine)->Report(*id).flops;
  FlopCount expected;
  const std::vector<int32_t> ids = PromptIds(Cases()[0]);
  const int64_t begin = std::find(ids.begin(), ids.end(), config_.image_token_id) - ids.begin();
  AddDecoderChunkFlops(config_.text, 0, prompt, begin,
                       GetParam() == "composite" ? ImageTokens() : 0, FlopCount::kPrefill,
                       &expected);
  const int z = Zoom();
  AddVisionFlops(config_, 1 + z * z, &expected);
  if (GetParam() == "xattn") {
    const int64_t side = z * (config_.vision.image_size / config_.vision.patch_size);
    AddCrossAttentionFlops(config_, prompt, side * side, side * side, FlopCount::kPrefill,
                           &expected);
    EXPECT_GT(expected.flops[FlopCount::kPrefill][FlopCount::kHighResProjections], 0);
  }
  for (int p = 0; p < FlopCount::kNumPhases; ++p) {
    for (int c = 0; c < FlopCount::kNumComponents; ++c) {
      EXPECT_EQ(f.flops[p][c], expected.flops[p][c]) << "phase " << p << " component " << c;
    }
  }
  (*engine)->Release(*id);
}

INSTANTIATE_TEST_SUITE_P(Modes, ModesTest, ::testing::Values("hd", "composite", "xattn"));

}  // namespace
}  // namespace flexvqa
