#include "model/modes/flex.h"

#include <ATen/ATen.h>

#include "model/nn/flop_counter.h"
#include "model/nn/layers.h"
#include "model/nn/torch_compat.h"

namespace flexvqa {

StatusOr<std::unique_ptr<HighResProjections>> HighResProjections::Load(const WeightLoader& weights,
                                                                       const LlavaConfig& config,
                                                                       at::ScalarType dtype,
                                                                       at::Device device) {
  if (config.mode.attention != AttentionMode::kFlex)
    return FailedPreconditionError("the checkpoint is not a FlexAttention one");
  const TextConfig& t = config.text;
  auto p = std::unique_ptr<HighResProjections>(new HighResProjections());
  p->num_layers_ = t.num_hidden_layers;
  p->num_sa_layers_ = config.flex.num_sa_layers;
  p->lr_side_ = config.vision.image_size / config.vision.patch_size;
  p->hr_side_ = p->lr_side_ * config.flex.zoom_ratio;
  p->kv_heads_ = t.num_key_value_heads;
  p->head_dim_ = t.head_dim();
  p->rope_theta_ = t.rope_theta;
  p->dtype_ = dtype;
  p->device_ = device;
  const std::vector<int64_t> shape = {p->kv_dim(), t.hidden_size};
  // Present in all layers of the released checkpoint (modeling_llama.py:326-329); used from N_SA
  // on.
  for (int i = p->num_sa_layers_; i < t.num_hidden_layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".self_attn.";
    FLEXVQA_ASSIGN_OR_RETURN(
        at::Tensor k,
        weights.Get(WeightSection::kText, prefix + "k_proj_hd.weight", shape, dtype, device));
    FLEXVQA_ASSIGN_OR_RETURN(
        at::Tensor v,
        weights.Get(WeightSection::kText, prefix + "v_proj_hd.weight", shape, dtype, device));
    p->weights_.push_back(at::cat({k, v}, 0));
  }
  return p;
}

std::pair<at::Tensor, at::Tensor> HighResProjections::Rotary(int64_t image_begin) const {
  const int64_t n = static_cast<int64_t>(lr_side_) * lr_side_;
  // fp32 tables, as LlamaRotaryEmbedding builds them; interpolated in fp32, cast once at the end.
  const RotaryTables tables =
      BuildRotaryTables(image_begin + n, head_dim_, rope_theta_, at::kFloat, device_);
  auto upsample = [&](const at::Tensor& rows) {
    // [n, Dh] -> [1, Dh, lr, lr] -> bicubic [1, Dh, hr, hr] -> [hr^2, Dh]
    const at::Tensor grid = rows.narrow(0, image_begin, n)
                                .view({lr_side_, lr_side_, head_dim_})
                                .permute({2, 0, 1})
                                .unsqueeze(0);
    return InterpolateBicubic(grid.contiguous(), hr_side_, hr_side_)
        .view({head_dim_, static_cast<int64_t>(hr_side_) * hr_side_})
        .t()
        .contiguous()
        .to(dtype_);
  };
  return {upsample(tables.cos), upsample(tables.sin)};
}

HighResSequence::HighResSequence(const HighResProjections& projections, at::Tensor features,
                                 int64_t image_begin, int width, int height, int threshold)
    : projections_(&projections),
      features_(std::move(features)),
      image_begin_(image_begin),
      width_(width),
      height_(height),
      threshold_(threshold) {
  std::tie(cos_, sin_) = projections.Rotary(image_begin);
  const int num_fa = projections.num_layers() - projections.num_sa_layers();
  keys_.assign(num_fa, std::vector<at::Tensor>(kSelectionGrid * kSelectionGrid));
  values_ = keys_;
  trace_.first_fa_layer = projections.num_sa_layers();
  trace_.num_fa_layers = num_fa;
  trace_.grid = kSelectionGrid;
  trace_.hr_side = projections.hr_side();
}

void HighResSequence::BeginStep() {
  // Selections never carry over between steps: each step's layer N_SA - 1 starts afresh.
  active_.assign(kSelectionGrid * kSelectionGrid, 0);
  pending_ = active_;
  ++trace_.num_steps;
  trace_.masks.resize(
      trace_.masks.size() + static_cast<size_t>(trace_.num_fa_layers) * active_.size(), 0);
  trace_.selected_tokens.resize(trace_.selected_tokens.size() + trace_.num_fa_layers, 0);
}

std::vector<int> HighResSequence::MissingBlocks(int fa) const {
  std::vector<int> missing;
  for (int b = 0; b < static_cast<int>(active_.size()); ++b) {
    if (active_[b] && !keys_[fa][b].defined()) missing.push_back(b);
  }
  return missing;
}

FlexAttention::FlexAttention(const HighResProjections& projections,
                             std::vector<HighResSequence*> sequences)
    : projections_(projections), sequences_(std::move(sequences)) {
  for (HighResSequence* s : sequences_) {
    if (s != nullptr) s->BeginStep();
  }
}

void FlexAttention::BeginLayer(int layer) {
  if (layer < projections_.num_sa_layers()) return;
  const int fa = layer - projections_.num_sa_layers();
  const int hr = projections_.hr_side();
  const int64_t block_tokens = static_cast<int64_t>(hr / kSelectionGrid) * (hr / kSelectionGrid);
  // FA layer l uses the selection computed in layer l - 1 (modeling_llama.py:424-432).
  std::vector<at::Tensor> rows, cos, sin;
  std::vector<std::pair<HighResSequence*, std::vector<int>>> todo;
  for (HighResSequence* s : sequences_) {
    if (s == nullptr) continue;
    s->active_ = s->pending_;
    s->pending_.assign(s->active_.size(), 0);
    const size_t grid = s->active_.size();
    const size_t at = (static_cast<size_t>(s->trace_.num_steps - 1) * s->trace_.num_fa_layers + fa);
    std::copy(s->active_.begin(), s->active_.end(), s->trace_.masks.begin() + at * grid);
    const int tokens = CountBlocks(s->active_) * static_cast<int>(block_tokens);
    s->trace_.selected_tokens[at] = tokens;
    s->selected_total_ += tokens;
    std::vector<int> missing = s->MissingBlocks(fa);
    if (missing.empty()) continue;
    std::vector<int64_t> index;
    for (int b : missing) {
      const std::vector<int64_t> block = BlockTokenIndices(b, hr);
      index.insert(index.end(), block.begin(), block.end());
    }
    const at::Tensor idx =
        at::tensor(index, at::TensorOptions().dtype(at::kLong)).to(s->features_.device());
    rows.push_back(s->features_.index_select(0, idx));  // [m b^2, D]
    cos.push_back(s->cos_.index_select(0, idx));        // [m b^2, Dh]
    sin.push_back(s->sin_.index_select(0, idx));
    todo.emplace_back(s, std::move(missing));
  }
  if (todo.empty()) return;
  // HR keys/values: k_proj_hd / v_proj_hd of the RAW projector outputs, no RMSNorm
  // (modeling_llama.py:436-441); the keys under the interpolated RoPE rows (:442-443). One GEMM for
  // every block any chunk newly needs.
  const int64_t kv = projections_.kv_heads(), dh = projections_.head_dim(),
                kvd = projections_.kv_dim();
  const at::Tensor x = at::cat(rows, 0);                         // [R, D]
  const at::Tensor kvs = Linear(x, projections_.weight(layer));  // [R, 2 KV Dh]
  const int64_t r = x.size(0);
  const at::Tensor k = ApplyRotary(kvs.narrow(1, 0, kvd).view({r, kv, dh}).transpose(0, 1),
                                   at::cat(cos, 0), at::cat(sin, 0));              // [KV, R, Dh]
  const at::Tensor v = kvs.narrow(1, kvd, kvd).view({r, kv, dh}).transpose(0, 1);  // [KV, R, Dh]
  int64_t offset = 0;
  for (auto& [s, missing] : todo) {
    for (int b : missing) {
      s->keys_[fa][b] = k.narrow(1, offset, block_tokens);
      s->values_[fa][b] = v.narrow(1, offset, block_tokens);
      offset += block_tokens;
      ++s->computed_blocks_;
      s->computed_rows_ += block_tokens;
    }
  }
}

at::Tensor FlexAttention::SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) {
  at::Tensor out = LayerHooks::SelfAttention(layer, q, batch);  // [N, H, Dh]
  for (size_t ci = 0; ci < batch.chunks.size(); ++ci) {
    if (sequences_[ci] == nullptr) continue;
    const ChunkSpan& c = batch.chunks[ci];
    const int64_t last = c.row_begin + c.length - 1;
    // The last row sees every key written so far, so the chunk's keys are exactly its causal set.
    const auto [keys, values] = ChunkKeysValues(layer, batch, ci);
    const at::Tensor row = LastRow(layer, ci, q.select(0, last), keys, values, batch.scale);
    if (row.defined()) out.select(0, last).copy_(row);  // [H, Dh]
  }
  return out;
}

