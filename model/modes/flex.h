// flex: FlexAttention (flexattention.md; the authors' code at
// UMass-Foundation-Model/FlexAttention@f814be5), the mode of model/modes/mode.h. The image in two
// views at 1008 px (§1); the LR tokens enter the sequence. HighResProjections holds the
// checkpoint's k_proj_hd / v_proj_hd of the FA layers; FlexSlotPools every slot's HR state on the
// device (raw HR features, every FA layer's HR keys, bands, thresholds), written at admission;
// HighResSequence is one request's host state (its selection trace), owned by the engine until
// Release; FlexAttention is the per-Forward hook (model/nn/llama.h) that selects HR blocks from the
// last row's attention (§3) and lets that row attend to them (§4), for the whole batch on the
// device (flex_rows.h): no host read inside the Forward, one packed copy of its selections at its
// end. The header is the mode's test surface (flex_parity_test reads a state's counters). Worker
// thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>
#include <vector>

#include "model/engine.h"
#include "model/modes/flex_decode.h"
#include "model/modes/flex_rows.h"
#include "model/modes/highres_selection.h"
#include "model/modes/mode.h"
#include "model/nn/llama.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

class HighResProjections {
 public:
  // Loads model.layers.{i}.self_attn.{k,v}_proj_hd.weight for the FA layers i >= num_sa_layers.
  static StatusOr<std::unique_ptr<HighResProjections>> Load(const WeightLoader& weights,
                                                            const LlavaConfig& config,
                                                            at::ScalarType dtype,
                                                            at::Device device);

