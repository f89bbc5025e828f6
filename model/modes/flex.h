// flex: FlexAttention (flexattention.md; the authors' code at
// UMass-Foundation-Model/FlexAttention@f814be5), the mode of model/modes/mode.h. The image in two
// views at 1008 px (§1); the LR tokens enter the sequence. HighResProjections holds the
// checkpoint's k_proj_hd / v_proj_hd of the FA layers; HighResSequence is one request's state (its
// raw HR features, their RoPE rows, the HR keys/values computed so far, the selection trace), owned
// by the engine until Release; FlexAttention is the per-Forward hook (model/nn/llama.h) that
// selects HR blocks from the last row's attention (§3) and lets that row attend to them (§4). The
// header is the mode's test surface (flex_parity_test reads a state's counters). Worker thread
// only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>
#include <vector>

#include "model/engine.h"
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
  // Fused [k_proj_hd; v_proj_hd] of decoder layer `layer` (>= num_sa_layers): [2 KV Dh, D].
  const at::Tensor& weight(int layer) const { return weights_[layer - num_sa_layers_]; }

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
  std::vector<at::Tensor> weights_;  // Per FA layer.
};

// One request's high-resolution state. HR keys/values depend only on the image (raw features, fixed
// RoPE rows), never on the step, so each (FA layer, 8x8 block) is computed the first time a
// selection needs it and kept until the request ends: the same numbers as the reference, which
// recomputes the selected ones every step (modeling_llama.py:436-441), for the cost of the blocks
// ever selected.
class HighResSequence final : public SequenceState {
 public:
  // features: [hr^2, D] raw projector outputs of the HR tiles, stitched row-major. image_begin:
  // position of the first LR image token in the prompt. width/height: the original image's size
  // (padding bands).
  HighResSequence(const HighResProjections& projections, at::Tensor features, int64_t image_begin,
                  int width, int height, int threshold);

  const SelectionTrace& trace() const { return trace_; }
  SelectionTrace selections() const override { return trace_; }
  int64_t selected_tokens() const override { return selected_total_; }
  // (FA layer, block) pairs whose HR keys/values were computed so far.
  int64_t computed_blocks() const { return computed_blocks_; }
  int64_t computed_rows() const { return computed_rows_; }  // HR tokens through k/v_proj_hd so far.
  // Ordinary keys whose scores the hook recomputed for last rows so far (for FLOPs).
  int64_t rescored_keys() const { return rescored_keys_; }
  // Device bytes this request holds: raw HR features, their RoPE rows, the HR key/value blocks so
  // far.
  int64_t bytes() const override;

 private:
  friend class FlexAttention;
  friend class FlexMode;
  void BeginStep();
  // The blocks `active_` needs at FA layer `fa` that are not computed yet.
  std::vector<int> MissingBlocks(int fa) const;

  const HighResProjections* projections_;
  at::Tensor features_;   // [hr^2, D]
  at::Tensor cos_, sin_;  // [hr^2, Dh]
  int64_t image_begin_;
  int width_, height_, threshold_;
  std::vector<std::vector<at::Tensor>> keys_,
      values_;         // [FA layer][block]: [KV, b^2, Dh] (RoPE'd keys)
  BlockMask active_;   // Selection the current layer uses (computed by the layer before it).
  BlockMask pending_;  // Selection computed by the current layer for the next.
  SelectionTrace trace_;
  int64_t selected_total_ = 0;
  int64_t computed_blocks_ = 0;
  int64_t computed_rows_ = 0;
  int64_t rescored_keys_ = 0;
  // The counters' values already turned into FLOPs (FlexMode::AddForwardFlops).
  int64_t counted_rescored_keys_ = 0, counted_selected_ = 0, counted_rows_ = 0;
};

// The hook for one Forward (a prefill or a decode step) over chunks of which some carry an image.
// Each chunk is handled on its own (ragged selections batch freely); the HR key/value blocks the
// chunks newly need at a layer are computed in one GEMM.
class FlexAttention final : public LayerHooks {
 public:
  // sequences[c]: chunk c's state, or null for a chunk without an image (plain attention).
  FlexAttention(const HighResProjections& projections, std::vector<HighResSequence*> sequences);

  void BeginLayer(int layer) override;
  // Causal attention for every row; each image chunk's last row is then replaced by LastRow's.
  at::Tensor SelfAttention(int layer, const at::Tensor& q, const DecoderBatch& batch) override;

 private:
  // q [H, Dh]: chunk `chunk`'s last row after RoPE; keys/values [H, total, Dh]: the causal keys
  // that row sees. Returns the row's attention output [H, Dh], or undefined to keep the causal one.
  at::Tensor LastRow(int layer, size_t chunk, const at::Tensor& q, const at::Tensor& keys,
                     const at::Tensor& values, double scale);

  const HighResProjections& projections_;
  std::vector<HighResSequence*> sequences_;
};

}  // namespace flexvqa