at::Tensor FlexAttention::LastRow(int layer, size_t chunk, const at::Tensor& q,
                                  const at::Tensor& keys, const at::Tensor& values, double scale) {
  HighResSequence* s = sequences_[chunk];
  if (s == nullptr) return {};
  const int n_sa = projections_.num_sa_layers();
  // Layers N_SA - 1 .. L - 2 select for the layer after them (modeling_llama.py:424-426, 523-572).
  const bool selects = layer >= n_sa - 1 && layer <= projections_.num_layers() - 2;
  const bool hierarchical = layer >= n_sa && CountBlocks(s->active_) > 0;
  if (!selects && !hierarchical) return {};
  const at::Tensor scores =
      at::matmul(q.unsqueeze(1), keys.transpose(1, 2)) * scale;  // [H, 1, total]
  s->rescored_keys_ += keys.size(1);
  if (selects) {
    // The last row's probabilities over the ordinary (text + LR) keys only: HR keys are masked out
    // of this softmax in the reference (modeling_llama.py:455-470), restricted to the LR image
    // columns and summed over heads (:541).
    const int64_t n = static_cast<int64_t>(projections_.lr_side()) * projections_.lr_side();
    const at::Tensor probs = at::softmax(scores, -1, at::kFloat);  // [H, 1, total]
    const at::Tensor image =
        probs.narrow(2, s->image_begin_, n).sum(0).reshape({n}).to(at::kCPU).contiguous();
    s->pending_ = SelectHighResBlocks(image.data_ptr<float>(), projections_.lr_side(), s->width_,
                                      s->height_, s->threshold_);
  }
  if (!hierarchical) return {};
  // Hierarchical attention (modeling_llama.py:444-499): the last row attends to its causal keys and
  // every selected HR key under one softmax, in fp32.
  const int fa = layer - n_sa;
  std::vector<at::Tensor> hk, hv;
  for (int b = 0; b < static_cast<int>(s->active_.size()); ++b) {
    if (!s->active_[b]) continue;
    hk.push_back(s->keys_[fa][b]);
    hv.push_back(s->values_[fa][b]);
  }
  at::Tensor hr_keys = at::cat(hk, 1);    // [KV, M, Dh]
  at::Tensor hr_values = at::cat(hv, 1);  // [KV, M, Dh]
  const int64_t heads = q.size(0);
  if (hr_keys.size(0) !=
      heads) {  // Grouped-query attention: each KV head serves H / KV query heads.
    hr_keys = hr_keys.repeat_interleave(heads / hr_keys.size(0), 0);
    hr_values = hr_values.repeat_interleave(heads / hr_values.size(0), 0);
  }
  const at::Tensor hr_scores =
      at::matmul(q.unsqueeze(1), hr_keys.transpose(1, 2)) * scale;  // [H, 1, M]
  const at::Tensor probs = at::softmax(at::cat({scores, hr_scores}, 2), -1, at::kFloat)
                               .to(q.scalar_type());                     // [H, 1, T + M]
  return at::matmul(probs, at::cat({values, hr_values}, 1)).squeeze(1);  // [H, Dh]
}

