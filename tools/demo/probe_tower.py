#!/usr/bin/python3
"""Diagnoses a demo checkpoint that answers at chance: does its vision side carry what the questions ask?
For generated scenes it takes the projector's LR outputs on each box's cells (the rows the decoder reads),
averages them per box, and fits a linear classifier of the box's colour on 3/4 of the boxes, scored on the
rest; the same for a network with the recipe's initial weights (seed 0, untrained). Then it measures how
much the checkpoint's answer logits move with the image: the spread of the answer distribution over the
scenes for one fixed question (0 bits: the decoder ignores the image).

    /usr/bin/python3 tools/demo/probe_tower.py --model DIR [--images 300]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import scene as scenes  # noqa: E402
from check_parity import load_net  # noqa: E402
from flexnet import FlexNet, bands_of  # noqa: E402
from train import HELDOUT_SEED_BASE  # noqa: E402


def box_features(net, seeds):
    feats, labels, lows, sizes = [], [], [], []
    for seed in seeds:
        sc = scenes.make_scene(seed)
        _, low, size = data.preprocess(sc["image"], net.cfg["zoom"] * net.cfg["image_size"], net.cfg["image_size"])
        lows.append(low)
        sizes.append(size)
        f = net.clip_features(low)[0]  # [lr*lr, D]
        for b in sc["boxes"]:
            feats.append(f[scenes.rect_to_cells(b["rect"], size, net.lr_side)].mean(0))
            labels.append(sorted(scenes.COLOURS).index(b["colour"]))
    return torch.stack(feats), torch.tensor(labels), lows, sizes


def probe(x, y, classes):
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n = len(y) * 3 // 4
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:n] @ w + b, y[:n]) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return float(((x[n:] @ w + b).argmax(-1) == y[n:]).float().mean())


@torch.no_grad()
def answer_spread(net, prompter, lows, sizes):
    """Mean total-variation distance of the answer distribution from its average over the scenes."""
    question = "What colour is the box at the top left?"
    p = prompter.prompt(question)
    probs = []
    for low, size in zip(lows, sizes):
        high = torch.zeros(1, 3, net.cfg["zoom"] * net.cfg["image_size"], net.cfg["zoom"] * net.cfg["image_size"])
        ids = torch.tensor([p + [0]])
        logits, _, _ = net(ids, prompter.begin, (high, low), torch.tensor([0]), torch.tensor([[len(p) - 1]]),
                           [bands_of(size, net.lr_side)], threshold=255)
        probs.append(torch.softmax(logits[0, 0], -1))
    probs = torch.stack(probs)
    return float(0.5 * (probs - probs.mean(0)).abs().sum(-1).mean())


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = json.load(open(os.path.join(args.model, "demo_config.json")))
    _, net = load_net(args.model, cfg)
    seeds = [HELDOUT_SEED_BASE + 300_000 + i for i in range(args.images)]
    classes = len(scenes.COLOURS)
    x, y, lows, sizes = box_features(net, seeds)
    torch.manual_seed(0)
    init = FlexNet(cfg, net.vocab)
    x0, y0, _, _ = box_features(init, seeds)
    with torch.enable_grad():
        trained, untrained = probe(x, y, classes), probe(x0, y0, classes)
    print(f"boxes {len(y)} colour linear probe on the projector's LR outputs: trained {trained:.3f} "
          f"untrained {untrained:.3f} (chance {1 / classes:.3f})")
    prompter = data.Prompter(os.path.join(args.model, "tokenizer.model"), net.lr_side ** 2)
    print(f"answer distribution's spread over {len(lows)} scenes (total variation from the mean, 0: the "
          f"image is ignored): {answer_spread(net, prompter, lows, sizes):.4f}")


if __name__ == "__main__":
    main()
