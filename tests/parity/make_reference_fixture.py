#!/usr/bin/python3
"""Writes tests/fixtures/reference_tiny/: a tiny LLaVA checkpoint and what the plain-PyTorch reference
(tests/parity/llava_reference.py) computes for a fixed image and prompt. tests/model/reference_parity_test.cc
checks the C++ engine against it.

    /usr/bin/python3 tests/parity/make_reference_fixture.py [--make-tiny-llava build/tools/make_tiny_llava]

Needs Debian's python3-torch and python3-numpy (/usr/bin/python3; a pyenv python3 lacks them). The
checkpoint comes from `make_tiny_llava --out <dir> --seed 7` (hf layout) unless --checkpoint names an
existing one. Deterministic: fixed seeds, no clock. Outputs, in the fixture directory:
  model/            config.json, model.safetensors, preprocessor_config.json, tokenizer.model
  pixel_values.f32  float32 little-endian [1, 3, S, S]: seeded standard normal values (preprocessing has
                    its own fixture, tests/fixtures/preprocess)
  logits.f32        float32 little-endian [T, V]: the prompt's logits at every position
  fixture.json      input_ids, pixel_shape, logits_shape, greedy_tokens (32, each step recomputed from
                    scratch), greedy_margins (top-1 minus top-2 logit per step), producer, model_dir
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llava_reference import LlavaReference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference_tiny")
MODEL_FILES = ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.model"]
TINY_SEED = 7
PIXEL_SEED = 7
PROMPT_SEED = 2024
GREEDY_TOKENS = 32


def fixed_prompt(image_token, num_image_tokens):
    """BOS, 5 text ids, the image placeholders, 18 text ids (40 tokens for 16 image tokens). Text ids
    avoid the specials 0..2 and everything from the image token up."""
    rng = np.random.default_rng(PROMPT_SEED)
    text = [int(i) for i in rng.integers(3, min(image_token, 512), size=23)]
    return [1] + text[:5] + [image_token] * num_image_tokens + text[5:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-tiny-llava", default=os.path.join(ROOT, "build", "tools", "make_tiny_llava"),
                        help="the make_tiny_llava program (default: build/tools/make_tiny_llava)")
    parser.add_argument("--checkpoint", help="use this existing hf-layout checkpoint instead")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.checkpoint
        if source is None:
            # A relative --out: tokenizer.model records its output prefix, which must not be a temp name.
            subprocess.run([os.path.abspath(args.make_tiny_llava), "--out", "tiny", "--seed", str(TINY_SEED)],
                           cwd=tmp, check=True)
            source = os.path.join(tmp, "tiny")
        model_out = os.path.join(args.out, "model")
        shutil.rmtree(model_out, ignore_errors=True)
        os.makedirs(model_out)
        for name in MODEL_FILES:
            if os.path.exists(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(model_out, name))

    ref = LlavaReference(model_out)
    vision = ref.config.vision
    s = vision["image_size"]
    side = s // vision["patch_size"]
    num_image_tokens = side * side + (0 if ref.config.vision_feature_select_strategy == "default" else 1)
    pixels = np.random.default_rng(PIXEL_SEED).standard_normal((1, vision["num_channels"], s, s),
                                                               dtype=np.float32)
    input_ids = fixed_prompt(ref.config.image_token_index, num_image_tokens)
    pixel_tensor = torch.from_numpy(pixels)

    logits = ref.prompt_logits(input_ids, pixel_tensor).numpy().astype("<f4")  # [T, V]
    tokens, margins = ref.greedy(input_ids, pixel_tensor, GREEDY_TOKENS)

    pixels.astype("<f4").tofile(os.path.join(args.out, "pixel_values.f32"))
    logits.tofile(os.path.join(args.out, "logits.f32"))
    fixture = {
        "input_ids": input_ids,
        "pixel_shape": list(pixels.shape),
        "logits_shape": list(logits.shape),
        "greedy_tokens": tokens,
        "greedy_margins": [round(m, 6) for m in margins],
        "producer": f"tests/parity/llava_reference.py (plain PyTorch {torch.__version__})",
        "model_dir": "model",
        "model_source": f"make_tiny_llava --seed {TINY_SEED} (hf layout)",
    }
    with open(os.path.join(args.out, "fixture.json"), "w") as f:
        # One field a line, lists kept on their line: readable diffs when the fixture is regenerated.
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in fixture.items()) + "\n}\n")
    print(f"wrote {args.out}: {len(input_ids)} prompt tokens, logits {list(logits.shape)}, "
          f"greedy {tokens}, smallest greedy margin {min(margins):.4f}")


if __name__ == "__main__":
    main()
