#include "model/modes/flex.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "model/modes/block_selection.h"
#include "model/modes/flex_decode.h"
#include "model/modes/highres_attention.h"
#include "model/nn/batched_attention.h"
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
    p->k_weights_.push_back(k);
    p->v_weights_.push_back(ValueWeightsPerQueryHead(v, t.num_attention_heads, p->kv_heads_));
  }
  p->token_blocks_ = TokenBlocks(p->hr_side_, device);
  p->neg_inf_ = at::full({1, 1, 1, 1}, -std::numeric_limits<double>::infinity(),
                         at::TensorOptions().dtype(dtype).device(device));
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
      threshold_(threshold) {
  // Every FA layer's HR keys: k_proj_hd of the RAW projector outputs, no RMSNorm
  // (modeling_llama.py:436-441), under the interpolated RoPE rows (:442-443). One GEMM per layer.
  const auto [cos, sin] = projections.Rotary(image_begin);
  std::vector<at::Tensor> keys;
  for (int l = projections.num_sa_layers(); l < projections.num_layers(); ++l) {
    keys.push_back(HighResKeys(features_, projections.k_weight(l), cos, sin,
                               projections.kv_heads()));  // [KV, hr^2, Dh]
  }
  keys_ = at::stack(keys);  // [FA, KV, hr^2, Dh]
  computed_rows_ = static_cast<int64_t>(keys.size()) * features_.size(0);
  band_ = PaddingBandMask(projections.lr_side(), width, height, features_.device());
  const int num_fa = projections.num_layers() - projections.num_sa_layers();
  trace_.first_fa_layer = projections.num_sa_layers();
  trace_.num_fa_layers = num_fa;
  trace_.grid = kSelectionGrid;
  trace_.hr_side = projections.hr_side();
}

void HighResSequence::BeginStep() {
  ReadSummary(/*arrived=*/true);  // The previous step's ids were read: its copy has arrived.
  // Selections never carry over between steps: each step's layer N_SA - 1 starts afresh.
  ++trace_.num_steps;
  trace_.masks.resize(static_cast<size_t>(trace_.num_steps) * trace_.num_fa_layers *
                          kSelectionGrid * kSelectionGrid,
                      0);
  trace_.selected_tokens.resize(static_cast<size_t>(trace_.num_steps) * trace_.num_fa_layers, 0);
}

int64_t HighResSequence::bytes() const {
  auto size = [](const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; };
  return size(features_) + size(keys_) + size(band_);
}

FlexAttention::FlexAttention(const HighResProjections& projections,
                             std::vector<HighResSequence*> sequences)
    : projections_(projections), sequences_(std::move(sequences)) {
  for (HighResSequence* s : sequences_) {
    if (s == nullptr) continue;
    s->BeginStep();
    if (first_image_ == nullptr) first_image_ = s;
  }
}

void FlexAttention::Gather(const DecoderBatch& batch) {
  if (gathered_) return;
  gathered_ = true;
  const int64_t c = batch.sequences(), n = int64_t{projections_.lr_side()} * projections_.lr_side();
  const int64_t ctx = batch.cache->shape().max_context;
  std::vector<int64_t> begins(c, 0), last(c, 0);
  std::vector<float> thresholds(c, 255.0f);  // 255 selects nothing (block_selection.h).
  std::vector<at::Tensor> bands, features;
  keys_.clear();
  for (int64_t i = 0; i < c; ++i) {
    HighResSequence* s = i < static_cast<int64_t>(sequences_.size()) ? sequences_[i] : nullptr;
    if (i < static_cast<int64_t>(batch.chunks.size())) {
      last[i] = batch.chunks[i].row_begin + batch.chunks[i].length - 1;
    }
    if (s != nullptr) {
      begins[i] = s->image_begin_;
      thresholds[i] = static_cast<float>(s->threshold_);
    }
    // Rows without an image borrow an image's tensors (and select nothing): the same shapes.
    const HighResSequence* from = s != nullptr ? s : first_image_;
    bands.push_back(from->band_);
    features.push_back(from->features_);
    keys_.push_back(from->keys_);
  }
  const at::TensorOptions longs = at::TensorOptions().dtype(at::kLong);
  const at::Device device = first_image_->features_.device();
  // Column image_begin + j of each row's LR image cell j, and its flat pool row
  // slot * max_context + image_begin + j.
  const at::Tensor columns =
      at::tensor(begins, longs).to(device).view({c, 1}) + at::arange(n, longs.device(device));
  image_rows_ = ((batch.slots * ctx).view({c, 1}) + columns).view({c * n});
  if (batch.query_len > 1) last_rows_ = at::tensor(last, longs).to(device);
  inputs_.band = at::stack(bands);
  inputs_.threshold = at::tensor(thresholds).to(device);
  inputs_.lr_side = projections_.lr_side();
  features_ = at::stack(features);  // [C, hr^2, D]
  if (batch.query_len == 1) {
    // Each LR image cell's column in the decode rows' joint probabilities; band cells read the
    // pad column (flex_decode.h).
    const int64_t kv = batch.cache->shape().num_kv_heads;
    decode_.image_columns =
        at::where(inputs_.band, at::full({1}, batch.key_len, longs.device(device)), columns)
            .view({c, 1, 1, n})
            .expand({c, kv, batch.heads / kv, n});
    decode_.threshold = inputs_.threshold;
    decode_.neg_inf = projections_.neg_inf();
    decode_.token_blocks = projections_.token_blocks();
    decode_.lr_side = projections_.lr_side();
  }
  active_ = at::zeros({c, kSelectionGrid * kSelectionGrid},
                      at::TensorOptions().dtype(at::kBool).device(device));
}

