#!/usr/bin/env python3
"""Writes tests/fixtures/hf_tiny/: a tiny random Hugging Face LlavaForConditionalGeneration and what
transformers itself computes for a fixed image and prompt. tests/model/hf_parity_test.cc checks the C++
engine against it (and skips while the directory does not exist).

NOT RUN YET: written against the transformers Llava API (>= 4.45; meant for transformers 5.17 / torch 2.11
on the GPU machine) without transformers at hand. Expect to fix small API drift on the first run; the
self-checks below fail loudly rather than write a wrong fixture.

    python3 tests/parity/make_hf_fixture.py [--tokenizer path/to/tokenizer.model] [--out DIR]

Everything runs on the CPU in fp32 with eager attention (no TF32, no GPU kernels), so the fixture is the
exact fp32 answer whatever machine produces it. Deterministic: fixed seeds, no clock.

Weights: HF's default init (std 0.02) at width 64 makes the logits nearly independent of the input, so
every parameter is redrawn the way tools/tiny/tiny_llava.cc draws them (normal(0, 1/sqrt(fan_in)) matrices,
norms around 1, small biases, lm_head x4): logits of O(10) that move with the image and the position.

Outputs, in the fixture directory (the format of tests/parity/make_reference_fixture.py):
  model/            save_pretrained(): config.json, model.safetensors; the image processor's
                    preprocessor_config.json; tokenizer.model when --tokenizer is given
  image.png         the synthetic input image
  pixel_values.f32  float32 little-endian [1, 3, 56, 56]: the image through CLIPImageProcessor
  logits.f32        float32 little-endian [T, V]: model(input_ids, pixel_values).logits[0]
  fixture.json      input_ids, pixel_shape, logits_shape, greedy_tokens (generate(), greedy, 32 new
                    tokens, no EOS), greedy_margins, producer, model_dir, reference_max_abs_diff (our
                    plain-PyTorch reference, tests/parity/llava_reference.py, on the same saved model)
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (CLIPImageProcessor, CLIPVisionConfig, GenerationConfig, LlamaConfig,
                          LlavaConfig, LlavaForConditionalGeneration)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llava_reference import LlavaReference  # noqa: E402
from make_reference_fixture import fixed_prompt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf_tiny")
SEED = 7
GREEDY_TOKENS = 32
IMAGE_TOKEN = 512  # The tiny tokenizer's 512 pieces, then <image>, then <pad>; vocab padded to 576.
PAD_TOKEN = 513
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TOLERANCE = 1e-4


def tiny_config():
    """The shapes of tools/tiny/tiny_llava.h's defaults."""
    text = LlamaConfig(vocab_size=576, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=1, eos_token_id=2,
                       pad_token_id=PAD_TOKEN, tie_word_embeddings=False)  # rope_theta: default 10000.
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                              projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=16)
    # Older releases call it image_token_index, newer ones image_token_id (aliased or renamed): set both.
    for name in ("image_token_index", "image_token_id"):
        setattr(config, name, IMAGE_TOKEN)
    config.pad_token_id = PAD_TOKEN
    return config


@torch.no_grad()
def redraw_weights(model, seed):
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            value = normal(p.shape, 1.0)
        elif name.endswith("class_embedding") or name.endswith("position_embedding.weight"):
            value = normal(p.shape, 0.5)
        elif name.endswith("patch_embedding.weight"):  # [Dv, 3, p, p]
            value = normal(p.shape, 1.0 / (p.shape[1] * p.shape[2]))
        elif p.dim() == 1 and "norm" in name and name.endswith(".weight"):
            value = normal(p.shape, 0.1, 1.0)
        elif p.dim() == 1:
            value = normal(p.shape, 0.1)
        elif p.dim() == 2:
            scale = 4.0 if name.endswith("lm_head.weight") else 1.0
            value = normal(p.shape, scale / p.shape[1] ** 0.5)
        else:
            raise ValueError(f"no init rule for {name} {tuple(p.shape)}")
        p.copy_(value)


