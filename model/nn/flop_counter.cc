#include "model/nn/flop_counter.h"

#include <algorithm>

namespace flexvqa {

double LinearFlops(int64_t rows, int64_t in, int64_t out) {
  return 2.0 * static_cast<double>(rows) * static_cast<double>(in) * static_cast<double>(out);
}

double AttentionFlops(int64_t heads, int64_t queries, int64_t keys, int64_t head_dim) {
  return 4.0 * static_cast<double>(heads) * static_cast<double>(queries) *
         static_cast<double>(keys) * static_cast<double>(head_dim);
}

void AddVisionFlops(const LlavaConfig& config, int64_t images, FlopCount* count) {
  const VisionConfig& v = config.vision;
  const int64_t patches =
      static_cast<int64_t>(v.image_size / v.patch_size) * (v.image_size / v.patch_size);
  const int64_t t = patches + 1;  // CLS token.
  const int64_t d = v.hidden_size;
  // Blocks up to the selected hidden state (ClipVisionTower loads and runs no more).
  const int n = v.num_hidden_layers;
  const int blocks = config.vision_feature_layer < 0 ? n + 1 + config.vision_feature_layer
                                                     : config.vision_feature_layer;
  double* f = count->flops[FlopCount::kVision];
  f[FlopCount::kProjections] +=
      images *
      LinearFlops(patches, static_cast<int64_t>(v.num_channels) * v.patch_size * v.patch_size, d);
  for (int b = 0; b < blocks; ++b) {
    f[FlopCount::kProjections] += images * (LinearFlops(t, d, 3 * d) + LinearFlops(t, d, d));
    f[FlopCount::kAttention] +=
        images * AttentionFlops(v.num_attention_heads, t, t, d / v.num_attention_heads);
    f[FlopCount::kMlp] +=
        images * (LinearFlops(t, d, v.intermediate_size) + LinearFlops(t, v.intermediate_size, d));
  }
  const int64_t tokens = images * patches;
  const int64_t dt = config.text.hidden_size;
  count->flops[FlopCount::kProjector][FlopCount::kProjections] +=
      LinearFlops(tokens, d, dt) + LinearFlops(tokens, dt, dt);
}

void AddDecoderChunkFlops(const TextConfig& c, int64_t start, int64_t length,
                          FlopCount::Phase phase, FlopCount* count) {
  AddDecoderChunkFlops(c, start, length, 0, 0, phase, count);
}

void AddDecoderChunkFlops(const TextConfig& c, int64_t start, int64_t length, int64_t skip_begin,
                          int64_t skip, FlopCount::Phase phase, FlopCount* count) {
  const int64_t d = c.hidden_size, dh = c.head_dim();
  const int64_t qkv = static_cast<int64_t>(c.num_attention_heads + 2 * c.num_key_value_heads) * dh;
  const int64_t begin = std::clamp(skip_begin, int64_t{0}, length);
  const int64_t end = std::clamp(skip_begin + skip, begin, length);
  double* f = count->flops[phase];
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    f[FlopCount::kProjections] +=
        LinearFlops(length, d, qkv) + LinearFlops(length, c.num_attention_heads * dh, d);
    if (end == begin) {
      f[FlopCount::kAttention] += AttentionFlops(c.num_attention_heads, length, start + length, dh);
    } else {  // Matches LlamaDecoder::AttentionBlock's two rectangles.
      f[FlopCount::kAttention] +=
          AttentionFlops(c.num_attention_heads, begin, start + begin, dh) +
          AttentionFlops(c.num_attention_heads, length - end, start + length, dh);
    }
    f[FlopCount::kMlp] += LinearFlops(length, d, 2 * static_cast<int64_t>(c.intermediate_size)) +
                          LinearFlops(length, c.intermediate_size, d);
  }
  f[FlopCount::kLmHead] += LinearFlops(1, d, c.vocab_size);
}

void AddCrossAttentionFlops(const LlavaConfig& config, int64_t rows, int64_t hr_keys,
                            int64_t hr_rows_computed, FlopCount::Phase phase, FlopCount* count) {
  const int64_t d = config.text.hidden_size, c = config.mode.xattn_hidden,
                heads = config.mode.xattn_heads;
  double* f = count->flops[phase];
  for (int l = 0; l < config.text.num_hidden_layers; ++l) {
    if (!config.mode.cross_attends(l)) continue;
    f[FlopCount::kProjections] += LinearFlops(rows, d, c) + LinearFlops(rows, c, d);
    f[FlopCount::kAttention] += AttentionFlops(heads, rows, hr_keys, c / heads);
    f[FlopCount::kHighResProjections] += LinearFlops(hr_rows_computed, d, 2 * c);
  }
}

void AddFlexFlops(const TextConfig& c, int64_t rescored_keys, int64_t hr_keys_attended,
                  int64_t hr_rows_computed, FlopCount::Phase phase, FlopCount* count) {
  const int64_t dh = c.head_dim(), h = c.num_attention_heads;
  double* f = count->flops[phase];
  // Rescored ordinary keys: scores only (2 H Dh each); their values are in the chunk's count,
  // except in hierarchical layers, where the row's output is recomputed too (counted with its HR
  // keys below as a lower bound; the difference is 2 H Dh keys per FA layer of one row).
  f[FlopCount::kAttention] += AttentionFlops(h, 1, rescored_keys, dh) / 2;
  // The hierarchical row's scores and values over the HR keys; its ordinary part is in the chunk's
  // count.
  f[FlopCount::kAttention] += AttentionFlops(h, 1, hr_keys_attended, dh);
  const int64_t kv = static_cast<int64_t>(c.num_key_value_heads) * dh;
  f[FlopCount::kHighResProjections] += LinearFlops(hr_rows_computed, c.hidden_size, 2 * kv);
}

}  // namespace flexvqa
