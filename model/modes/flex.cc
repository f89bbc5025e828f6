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
  p->image_offsets_ = at::arange(int64_t{p->lr_side_} * p->lr_side_,
                                 at::TensorOptions().dtype(at::kLong).device(device));
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

FlexSlotPools::FlexSlotPools(const HighResProjections& projections, int num_slots, int64_t hidden)
    : projections_(projections) {
  const int64_t slots = int64_t{num_slots} + 1,
                n = int64_t{projections.lr_side()} * projections.lr_side();
  const int64_t t = int64_t{projections.hr_side()} * projections.hr_side();
  const auto options = at::TensorOptions().dtype(projections.dtype()).device(projections.device());
  const int64_t fa = projections.num_layers() - projections.num_sa_layers();
  keys = at::zeros({fa, slots, projections.kv_heads(), t, projections.head_dim()}, options);
  features = at::zeros({slots, t, hidden}, options);
  band = at::ones({slots, n}, options.dtype(at::kBool));
  image_begin = at::zeros({slots}, options.dtype(at::kLong));
  threshold = at::full({slots}, 255.0, options.dtype(at::kFloat));  // Nothing selected.
}

void FlexSlotPools::Write(int slot, const at::Tensor& image_features, int64_t begin, int width,
                          int height, int request_threshold) {
  features[slot].copy_(image_features);
  // Every FA layer's HR keys: k_proj_hd of the RAW projector outputs, no RMSNorm
  // (modeling_llama.py:436-441), under the interpolated RoPE rows (:442-443). One GEMM per layer,
  // into the slot.
  const auto [cos, sin] = projections_.Rotary(begin);
  for (int l = projections_.num_sa_layers(); l < projections_.num_layers(); ++l) {
    keys[l - projections_.num_sa_layers()][slot].copy_(
        HighResKeys(image_features, projections_.k_weight(l), cos, sin,
                    projections_.kv_heads()));  // [KV, hr^2, Dh]
  }
  band[slot].copy_(PaddingBandMask(projections_.lr_side(), width, height, band.device()));
  image_begin[slot].fill_(begin);
  threshold[slot].fill_(static_cast<double>(request_threshold));
}

void FlexSlotPools::Clear(int slot) {
  // Stale keys and features may stay: a slot that selects nothing masks its HR scores to -inf
  // (exactly 0 after the softmax), whatever its keys.
  band[slot].fill_(true);
  image_begin[slot].fill_(0);
  threshold[slot].fill_(255.0);
}

int64_t FlexSlotPools::bytes() const {
  int64_t total = 0;
  for (const at::Tensor* t : {&keys, &features, &band, &image_begin, &threshold})
    total += t->numel() * t->element_size();
  return total;
}

int64_t FlexSlotPools::bytes_per_slot() const { return bytes() / features.size(0); }