  int num_layers() const { return num_layers_; }
  int num_sa_layers() const { return num_sa_layers_; }  // N_SA: first FA layer.
  int lr_side() const { return lr_side_; }              // 24: LR tokens per side.
  int hr_side() const { return hr_side_; }              // 72: HR tokens per side.
  int64_t kv_dim() const { return kv_heads_ * head_dim_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  // k_proj_hd of decoder layer `layer` (>= num_sa_layers): [KV Dh, D].
  const at::Tensor& k_weight(int layer) const { return k_weights_[layer - num_sa_layers_]; }
  // v_proj_hd of decoder layer `layer` per query head (ValueWeightsPerQueryHead): [H, Dh, D].
  const at::Tensor& v_weights(int layer) const { return v_weights_[layer - num_sa_layers_]; }
  // [hr^2] int64: each HR token's block (TokenBlocks).
  const at::Tensor& token_blocks() const { return token_blocks_; }
  // [1, 1, 1, 1] -inf in the model dtype: the masked score of flex's decode rows.
  const at::Tensor& neg_inf() const { return neg_inf_; }
  // [lr^2] int64 0, 1, ...: an LR image cell's offset from the image's first token.
  const at::Tensor& image_offsets() const { return image_offsets_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // RoPE rows of the HR tokens for an image whose LR tokens sit at positions
  // [image_begin, image_begin + lr_side^2): those rows' cos/sin as an lr x lr grid,
  // bicubic-upsampled (align_corners=False) to hr x hr (llava_llama.py:59-77). Returns {cos, sin},
  // each [hr^2, Dh].
  std::pair<at::Tensor, at::Tensor> Rotary(int64_t image_begin) const;

 private:
  int num_layers_ = 0;
  int num_sa_layers_ = 0;
  int lr_side_ = 0;
  int hr_side_ = 0;
  int64_t kv_heads_ = 0;
  int64_t head_dim_ = 0;
  double rope_theta_ = 10000.0;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::Device(at::kCPU);
  std::vector<at::Tensor> k_weights_, v_weights_;  // Per FA layer.
  at::Tensor token_blocks_;
  at::Tensor neg_inf_;
  at::Tensor image_offsets_;
};

// Every slot's high-resolution state on the device (model/modes/mode.h SlotPools), so that a
// decode step reads it by slot index and never stacks per-request tensors: HR keys depend only on
// the image (raw features, fixed RoPE rows), never on the step, so every FA layer's keys of every
// HR token are computed once, at admission, into the sequence's slot (no host decision about which
// blocks a step needs); values are never stored (highres_attention.h: v_proj_hd applies to the
// probability-weighted raw features). The same numbers as the reference, which recomputes the
// selected keys and values every step (modeling_llama.py:436-441). bench/RESULTS.md ("flex on the
// device") has the trade-off against lazy blocks and stored values. A slot without an image (a
// text-only sequence, the scratch slot) selects nothing and reads only the pad column.
class FlexSlotPools final : public SlotPools {
 public:
  // num_slots + 1 slots (the last: the KV cache's scratch slot) of a model `hidden` wide.
  FlexSlotPools(const HighResProjections& projections, int num_slots, int64_t hidden);

  // Slot `slot` takes an image: raw HR features [hr^2, D] (its keys through k_proj_hd here),
  // the first LR image token's position, the original image's size (padding bands), the
  // request's threshold (0-255).
  void Write(int slot, const at::Tensor& features, int64_t image_begin, int width, int height,
             int threshold);
  // Slot `slot` holds no image: threshold 255, every LR cell a band cell.
  void Clear(int slot);

  int64_t bytes() const override;
  int64_t bytes_per_slot() const override;

  at::Tensor keys;         // [FA layers, S + 1, KV, hr^2, Dh] (RoPE'd).
  at::Tensor features;     // [S + 1, hr^2, D]
  at::Tensor band;         // [S + 1, lr^2] bool: padding-band cells.
  at::Tensor image_begin;  // [S + 1] int64
  at::Tensor threshold;    // [S + 1] fp32 0-255

 private:
  const HighResProjections& projections_;
};

// One request's high-resolution state beside its slot of FlexSlotPools: the host side (its
// selection trace and the FLOP counters).
class HighResSequence final : public SequenceState {
 public:
  // Writes slot `slot` of `pools`: features [hr^2, D] raw projector outputs of the HR tiles,
  // stitched row-major; image_begin: position of the first LR image token in the prompt;
  // width/height: the original image's size (padding bands).
  HighResSequence(const HighResProjections& projections, FlexSlotPools& pools, int slot,
                  const at::Tensor& features, int64_t image_begin, int width, int height,
                  int threshold);

  const SelectionTrace& trace() const { return trace_; }
  // Both include the last Forward's selections: call them after that step's sampled ids were
  // read (the summary's non-blocking copy was queued before them), as the engine does.
  SelectionTrace selections() const override;
  int64_t selected_tokens() const override;
  // HR tokens through k_proj_hd so far (every token of every FA layer, at admission).
  int64_t computed_rows() const { return computed_rows_; }
  // Device bytes of the request's slot: raw HR features, every FA layer's HR keys, the band
  // mask, offset and threshold (FlexSlotPools::bytes_per_slot).
  int64_t bytes() const override { return pools_->bytes_per_slot(); }

 private:
  friend class FlexAttention;
  friend class FlexMode;
  void BeginStep();
  // Copies the last Forward's selections from the host summary into the trace, if they are there
  // (`arrived`: the step that copied them has synchronised since).
  void ReadSummary(bool arrived) const;

  const HighResProjections* projections_;
  const FlexSlotPools* pools_;
  // The host copy of a Forward's selections [rows, FA, 81] (shared by its sequences), this
  // sequence's row in it, and the step it belongs to; undefined once read.
  mutable at::Tensor summary_;
  int64_t summary_row_ = 0;
  mutable SelectionTrace trace_;
  mutable int64_t selected_total_ = 0;
  int64_t computed_rows_ = 0;
  // Work of the last-row hooks so far, for FLOPs: rows that selected (over lr^2 image keys each)
  // and rows that attended to the hr^2 HR keys (per FA layer).
  int64_t selecting_rows_ = 0, hierarchical_rows_ = 0;
  // The counters' values already turned into FLOPs (FlexMode::AddForwardFlops).
  int64_t counted_selecting_ = 0, counted_hierarchical_ = 0, counted_rows_ = 0;
};

// The hook for one Forward (a prefill or a decode step) over a batch of which some rows carry an
// image: per layer, for the last row of every sequence at once, the hierarchical attention with
// its HR part and the selection for the next layer, with fixed shapes, everything per sequence
// read from FlexSlotPools by batch.slots (rows without an image, and a decode bucket's padding
// rows, run the same ops and select nothing; a decode step runs them whatever the batch holds, so
// its ops depend on the bucket alone). StepOutputs: the Forward's selections [rows, FA layers, 81]
// bytes; AfterStep starts their non-blocking copy into host memory, read once it has arrived (the
// step's sampled ids are read after it, so their wait covers it): no host sync of its own.
class FlexAttention final : public LayerHooks {
 public:
  // sequences[c]: chunk c's state, or null for a chunk without an image.
  FlexAttention(const HighResProjections& projections, const FlexSlotPools& pools,
                std::vector<HighResSequence*> sequences);

  at::Tensor SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) override;
  std::vector<at::Tensor> StepOutputs() override;
  void AfterStep(const std::vector<at::Tensor>& outputs) override;

 private:
  // The batch's per-Forward inputs (image offsets, bands, thresholds, features) from the pools,
  // once.
  void Gather(const DecoderBatch& batch);
  // This layer's HR keys of the batch's rows, [C, KV, hr^2, Dh]; keeps the selection the layer
  // uses for the summary.
  at::Tensor LayerKeys(int layer);
  // A decode step's layer: causal and HR keys under one softmax, the selection from its
  // probabilities (flex_decode.h).
  at::Tensor Decode(int layer, const at::Tensor& q, const DecoderBatch& batch, bool selects,
                    bool hierarchical);

  const HighResProjections& projections_;
  const FlexSlotPools& pools_;
  std::vector<HighResSequence*> sequences_;
  bool any_image_ = false;
  bool gathered_ = false;
  at::Tensor slots_;       // [C] the batch's slots.
  at::Tensor last_rows_;   // [C] packed row of each sequence's newest token (prefill only).
  at::Tensor image_rows_;  // [C lr^2] flat KV-pool rows of each sequence's LR image keys.
  FlexRowInputs inputs_;
  FlexDecodeInputs decode_;           // Decode only.
  at::Tensor features_;               // [C, hr^2, D]
  at::Tensor active_;                 // [C, 81] bool: the selection the next FA layer uses.
  std::vector<at::Tensor> selected_;  // Per FA layer: [C, 81] bool, the selection it used.
};

}  // namespace flexvqa
