#include "model/nn/clip_vision.h"

#include <ATen/ATen.h>

#include <cmath>

#include "model/nn/layers.h"
#include "model/nn/torch_compat.h"

namespace flexvqa {

StatusOr<std::unique_ptr<ClipVisionTower>> ClipVisionTower::Load(const WeightLoader& weights,
                                                                 const LlavaConfig& config,
                                                                 at::ScalarType dtype,
                                                                 at::Device device) {
  const VisionConfig& vc = config.vision;
  if (!IsKnownActivation(vc.hidden_act)) {
    return InvalidArgumentError("vision tower activation '" + vc.hidden_act + "' is not supported");
  }
  auto tower = std::unique_ptr<ClipVisionTower>(new ClipVisionTower());
  tower->config_ = vc;
  tower->dtype_ = dtype;
  tower->keep_cls_ =
      !(config.vision_feature_select == "default" || config.vision_feature_select == "patch");
  // hidden_states has num_layers + 1 entries (embeddings first); layer -2 is the output of block
  // N-1.
  const int n = vc.num_hidden_layers;
  const int layer = config.vision_feature_layer < 0 ? n + 1 + config.vision_feature_layer
                                                    : config.vision_feature_layer;
  if (layer < 0 || layer > n) {
    return InvalidArgumentError("vision_feature_layer " +
                                std::to_string(config.vision_feature_layer) +
                                " is outside a tower of " + std::to_string(n) + " layers");
  }
  const int64_t d = vc.hidden_size;
  const int64_t p = vc.patch_size;
  const int64_t side = vc.image_size / vc.patch_size;
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    return weights.Get(WeightSection::kVision, name, shape, dtype, device);
  };
  FLEXVQA_ASSIGN_OR_RETURN(tower->class_embedding_, get("embeddings.class_embedding", {d}));
  FLEXVQA_ASSIGN_OR_RETURN(tower->patch_embedding_,
                           get("embeddings.patch_embedding.weight", {d, vc.num_channels, p, p}));
  FLEXVQA_ASSIGN_OR_RETURN(tower->position_embedding_,
                           get("embeddings.position_embedding.weight", {1 + side * side, d}));
  FLEXVQA_ASSIGN_OR_RETURN(tower->pre_ln_w_, get("pre_layrnorm.weight", {d}));
  FLEXVQA_ASSIGN_OR_RETURN(tower->pre_ln_b_, get("pre_layrnorm.bias", {d}));
  const int64_t inter = vc.intermediate_size;
  for (int i = 0; i < layer; ++i) {
    const std::string pre = "encoder.layers." + std::to_string(i) + ".";
    Block b;
    FLEXVQA_ASSIGN_OR_RETURN(b.ln1_w, get(pre + "layer_norm1.weight", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(b.ln1_b, get(pre + "layer_norm1.bias", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(b.ln2_w, get(pre + "layer_norm2.weight", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(b.ln2_b, get(pre + "layer_norm2.bias", {d}));
    std::vector<at::Tensor> w, bias;
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      FLEXVQA_ASSIGN_OR_RETURN(at::Tensor pw, get(pre + "self_attn." + proj + ".weight", {d, d}));
      FLEXVQA_ASSIGN_OR_RETURN(at::Tensor pb, get(pre + "self_attn." + proj + ".bias", {d}));
      w.push_back(pw);
      bias.push_back(pb);
    }
    b.qkv_w = at::cat(w, 0);
    b.qkv_b = at::cat(bias, 0);
    FLEXVQA_ASSIGN_OR_RETURN(b.out_w, get(pre + "self_attn.out_proj.weight", {d, d}));
    FLEXVQA_ASSIGN_OR_RETURN(b.out_b, get(pre + "self_attn.out_proj.bias", {d}));
    FLEXVQA_ASSIGN_OR_RETURN(b.fc1_w, get(pre + "mlp.fc1.weight", {inter, d}));
    FLEXVQA_ASSIGN_OR_RETURN(b.fc1_b, get(pre + "mlp.fc1.bias", {inter}));
    FLEXVQA_ASSIGN_OR_RETURN(b.fc2_w, get(pre + "mlp.fc2.weight", {d, inter}));
    FLEXVQA_ASSIGN_OR_RETURN(b.fc2_b, get(pre + "mlp.fc2.bias", {d}));
    tower->layers_.push_back(std::move(b));
  }
  return tower;
}

at::Tensor ClipVisionTower::Forward(const at::Tensor& pixels_in) const {
  const int64_t d = config_.hidden_size;
  const int64_t heads = config_.num_attention_heads;
  const int64_t dh = d / heads;
  const at::Tensor pixels = pixels_in.to(dtype_);
  const int64_t b = pixels.size(0);
  // [B, Dv, S/p, S/p] -> [B, (S/p)^2, Dv]
  const at::Tensor patches = at::conv2d(pixels, patch_embedding_, /*bias=*/{},
                                        /*stride=*/{config_.patch_size, config_.patch_size})
                                 .flatten(2)
                                 .transpose(1, 2);
  at::Tensor x = at::cat({class_embedding_.view({1, 1, d}).expand({b, 1, d}), patches}, 1);
  x = x + position_embedding_.unsqueeze(0);  // [B, T, Dv]
  x = LayerNorm(x, pre_ln_w_, pre_ln_b_, config_.layer_norm_eps);
  const int64_t t = x.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  for (const Block& blk : layers_) {
    at::Tensor h = LayerNorm(x, blk.ln1_w, blk.ln1_b, config_.layer_norm_eps);
    const at::Tensor qkv = Linear(h, blk.qkv_w, blk.qkv_b).view({b, t, 3, heads, dh});
    // [B, heads, T, dh] each
    const at::Tensor q = qkv.select(2, 0).transpose(1, 2);
    const at::Tensor k = qkv.select(2, 1).transpose(1, 2);
    const at::Tensor v = qkv.select(2, 2).transpose(1, 2);
    const at::Tensor attn = Attention(q, k, v, scale, /*causal_offset=*/-1);  // Bidirectional.
    x = x + Linear(attn.transpose(1, 2).reshape({b, t, d}), blk.out_w, blk.out_b);
    h = LayerNorm(x, blk.ln2_w, blk.ln2_b, config_.layer_norm_eps);
    h = Linear(Activation(Linear(h, blk.fc1_w, blk.fc1_b), config_.hidden_act), blk.fc2_w,
               blk.fc2_b);
    x = x + h;
  }
  return keep_cls_ ? x : x.narrow(1, 1, t - 1);
}

StatusOr<std::unique_ptr<MultiModalProjector>> MultiModalProjector::Load(
    const WeightLoader& weights, const LlavaConfig& config, at::ScalarType dtype,
    at::Device device) {
  if (config.projector_type != "mlp2x_gelu") {
    return UnimplementedError("projector type '" + config.projector_type +
                              "' is not supported (only mlp2x_gelu, as LLaVA-1.5)");
  }
  const int64_t dv = config.vision.hidden_size;
  const int64_t d = config.text.hidden_size;
  auto proj = std::unique_ptr<MultiModalProjector>(new MultiModalProjector());
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    return weights.Get(WeightSection::kProjector, name, shape, dtype, device);
  };
  FLEXVQA_ASSIGN_OR_RETURN(proj->w1_, get("linear_1.weight", {d, dv}));
  FLEXVQA_ASSIGN_OR_RETURN(proj->b1_, get("linear_1.bias", {d}));
  FLEXVQA_ASSIGN_OR_RETURN(proj->w2_, get("linear_2.weight", {d, d}));
  FLEXVQA_ASSIGN_OR_RETURN(proj->b2_, get("linear_2.bias", {d}));
  return proj;
}

at::Tensor MultiModalProjector::Forward(const at::Tensor& features) const {
  return Linear(at::gelu(Linear(features, w1_, b1_)), w2_, b2_);
}

StatusOr<std::unique_ptr<ImageEncoder>> ImageEncoder::Load(const WeightLoader& weights,
                                                           const LlavaConfig& config,
                                                           at::ScalarType dtype,
                                                           at::Device device) {
  auto encoder = std::unique_ptr<ImageEncoder>(new ImageEncoder());
  encoder->device_ = device;
  FLEXVQA_ASSIGN_OR_RETURN(encoder->tower_, ClipVisionTower::Load(weights, config, dtype, device));
  FLEXVQA_ASSIGN_OR_RETURN(encoder->projector_,
                           MultiModalProjector::Load(weights, config, dtype, device));
  return encoder;
}

at::Tensor ImageEncoder::Encode(const at::Tensor& pixels) const {
  return projector_->Forward(tower_->Forward(pixels.to(device_)));
}

std::pair<at::Tensor, at::Tensor> ImageEncoder::EncodeTwoResolutions(const at::Tensor& high,
                                                                     const at::Tensor& low) const {
  const int64_t n = high.size(0);
  const int64_t s = low.size(-1);
  const int64_t z = high.size(-1) / s;
  // [N, 3, Z S, Z S] -> [N, 3, Z, S, Z, S] -> [N, Z(row), Z(col), 3, S, S] -> [N Z^2, 3, S, S]:
  // tiles in row-major order (mm_utils.py:250-334 crop_images_to_subimages).
  const at::Tensor tiles =
      high.view({n, 3, z, s, z, s}).permute({0, 2, 4, 1, 3, 5}).reshape({n * z * z, 3, s, s});
  // One vision batch for the tiles and the LR images alike.
  const at::Tensor features = Encode(at::cat({tiles, low.to(tiles.scalar_type())}, 0));
  const int64_t tokens = features.size(1);
  const int64_t side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(tokens))));
  const int64_t d = features.size(2);
  // [N Z^2, s^2, D] -> [N, Z(row), Z(col), s(row), s(col), D] -> [N, Z, s, Z, s, D]: the tiles'
  // grids stitched into one (Z s) x (Z s) grid, flattened row-major (combine_subimages_to_images).
  const at::Tensor hr = features.narrow(0, 0, n * z * z)
                            .view({n, z, z, side, side, d})
                            .permute({0, 1, 3, 2, 4, 5})
                            .reshape({n, z * side * z * side, d});
  return {features.narrow(0, n * z * z, n), hr};
}

}  // namespace flexvqa