def synthetic_image():
    """80x64 RGB: gradients, a hard-edged rectangle and a disc (not square: exercises resize and crop)."""
    h, w = 64, 80
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 128 + 100 * np.sin(x / 5 + y / 7)], -1)
    img[10:30, 12:40] = [250, 40, 30]
    img[(x - 55) ** 2 + (y - 40) ** 2 < 14 ** 2] = [30, 60, 240]
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def load_kwargs():
    major = int(transformers.__version__.split(".")[0])
    dtype_key = "dtype" if major >= 5 else "torch_dtype"
    return {dtype_key: torch.float32, "attn_implementation": "eager"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a tokenizer.model to copy into the model directory (optional)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    model_dir = os.path.join(args.out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)

    # 1. The model, saved as transformers saves it; the fixture is computed from the reloaded copy, so
    # that what is on disk is what produced the numbers.
    model = LlavaForConditionalGeneration(tiny_config()).to(torch.float32)
    redraw_weights(model, SEED)
    model.save_pretrained(model_dir)
    processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                   do_resize=True, do_center_crop=True, do_normalize=True,
                                   image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    processor.save_pretrained(model_dir)
    if args.tokenizer:
        shutil.copyfile(args.tokenizer, os.path.join(model_dir, "tokenizer.model"))
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, **load_kwargs()).eval()
    cfg = model.config
    assert getattr(cfg, "image_token_id", getattr(cfg, "image_token_index", None)) == IMAGE_TOKEN

    # 2. Inputs.
    image = synthetic_image()
    image.save(os.path.join(args.out, "image.png"))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(torch.float32)
    assert tuple(pixel_values.shape) == (1, 3, 56, 56), pixel_values.shape
    input_ids = fixed_prompt(IMAGE_TOKEN, 16)
    ids = torch.tensor([input_ids], dtype=torch.long)
    attention_mask = torch.ones_like(ids)

    # 3. The prompt's logits.
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention_mask, pixel_values=pixel_values).logits[0]
    logits = logits.float()  # [T, V]

    # 4. Greedy generation: 32 new tokens, nothing stops it or edits its logits. The model's own
    # generation_config is replaced too, since generate() fills values left at their defaults from it.
    gen_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=GREEDY_TOKENS,
                                  min_new_tokens=GREEDY_TOKENS, eos_token_id=None, bos_token_id=1,
                                  pad_token_id=PAD_TOKEN)
    model.generation_config = gen_config
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attention_mask, pixel_values=pixel_values,
                             generation_config=gen_config, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[0, len(input_ids):].tolist()
    step_logits = torch.stack([s[0].float() for s in out.logits])  # [32, V], before any processor.
    assert len(tokens) == GREEDY_TOKENS, f"generate() stopped after {len(tokens)} tokens"
    # Self-checks: every token is the raw argmax (no EOS suppression or penalty changed a choice), and
    # the first step agrees with the plain forward pass.
    assert tokens == step_logits.argmax(-1).tolist(), "generate() did not pick the raw argmax"
    first_step_diff = (step_logits[0] - logits[-1]).abs().max().item()
    assert first_step_diff <= TOLERANCE, f"generate's first logits differ from forward's by {first_step_diff}"
    top2 = step_logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()

    # 5. Our plain-PyTorch reference on the saved checkpoint: validates tests/parity/llava_reference.py
    # (and so tests/fixtures/reference_tiny) against transformers.
    ref = LlavaReference(model_dir)
    ref_diff = (ref.prompt_logits(input_ids, pixel_values) - logits).abs().max().item()
    ref_tokens, _ = ref.greedy(input_ids, pixel_values, GREEDY_TOKENS)

    pixel_values.numpy().astype("<f4").tofile(os.path.join(args.out, "pixel_values.f32"))
    logits.numpy().astype("<f4").tofile(os.path.join(args.out, "logits.f32"))
    fixture = {
        "input_ids": input_ids,
        "pixel_shape": list(pixel_values.shape),
        "logits_shape": list(logits.shape),
        "greedy_tokens": tokens,
        "greedy_margins": [round(m, 6) for m in margins],
        "producer": f"transformers {transformers.__version__} LlavaForConditionalGeneration "
                    f"(torch {torch.__version__}, CPU fp32, eager attention)",
        "model_dir": "model",
        "image": "image.png",
        "image_processor": type(processor).__name__,
        "reference_max_abs_diff": ref_diff,
        "reference_greedy_match": ref_tokens == tokens,
    }
    with open(os.path.join(args.out, "fixture.json"), "w") as f:
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in fixture.items()) + "\n}\n")
    print(f"wrote {args.out}: {len(input_ids)} prompt tokens, logits {list(logits.shape)}, greedy {tokens}, "
          f"smallest greedy margin {min(margins):.4f}")
    print(f"plain-PyTorch reference vs transformers: max abs logit diff {ref_diff:.3g}, "
          f"greedy {'identical' if ref_tokens == tokens else 'DIFFERENT'}")
    if ref_diff > TOLERANCE or ref_tokens != tokens:
        print("WARNING: tests/parity/llava_reference.py disagrees with transformers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