HighResSequence::HighResSequence(const HighResProjections& projections, FlexSlotPools& pools,
                                 int slot, const at::Tensor& features, int64_t image_begin,
                                 int width, int height, int threshold)
    : projections_(&projections), pools_(&pools) {
  pools.Write(slot, features, image_begin, width, height, threshold);
  const int num_fa = projections.num_layers() - projections.num_sa_layers();
  computed_rows_ = int64_t{num_fa} * features.size(0);
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

FlexAttention::FlexAttention(const HighResProjections& projections, const FlexSlotPools& pools,
                             std::vector<HighResSequence*> sequences)
    : projections_(projections), pools_(pools), sequences_(std::move(sequences)) {
  for (HighResSequence* s : sequences_) {
    if (s == nullptr) continue;
    s->BeginStep();
    any_image_ = true;
  }
}

void FlexAttention::Gather(const DecoderBatch& batch) {
  if (gathered_) return;
  gathered_ = true;
  const int64_t c = batch.sequences(), n = int64_t{projections_.lr_side()} * projections_.lr_side();
  const int64_t ctx = batch.cache->shape().max_context;
  const at::TensorOptions longs = at::TensorOptions().dtype(at::kLong);
  const at::Device device = batch.slots.device();
  // Everything per sequence by slot from the pools (text-only and padding rows: "no image").
  slots_ = batch.slots;
  // Column image_begin + j of each row's LR image cell j.
  const at::Tensor columns =
      pools_.image_begin.index_select(0, slots_).view({c, 1}) + projections_.image_offsets();
  inputs_.band = pools_.band.index_select(0, slots_);  // [C, n]
  inputs_.threshold = pools_.threshold.index_select(0, slots_);
  inputs_.lr_side = projections_.lr_side();
  features_ = pools_.features.index_select(0, slots_);  // [C, hr^2, D]
  if (batch.query_len > 1) {
    // Prefill: each sequence's last packed row, and its LR image keys' flat pool rows
    // slot * max_context + image_begin + j.
    std::vector<int64_t> last(c, 0);
    for (size_t i = 0; i < batch.chunks.size(); ++i) {
      last[i] = batch.chunks[i].row_begin + batch.chunks[i].length - 1;
    }
    last_rows_ = at::tensor(last, longs).to(device);
    image_rows_ = ((slots_ * ctx).view({c, 1}) + columns).view({c * n});
  } else {
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
  if (!selects && !hierarchical) return CausalAttention(layer, q, batch);
  // A decode step runs the same ops whether or not its rows carry images (one graph per bucket);
  // in decode the rows are the sequences.
  if (batch.query_len == 1) {
    Gather(batch);
    return Decode(layer, q, batch, selects, hierarchical);
  }
  if (!any_image_) return CausalAttention(layer, q, batch);
  Gather(batch);
  at::Tensor lse;
  at::Tensor out = CausalAttention(layer, q, batch, &lse);      // [N, H, Dh], [N, H]
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
      if (s != nullptr) ++s->selecting_rows_;  // Prefill only: never part of a replayed step.
    }
  }
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
  return rows.out;
}

at::Tensor FlexAttention::LayerKeys(int layer) {
  selected_.push_back(active_);
  // [C, KV, hr^2, Dh]: one gather by slot from the layer's pool.
  return pools_.keys[layer - projections_.num_sa_layers()].index_select(0, slots_);
}

std::vector<at::Tensor> FlexAttention::StepOutputs() {
  if (selected_.empty()) return {};
  return {at::stack(selected_, 1).to(at::kByte)};  // [C, FA, 81]
}

void FlexAttention::AfterStep(const std::vector<at::Tensor>& outputs) {
  // Every FA layer attended to its HR part once per sequence with an image (the decode step
  // whatever was captured; the prefill when any row has an image).
  const int num_fa = projections_.num_layers() - projections_.num_sa_layers();
  for (HighResSequence* s : sequences_) {
    if (s != nullptr) s->hierarchical_rows_ += num_fa;
  }
  if (outputs.empty()) return;
  const at::Tensor& device = outputs[0];
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

  std::unique_ptr<SlotPools> CreateSlotPools(int num_slots) const override {
    return std::make_unique<FlexSlotPools>(*projections_, num_slots, config_.text.hidden_size);
  }

  std::unique_ptr<SequenceState> BeginSequence(const SequenceStart& start) const override {
    auto* pools = dynamic_cast<FlexSlotPools*>(start.pools);
    TORCH_CHECK(pools != nullptr && start.slot >= 0, "flex: a sequence needs its slot pools");
    if (!start.highres.defined()) {  // Text only: the slot forgets its last image.
      pools->Clear(start.slot);
      return std::make_unique<SequenceState>();
    }
    const ModeInput& in = *start.input;
    return std::make_unique<HighResSequence>(*projections_, *pools, start.slot, start.highres,
                                             start.image_begin, in.image_width, in.image_height,
                                             in.selection_threshold);
  }

  std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& batch,
                                    SlotPools* pools) const override {
    auto* flex = dynamic_cast<FlexSlotPools*>(pools);
    TORCH_CHECK(flex != nullptr, "flex: the hooks need the slot pools");
    std::vector<HighResSequence*> sequences;
    for (SequenceState* s : batch) sequences.push_back(dynamic_cast<HighResSequence*>(s));
    return std::make_unique<FlexAttention>(*projections_, *flex, std::move(sequences));
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