int64_t HighResSequence::bytes() const {
  auto size = [](const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; };
  int64_t total = size(features_) + size(cos_) + size(sin_);
  for (const auto& layer : keys_) {
    for (const at::Tensor& t : layer) total += size(t);
  }
  for (const auto& layer : values_) {
    for (const at::Tensor& t : layer) total += size(t);
  }
  return total;
}

// flex's Mode: two views at zoom_ratio x the tower's side; LR features in the sequence, the raw HR
// features into each request's HighResSequence.
class FlexMode final : public Mode {
 public:
  FlexMode(const LlavaConfig& config, std::unique_ptr<HighResProjections> projections)
      : Mode(config, config.flex.zoom_ratio), projections_(std::move(projections)) {}

  Status ValidateRequest(const GenerationRequest& request, ModeInput* input) const override {
    input->selection_threshold = request.selection_threshold.value_or(config_.flex.threshold);
    if (input->selection_threshold < 0 || input->selection_threshold > 255) {
      return InvalidArgumentError("selection_threshold must be between 0 and 255, got " +
                                  std::to_string(input->selection_threshold));
    }
    return Status::Ok();
  }

  bool supports_selection_threshold() const override { return true; }

  std::unique_ptr<SequenceState> BeginSequence(const SequenceStart& start) const override {
    if (!start.highres.defined()) return std::make_unique<SequenceState>();  // Text only.
    const ModeInput& in = *start.input;
    return std::make_unique<HighResSequence>(*projections_, start.highres.clone(),
                                             start.image_begin, in.image_width, in.image_height,
                                             in.selection_threshold);
  }

  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& batch) const override {
    std::vector<HighResSequence*> sequences;
    for (SequenceState* s : batch) sequences.push_back(dynamic_cast<HighResSequence*>(s));
    return std::make_unique<FlexAttention>(*projections_, std::move(sequences));
  }

  void AddForwardFlops(SequenceState& state, int64_t start, int64_t length, FlopCount::Phase phase,
                       FlopCount* count) const override {
    Mode::AddForwardFlops(state, start, length, phase, count);
    auto* hr = dynamic_cast<HighResSequence*>(&state);
    if (hr == nullptr) return;
    // flex's extra last-row work, from the state's counters since the last call.
    AddFlexFlops(config_.text, hr->rescored_keys_ - hr->counted_rescored_keys_,
                 hr->selected_total_ - hr->counted_selected_,
                 hr->computed_rows_ - hr->counted_rows_, phase, count);
    hr->counted_rescored_keys_ = hr->rescored_keys_;
    hr->counted_selected_ = hr->selected_total_;
    hr->counted_rows_ = hr->computed_rows_;
  }

 private:
  std::unique_ptr<HighResProjections> projections_;
};

StatusOr<std::unique_ptr<Mode>> CreateFlexMode(const LlavaConfig& config,
                                               const WeightLoader& weights, at::ScalarType dtype,
                                               at::Device device) {
  FLEXVQA_ASSIGN_OR_RETURN(auto projections,
                           HighResProjections::Load(weights, config, dtype, device));
  return std::unique_ptr<Mode>(new FlexMode(config, std::move(projections)));
}

}  // namespace flexvqa
