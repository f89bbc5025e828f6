#!/usr/bin/python3
"""Scores a checkpoint on a split from make_split.py with FlexNet (the training forward, equal to the
engine's by check_parity.py), for the selection variants the engine has no switch for:
  flex    the checkpoint's threshold (as flexvqa_demo_eval without --threshold)
  off     threshold 255: nothing selected, low resolution only (flexvqa_demo_eval --threshold 255)
  random  per flex row and FA layer, as many 9x9 blocks as flex selects there, drawn uniformly (the
          paper's random ablation, with the block count matched)
Accuracy is the exact greedy answer (answer token, then end of sequence). --expect-out FILE writes the flex
variant's accuracy per kind, less one question of slack (an argmax near a tie may flip between this
forward's and the engine's fp32 summation orders), as the minimum flexvqa_demo_eval --expect checks: run on
the CI set (make_split.py --ci) when a checkpoint is committed, it is the CI accuracy test's bar.

    /usr/bin/python3 tools/demo/evaluate.py --model models/demo-flex --split build/demo-heldout
    /usr/bin/python3 tools/demo/evaluate.py --model models/demo-flex --split build/demo-ci --variants flex \
        --expect-out models/demo-flex/expected_accuracy.tsv
"""
import argparse
import json
import os
import sys

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from check_parity import load_net  # noqa: E402
from flexnet import bands_of  # noqa: E402


def batches(split, prompter, net, size):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(split, "questions.tsv")) if line.strip()]
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        names = sorted({r[0] for r in chunk})
        imgs = {}
        for name in names:
            imgs[name] = data.preprocess(Image.open(os.path.join(split, name)).convert("RGB"),
                                         net.cfg["zoom"] * net.cfg["image_size"], net.cfg["image_size"])
        prompts = [prompter.prompt(r[2]) for r in chunk]
        t = max(len(p) for p in prompts) + 1
        ids = torch.zeros(len(chunk), t, dtype=torch.long)
        flex_rows = torch.zeros(len(chunk), 2, dtype=torch.long)
        targets = torch.zeros(len(chunk), 2, dtype=torch.long)
        for j, (r, p) in enumerate(zip(chunk, prompts)):
            ans = prompter.answer(r[3])
            ids[j, :len(p) + 1] = torch.tensor(p + ans[:1])
            flex_rows[j] = torch.tensor([len(p) - 1, len(p)])
            targets[j] = torch.tensor(ans)
        images = (torch.cat([imgs[n][0] for n in names]), torch.cat([imgs[n][1] for n in names]))
        yield dict(ids=ids, rows=flex_rows, targets=targets, kinds=[r[1] for r in chunk], images=images,
                   image_of=torch.tensor([names.index(r[0]) for r in chunk]),
                   bands=[bands_of(imgs[r[0]][2], net.lr_side) for r in chunk])


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--variants", default="flex,off,random")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0, help="of the random selection")
    ap.add_argument("--expect-out", help="write the flex variant's minimum accuracies here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = json.load(open(os.path.join(args.model, "demo_config.json")))
    _, net = load_net(args.model, cfg)
    prompter = data.Prompter(os.path.join(args.model, "tokenizer.model"), net.lr_side ** 2)
    gen = torch.Generator().manual_seed(args.seed)
    variants = args.variants.split(",")
    right = {v: {} for v in variants}
    total, selected = {}, {v: {} for v in variants}
    for b in batches(args.split, prompter, net, args.batch):
        run = lambda **kw: net(b["ids"], prompter.begin, b["images"], b["image_of"], b["rows"], b["bands"], **kw)
        flex = run()
        for k in b["kinds"]:
            total[k] = total.get(k, 0) + 1
        for v in variants:
            if v == "flex":
                out = flex
            elif v == "off":
                out = run(threshold=255)
            else:
                blocks = {}
                for j, m in enumerate(flex[2]):  # FA layer j's selection is made by layer n_sa - 1 + j.
                    counts = m.reshape(m.shape[0] * m.shape[1], -1).sum(1) // (net.hr_side // 9) ** 2
                    rb = torch.zeros(len(counts), 81, dtype=torch.bool)
                    for r, c in enumerate(counts.tolist()):
                        rb[r, torch.randperm(81, generator=gen)[:c]] = True
                    blocks[cfg["n_sa"] - 1 + j] = rb.reshape(-1, 9, 9)
                out = run(random_blocks=blocks)
            ok = (out[0].argmax(-1) == b["targets"]).all(-1)
            sel = sum(m[:, 0].sum(-1) for m in out[2])  # Selected HR tokens at step 0, over FA layers.
            for j, k in enumerate(b["kinds"]):
                right[v][k] = right[v].get(k, 0) + int(ok[j])
                selected[v][k] = selected[v].get(k, 0) + float(sel[j])
    print("variant\tkind\tquestions\taccuracy\tselected_hr_tokens_step0")
    for v in variants:
        for k in sorted(total):
            print(f"{v}\t{k}\t{total[k]}\t{right[v].get(k, 0) / total[k]:.4f}\t{selected[v][k] / total[k]:.1f}")
    if args.expect_out:
        with open(args.expect_out, "w") as f:
            f.write(f"# {args.model} on {args.split} with the training forward (evaluate.py --expect-out): "
                    "KIND<TAB>minimum accuracy, one question below what it scored\n")
            for k in sorted(total):
                f.write(f"{k}\t{max(0, right['flex'].get(k, 0) - 1) / total[k]:.4f}\n")


if __name__ == "__main__":
    main()
