// What differs between attention modes (docs/modes.md), behind one interface: how a request's image
// is prepared and encoded, the state a sequence keeps (BeginSequence), the decoder's per-layer
// hooks for a batch of those sequences, and the FLOPs that ran. One implementation per
// AttentionMode in model/modes/<name>.cc; CreateMode (registry.cc) picks it. The engine
// (model/llava_engine.cc) and the decoder never branch on the mode. The defaults here are
// LLaVA-1.5's ("full"); a mode overrides what it changes. A Mode is immutable after CreateMode:
// PrepareImage and ValidateRequest are called from any thread (Engine::Prepare), the rest on the
// worker thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "model/engine.h"
#include "model/image/image_decode.h"
#include "model/image/image_preprocess.h"
#include "model/nn/clip_vision.h"
#include "model/nn/llama.h"
#include "model/status.h"
#include "model/weights/model_config.h"
#include "model/weights/weights.h"

namespace flexvqa {

// What Prepare keeps of a request for its mode. Torch-free: Prepare runs off the worker thread.
struct ModeInput {
  // [3, S, S] normalised: the view the tower encodes for the sequence. Empty without an image.
  std::vector<float> pixels;
  // Two-view modes (zoom() > 0): the normalised high-resolution image [3, Z S, Z S]; `pixels` is
  // its downsample (flexattention.md §1).
  std::vector<float> highres_pixels;
  int image_width = 0, image_height = 0;  // The original image's size (flex: padding bands).
  int selection_threshold = 0;            // flex: the request's threshold (0-255).
};

// One prefill batch's images through the vision tower, as the mode places them.
struct EncodedImages {
  at::Tensor sequence;  // [N, image_tokens(), D]: the rows that replace the placeholders.
  at::Tensor highres;   // [N, M, D]: raw HR features kept beside the sequence, or undefined.
};

// Device memory a mode keeps per KV-cache slot beside the cache (flex: every FA layer's HR keys and
// the raw HR features, bands, thresholds, image offsets; xattn: the cross-attention keys/values),
// allocated once for every slot and the scratch slot (Mode::CreateSlotPools), written into a
// sequence's slot at its prefill (BeginSequence) and read in every step by slot index
// (DecoderBatch::slots): the step reads the same device addresses whichever requests run, what
// lets a captured CUDA graph of it be replayed. The scratch slot holds "no image" for padding
// rows. Worker thread only; owned by the engine, which outlives the states that point into it.
class SlotPools {
 public:
  virtual ~SlotPools() = default;
  virtual int64_t bytes() const = 0;           // Device bytes of every slot, scratch included.
  virtual int64_t bytes_per_slot() const = 0;  // Device bytes one slot holds.
};

// What BeginSequence gets for one sequence at its prefill.
struct SequenceStart {
  const std::vector<int32_t>* tokens = nullptr;  // The prompt, placeholders expanded.
  int64_t image_begin = -1;                      // Position of the first placeholder; -1: no image.
  at::Tensor highres;  // This image's row of EncodedImages::highres (or undefined).
  const ModeInput* input = nullptr;
  int slot = -1;               // The sequence's KV-cache slot.
  SlotPools* pools = nullptr;  // CreateSlotPools' (null where the mode makes none).
};

// One sequence's mode state, from its prefill until Release (owned by the engine).
class SequenceState {
 public:
  virtual ~SequenceState() = default;
  // Device bytes held beside the KV cache (EngineMemory::hr_cache_bytes).
  virtual int64_t bytes() const { return 0; }
  // flex: the selections so far (Engine::Selections) and their HR tokens summed over steps and
  // layers (SequenceReport::selected_hr_tokens). Read after a step's sampled ids reached the host
  // (the step's device work is then done).
  virtual SelectionTrace selections() const { return {}; }
  virtual int64_t selected_tokens() const { return 0; }
};

class Mode {
 public:
  virtual ~Mode() = default;
  Mode(const Mode&) = delete;
  Mode& operator=(const Mode&) = delete;

