// The FLOP formulas against hand-derived counts for small shapes (a multiply-add counts 2).
#include "model/nn/flop_counter.h"

#include <gtest/gtest.h>

namespace flexvqa {
namespace {

TextConfig SmallText() {
  TextConfig t;
  t.hidden_size = 8;
  t.num_attention_heads = 2;
  t.num_key_value_heads = 2;  // Dh = 4.
  t.intermediate_size = 16;
  t.num_hidden_layers = 1;
  t.vocab_size = 10;
  return t;
}

TEST(FlopCounterTest, DecoderChunk) {
  FlopCount f;
  AddDecoderChunkFlops(SmallText(), /*start=*/3, /*length=*/2, FlopCount::kPrefill, &f);
  const double* p = f.flops[FlopCount::kPrefill];
  EXPECT_EQ(p[FlopCount::kProjections], 2 * 2 * 8 * 24 + 2 * 2 * 8 * 8);  // q,k,v (24 wide) + o.
  EXPECT_EQ(p[FlopCount::kAttention], 2 * (2 * 2 * 2 * 5 * 4));           // QK^T and PV, 5 keys.
  EXPECT_EQ(p[FlopCount::kMlp], 2 * 2 * 8 * 32 + 2 * 2 * 16 * 8);         // gate+up, down.
  EXPECT_EQ(p[FlopCount::kLmHead], 2 * 8 * 10);                           // The last row only.
  EXPECT_EQ(f.Total(), 1024 + 320 + 1536 + 160);
}

TEST(FlopCounterTest, CompositeChunkSkipsImageRows) {
  FlopCount f;
  // 6 rows after 1 cached one; rows 2..4 (image) attend to nothing, rows 0-1 see 1 + 2 keys, row 5
  // sees 7.
  AddDecoderChunkFlops(SmallText(), /*start=*/1, /*length=*/6, /*skip_begin=*/2, /*skip=*/3,
                       FlopCount::kPrefill, &f);
  const double* p = f.flops[FlopCount::kPrefill];
  EXPECT_EQ(p[FlopCount::kAttention], 2 * (2 * 2 * 2 * 3 * 4) + 2 * (2 * 2 * 1 * 7 * 4));
  EXPECT_EQ(p[FlopCount::kProjections], 6 * (2 * 8 * 24 + 2 * 8 * 8));  // Every row is projected.
  FlopCount plain, none;
  AddDecoderChunkFlops(SmallText(), 1, 6, FlopCount::kPrefill, &plain);
  AddDecoderChunkFlops(SmallText(), 1, 6, /*skip_begin=*/6, /*skip=*/0, FlopCount::kPrefill, &none);
  EXPECT_EQ(none.Total(), plain.Total());
}

TEST(FlopCounterTest, CrossAttention) {
  LlavaConfig c;
  c.text = SmallText();
  c.text.num_hidden_layers = 3;
  c.mode.attention = AttentionMode::kXattn;
  c.mode.xattn_every = 2;  // Layers 0 and 2.
  c.mode.xattn_hidden = 4;
  c.mode.xattn_heads = 2;  // 2 wide.
  FlopCount f;
  AddCrossAttentionFlops(c, /*rows=*/3, /*hr_keys=*/5, /*hr_rows_computed=*/5, FlopCount::kPrefill,
                         &f);
  const double* p = f.flops[FlopCount::kPrefill];
  EXPECT_EQ(p[FlopCount::kProjections], 2 * (2 * 3 * 8 * 4 + 2 * 3 * 4 * 8));  // q and o, 2 layers.
  EXPECT_EQ(p[FlopCount::kAttention], 2 * (2 * 2 * 2 * 3 * 5 * 2));            // QK^T and PV.
  EXPECT_EQ(p[FlopCount::kHighResProjections], 2 * (2 * 5 * 8 * 8));           // k and v (2 C = 8).
  FlopCount none;
  c.mode.attention = AttentionMode::kFull;
  AddCrossAttentionFlops(c, 3, 5, 5, FlopCount::kPrefill, &none);
  EXPECT_EQ(none.Total(), 0);
}

TEST(FlopCounterTest, FlexExtras) {
  FlopCount f;
  AddFlexFlops(SmallText(), /*rescored_keys=*/7, /*hr_keys_attended=*/5, /*hr_rows_computed=*/3,
               FlopCount::kDecode, &f);
  const double* d = f.flops[FlopCount::kDecode];
  EXPECT_EQ(d[FlopCount::kAttention], 2 * 2 * 4 * 7 + 2 * (2 * 2 * 4 * 5));
  EXPECT_EQ(d[FlopCount::kHighResProjections], 2 * 3 * 8 * (2 * 8));  // k_proj_hd and v_proj_hd.
}

TEST(FlopCounterTest, VisionAndProjector) {
  LlavaConfig c;
  c.text = SmallText();
  c.vision.hidden_size = 4;
  c.vision.num_attention_heads = 2;
  c.vision.intermediate_size = 8;
  c.vision.num_hidden_layers = 2;  // Layer -2: one block runs.
  c.vision.image_size = 28;
  c.vision.patch_size = 14;  // 4 patches + CLS = 5 tokens.
  FlopCount f;
  AddVisionFlops(c, /*images=*/3, &f);
  const double* v = f.flops[FlopCount::kVision];
  EXPECT_EQ(v[FlopCount::kProjections], 3 * (2 * 4 * 588 * 4 + 2 * 5 * 4 * 12 + 2 * 5 * 4 * 4));
  EXPECT_EQ(v[FlopCount::kAttention], 3 * (4 * 2 * 5 * 5 * 2));
  EXPECT_EQ(v[FlopCount::kMlp], 3 * (2 * 2 * 5 * 4 * 8));
  EXPECT_EQ(f.flops[FlopCount::kProjector][FlopCount::kProjections],
            2 * 12 * 4 * 8 + 2 * 12 * 8 * 8);
}

}  // namespace
}  // namespace flexvqa
