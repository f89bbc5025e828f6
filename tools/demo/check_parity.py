#!/usr/bin/python3
"""Checks that the trained network is the forward the engine runs: for a few generated scenes, the
exported checkpoint read by tests/parity/flex_reference.py (the reference the engine's parity tests hold
it to) gives the same logits and the same HR selections, step by step with its KV cache, as FlexNet's
batched training forward. Writes the scenes as PNG under --out (for flexvqa_run) and prints the greedy
answers.

    /usr/bin/python3 tools/demo/check_parity.py --model models/demo-flex --work build/demo-train --seeds 3
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "parity"))
import data  # noqa: E402
import scene as scenes  # noqa: E402
from flex_reference import FlexReference  # noqa: E402
from flexnet import FlexNet, bands_of  # noqa: E402


def load_net(model_dir, cfg):
    """A FlexNet holding the exported weights (read back from the files, not from memory)."""
    ref = FlexReference(model_dir)
    net = FlexNet(cfg, ref.w["model.embed_tokens.weight"].shape[0])
    with torch.no_grad():
        for key, p in net.w.items():
            name = key.replace("/", ".")
            name = "vision_model." + name[2:] if name.startswith("v.") else (
                "model." + name[2:] if name.startswith("m.") else name)
            p.copy_(ref.w[name])
    return ref, net


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-base", type=int, default=9_000_000)
    ap.add_argument("--out", default="/tmp/demo_parity")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import json
    cfg = json.load(open(os.path.join(args.model, "demo_config.json")))
    ref, net = load_net(args.model, cfg)
    prompter = data.Prompter(os.path.join(args.model, "tokenizer.model"), net.lr_side ** 2)
    os.makedirs(args.out, exist_ok=True)
    worst = 0.0
    for i in range(args.seeds):
        seed = args.seed_base + i
        sc = scenes.make_scene(seed)
        path = os.path.join(args.out, f"scene_{seed}.png")
        sc["image"].save(path)
        high, low, size = ref.preprocess(path)
        h2, l2, _ = data.preprocess(sc["image"], ref.highres, ref.lowres)
        assert torch.equal(high, h2) and torch.equal(low, l2), "preprocessing differs from the reference"
        for kind, question, answer, _ in sc["questions"]:
            prompt = prompter.prompt(question)
            out = ref.generate(prompt, high, low, size, steps=2)
            tokens = out["tokens"]
            ids = torch.tensor([prompt + tokens[:1]])
            p = len(prompt)
            with torch.no_grad():
                logits, _, masks = net(ids, prompter.begin, (high, low), torch.tensor([0]),
                                       torch.tensor([[p - 1, p]]), [bands_of(size, net.lr_side)])
            diff = float((logits[0] - out["logits"]).abs().max())
            worst = max(worst, diff)
            for layer, m in enumerate(masks):
                for step in range(2):
                    assert torch.equal(m[0, step], out["masks"][step][layer]), f"mask differs: {seed} {kind}"
            print(f"{path}\t{question}\texpected {answer}\treference {prompter.decode(tokens)!r}\t"
                  f"max |logit diff| {diff:.2e}")
    print(f"worst max |logit diff| {worst:.2e}")
    assert worst < 1e-4, "training forward and reference differ"


if __name__ == "__main__":
    main()