at::Tensor FlexAttention::SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) {
  const int n_sa = projections_.num_sa_layers(), num_layers = projections_.num_layers();
  // Layers N_SA - 1 .. L - 2 select for the layer after them (modeling_llama.py:424-426, 523-572).
  const bool selects = layer >= n_sa - 1 && layer <= num_layers - 2;
  const bool hierarchical = layer >= n_sa;
  if (first_image_ == nullptr || (!selects && !hierarchical))
    return CausalAttention(layer, q, batch);
  at::Tensor lse, out;
  Gather(batch);
  // Each sequence's newest row: in decode the rows are the sequences.
  const bool packed = last_rows_.defined();
  if (!packed) return Decode(layer, q, batch, selects, hierarchical);
  out = CausalAttention(layer, q, batch, &lse);                 // [N, H, Dh], [N, H]
  const at::Tensor q_last = q.index_select(0, last_rows_);      // [C, H, Dh]
  const at::Tensor lse_last = lse.index_select(0, last_rows_);  // [C, H]
  if (hierarchical) {
    // modeling_llama.py:444-499: the newest row attends to its causal keys and the selected HR
    // keys under one softmax, here as the exact merge of the two parts.
    const at::Tensor rows = HierarchicalRows(
        q_last, out.index_select(0, last_rows_), lse_last, LayerKeys(layer), features_, active_,
        projections_.token_blocks(), projections_.v_weights(layer), batch.scale);  // [C, H, Dh]
    out = out.index_copy(0, last_rows_, rows);
  }
  if (selects) {
    // The last row's causal probabilities over its LR image keys (the HR keys are masked out of
    // this softmax in the reference, modeling_llama.py:455-470), read from the pool.
    // Keys of layer `layer`: pool [0] is [S + 1, ctx, KV, Dh] (model/nn/kv_cache.h).
    const at::Tensor pool_keys = batch.cache->pool(layer).select(0, 0);
    const int64_t c = batch.sequences(), n = image_rows_.size(0) / c;
    const at::Tensor image_keys = pool_keys.view({-1, pool_keys.size(2), pool_keys.size(3)})
                                      .index_select(0, image_rows_)
                                      .view({c, n, pool_keys.size(2), pool_keys.size(3)})
                                      .permute({0, 2, 1, 3});  // [C, KV, n, Dh]
    active_ = SelectForNextLayer(q_last, image_keys, lse_last, inputs_, batch.scale);
    for (HighResSequence* s : sequences_) {
      if (s != nullptr) ++s->selecting_rows_;
    }
  }
  if (layer == num_layers - 1) Publish();
  return out;
}

at::Tensor FlexAttention::Decode(int layer, const at::Tensor& q, const DecoderBatch& batch,
                                 bool selects, bool hierarchical) {
  FlexDecodeLayer hr;
  if (hierarchical) {
    hr.hr_keys = LayerKeys(layer);
    hr.features = features_;
    hr.v_weights = projections_.v_weights(layer);
    hr.active = active_;
  }
  FlexDecodeRows rows = FlexDecodeAttention(layer, q, batch, decode_, hr, selects);
  // The selection reads the probabilities the attention computed: no rescoring FLOPs here
  // (selecting_rows_ counts the prefill's).
  if (selects) active_ = rows.next;
  if (layer == projections_.num_layers() - 1) Publish();
  return rows.out;
}