  AttentionMode id() const { return config_.mode.attention; }
  const char* name() const { return AttentionModeName(id()); }
  // High-resolution tiles per side of the two-view modes; 0 for single-view ones.
  int zoom() const { return zoom_; }
  // The preprocessing of the image the mode receives (the HR view for two-view modes).
  const PreprocessOptions& preprocess() const { return preprocess_; }

  // Placeholders one image takes in the prompt. Default: the tower's patch grid.
  virtual int image_tokens() const { return config_.num_image_tokens(); }

  // Mode options of a request (Prepare, after the sampling and prompt checks); INVALID_ARGUMENT
  // names the field. Default: a selection_threshold is rejected (it is flex's).
  virtual Status ValidateRequest(const GenerationRequest& request, ModeInput* input) const;
  // Whether ValidateRequest accepts GenerationRequest::selection_threshold (ModelInfo reports it).
  virtual bool supports_selection_threshold() const { return false; }
  // Preprocesses a decoded image into input->pixels (and highres_pixels for two-view modes).
  virtual Status PrepareImage(const RgbImage& image, ModeInput* input) const;

  // Runs the tower on a prefill batch's images: pixels [N, 3, S, S], highres [N, 3, Z S, Z S]
  // (undefined for single-view modes). Default: pixels' features in the sequence, and for two-view
  // modes the raw HR features of the tiles beside it (ImageEncoder::EncodeTwoResolutions).
  virtual EncodedImages Encode(const ImageEncoder& encoder, const at::Tensor& pixels,
                               const at::Tensor& highres) const;

  // The per-slot device memory of `num_slots` slots and the scratch slot, or null when the mode
  // keeps none (the default). Allocated once; the engine owns it. A c10::Error (out of memory)
  // propagates.
  virtual std::unique_ptr<SlotPools> CreateSlotPools(int /*num_slots*/) const { return nullptr; }

  // The state of a sequence being prefilled (never null); a mode with SlotPools writes the
  // sequence's slot of start.pools here (a text-only sequence's too: "no image"). Default: none
  // beyond the base class.
  virtual std::unique_ptr<SequenceState> BeginSequence(const SequenceStart& start) const;

  // Whether a decode step's device work (the hooks of Hooks included) may be captured once per
  // batch bucket as a CUDA graph and replayed (model/nn/cuda/step_graph.h): OK when it reads only
  // the step's fixed buffers and the caches' pools; otherwise FAILED_PRECONDITION saying what it
  // reads instead, and the engine runs the step eagerly. Default: OK (the plain decoder).
  virtual Status DecodeCapturable() const { return Status::Ok(); }

  // The decoder hooks of one Forward over `batch` (row b: chunk b's state; states this mode made)
  // with the engine's `pools` (CreateSlotPools'; null where it made none). Null: the plain decoder
  // (the default).
  virtual std::unique_ptr<LayerHooks> Hooks(const std::vector<SequenceState*>& /*batch*/,
                                            SlotPools* /*pools*/) const {
    return nullptr;
  }

  // FLOPs of one image through the tower and projector (FlopCount::kVision, kProjector). Default:
  // 1 + zoom()^2 tower passes.
  virtual void AddVisionFlops(FlopCount* count) const;
  // FLOPs of one Forward's chunk of `state`'s sequence: `length` rows after `start` cached ones, in
  // `phase`. Default: the plain decoder's (AddDecoderChunkFlops).
  virtual void AddForwardFlops(SequenceState& state, int64_t start, int64_t length,
                               FlopCount::Phase phase, FlopCount* count) const;

 protected:
  // zoom: HR tiles per side (0: one view at the tower's size).
  Mode(const LlavaConfig& config, int zoom);

  const LlavaConfig config_;
  const int zoom_;
  PreprocessOptions preprocess_;
};

// The mode `config.mode.attention` names, with the weights it adds to the checkpoint (flex's
// k/v_proj_hd, xattn's cross_attn.*). INVALID_ARGUMENT when the image pipeline does not fit it
// (a single-view mode whose crop size differs from the tower's image size); a missing weight is
// NOT_FOUND, as WeightLoader says.
StatusOr<std::unique_ptr<Mode>> CreateMode(const LlavaConfig& config, const WeightLoader& weights,
                                           at::ScalarType dtype, at::Device device);

}  // namespace flexvqa
