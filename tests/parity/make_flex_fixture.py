#!/usr/bin/python3
"""Writes tests/fixtures/flex_tiny/: a tiny FlexAttention checkpoint (make_tiny_llava --mode flex, stored
in float16 to stay small), 8 small synthetic images of mixed aspect ratios, and what the plain-PyTorch
reference (tests/parity/flex_reference.py) computes for each: 32 greedy steps, each step's last-row logits,
the 9x9 block mask every FA layer used, and how close each selection came to flipping.
tests/model/modes/flex_parity_test.cc checks the engine against it.

    /usr/bin/python3 tests/parity/make_flex_fixture.py [--make-tiny-llava build-flex/tools/make_tiny_llava]

Deterministic: fixed seeds, no clock. Outputs, in the fixture directory:
  model/         config.json, model.safetensors, preprocessor_config.json, tokenizer.model, clip/...
  img_*.png      the images
  logits.f32     float32 little-endian [cases, steps, V]
  fixture.json   per case: image, width, height, input_ids, threshold, tokens, masks ([step][fa layer]
                 81-character 0/1 strings, row-major 9x9 blocks), margins; plus steps, producer
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
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flex_reference import IMAGE_TOKEN, FlexReference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "flex_tiny")
TINY_SEED = 11
STEPS = 32
# (width, height, threshold, text tokens before / after the image)
CASES = [(64, 40, 48, 4, 12), (30, 72, 48, 6, 9), (48, 48, 160, 3, 15), (90, 26, 100, 5, 7),
         (40, 56, 200, 2, 20), (80, 60, 150, 7, 11), (25, 25, 120, 4, 4), (50, 96, 80, 8, 14)]


def synthetic_image(w, h, seed):
    """A bright blob on gradients and noise: something for the attention to find."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    blob = 200 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.15 * max(w, h)) ** 2))
    img = np.stack([60 + 120 * x / max(w - 1, 1) + blob, 60 + 120 * y / max(h - 1, 1), 90 + blob], -1)
    img += rng.normal(0, 25, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-tiny-llava", default=os.path.join(ROOT, "build-flex", "tools", "make_tiny_llava"))
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_out = os.path.join(args.out, "model")
    shutil.rmtree(model_out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.abspath(args.make_tiny_llava), "--out", "tiny", "--mode", "flex", "--seed",
                        str(TINY_SEED), "--dtype", "float16"], cwd=tmp, check=True)
        shutil.copytree(os.path.join(tmp, "tiny"), model_out)
    ref = FlexReference(model_out)
    rng = np.random.default_rng(2024)
    cases, logits = [], []
    for n, (w, h, threshold, before, after) in enumerate(CASES):
        name = f"img_{n}_{w}x{h}.png"
        Image.fromarray(synthetic_image(w, h, 100 + n)).save(os.path.join(args.out, name))
        text = [int(i) for i in rng.integers(3, 500, size=before + after)]
        ids = [1] + text[:before] + [IMAGE_TOKEN] * 576 + text[before:]
        high, low, size = ref.preprocess(os.path.join(args.out, name))
        out = ref.generate(ids, high, low, size, STEPS, threshold)
        hr = out["hr_side"]
        b = hr // 9
        masks = []
        for step in out["masks"]:
            row = []
            for m in step:
                grid = m.view(9, b, 9, b)
                blocks = grid[:, 0, :, 0]
                assert bool((grid == blocks[:, None, :, None]).all()), "selection is not a union of blocks"
                row.append("".join("1" if v else "0" for v in blocks.flatten().tolist()))
            masks.append(row)
        logits.append(out["logits"].numpy().astype("<f4"))
        cases.append({"image": name, "width": w, "height": h, "input_ids": ids, "threshold": threshold,
                      "tokens": out["tokens"], "masks": masks,
                      "margins": [[round(x, 5) for x in m] for m in out["margins"]]})
        selected = sum(r.count("1") for s in masks for r in s)
        print(f"case {n}: {w}x{h} thr {threshold}: {selected} blocks selected over {STEPS} steps; "
              f"min selection margin {min(min(m[:-1]) for m in out['margins']):.4f}; tokens {out['tokens'][:8]}...")
    np.stack(logits).tofile(os.path.join(args.out, "logits.f32"))
    fixture = {"steps": STEPS, "vocab": int(logits[0].shape[1]),
               "producer": f"tests/parity/flex_reference.py (plain PyTorch {torch.__version__})",
               "model_dir": "model", "model_source": f"make_tiny_llava --mode flex --seed {TINY_SEED} --dtype float16",
               "cases": cases}
    with open(os.path.join(args.out, "fixture.json"), "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