at::Tensor FlexAttention::LayerKeys(int layer) {
  const int fa = layer - projections_.num_sa_layers();
  std::vector<at::Tensor> keys;
  for (const at::Tensor& k : keys_) keys.push_back(k[fa]);
  selected_.push_back(active_);
  for (HighResSequence* s : sequences_) {
    if (s != nullptr) ++s->hierarchical_rows_;
  }
  return at::stack(keys);  // [C, KV, hr^2, Dh]
}

void FlexAttention::Publish() {
  if (selected_.empty()) return;
  const at::Tensor device = at::stack(selected_, 1).to(at::kByte);  // [C, FA, 81]
  // Pinned on a GPU, so that the copy runs behind the step; the sampled ids' read waits for it.
  at::Tensor host = at::empty(device.sizes(),
                              at::TensorOptions().dtype(at::kByte).pinned_memory(device.is_cuda()));
  host.copy_(device, /*non_blocking=*/true);
  for (size_t c = 0; c < sequences_.size(); ++c) {
    if (sequences_[c] == nullptr) continue;
    sequences_[c]->summary_ = host;
    sequences_[c]->summary_row_ = static_cast<int64_t>(c);
  }
}

void HighResSequence::ReadSummary(bool arrived) const {
  if (!summary_.defined() || !arrived) return;
  const int64_t grid = kSelectionGrid * kSelectionGrid;
  const int block = projections_->hr_side() / kSelectionGrid;
  const size_t step = static_cast<size_t>(trace_.num_steps - 1) * trace_.num_fa_layers;
  const uint8_t* rows = summary_[summary_row_].contiguous().data_ptr<uint8_t>();
  for (int fa = 0; fa < trace_.num_fa_layers; ++fa) {
    const uint8_t* mask = rows + fa * grid;
    std::copy(mask, mask + grid, trace_.masks.begin() + (step + fa) * grid);
    const int tokens = static_cast<int>(std::count(mask, mask + grid, 1)) * block * block;
    trace_.selected_tokens[step + fa] = tokens;
    selected_total_ += tokens;
  }
  summary_ = at::Tensor();
}

SelectionTrace HighResSequence::selections() const {
  ReadSummary(/*arrived=*/true);  // Called between steps: every copy has arrived.
  return trace_;
}

int64_t HighResSequence::selected_tokens() const {
  // The engine reads it after the step's sampled ids reached the host (UpdateReports after
  // EmitIds): the summary's copy, ordered before them, has arrived on any device.
  ReadSummary(/*arrived=*/true);
  return selected_total_;
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

  Status DecodeCapturable() const override {
    return FailedPreconditionError(
        "flex uploads each step's image offsets, bands and thresholds from the host and stacks "
        "each request's own HR keys and features (not slot-indexed pools): a replay would read "
        "the captured requests' tensors");
  }

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
    // flex's extra last-row work since the last call (what the device ran, not what it
    // selected: the shapes are fixed). Selecting rows score lr^2 image keys; hierarchical rows
    // score hr^2 HR keys and mix the raw features per head (highres_attention.h); k_proj_hd over
    // every HR token of every FA layer once, at admission.
    const TextConfig& t = config_.text;
    const int64_t h = t.num_attention_heads, dh = t.head_dim(), d = t.hidden_size;
    const int64_t n = int64_t{projections_->lr_side()} * projections_->lr_side();
    const int64_t hr_tokens = int64_t{projections_->hr_side()} * projections_->hr_side();
    double* f = count->flops[phase];
    f[FlopCount::kAttention] +=
        AttentionFlops(h, 1, n, dh) / 2 * (hr->selecting_rows_ - hr->counted_selecting_);
    f[FlopCount::kAttention] += (AttentionFlops(h, 1, hr_tokens, dh) / 2 +
                                 LinearFlops(h, hr_tokens, d) + LinearFlops(h, d, dh)) *
                                (hr->hierarchical_rows_ - hr->counted_hierarchical_);
    f[FlopCount::kHighResProjections] +=
        LinearFlops(hr->computed_rows_ - hr->counted_rows_, d, projections_->kv_dim());
    hr->counted_selecting_ = hr->selecting_rows_;
    hr->counted_hierarchical_ = hr->hierarchical_rows_;
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
