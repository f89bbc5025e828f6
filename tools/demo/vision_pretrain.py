#!/usr/bin/python3
"""Stage 1 of the demo recipe (docs/demo_model.md): the vision tower and projector learn to read the
generated scenes from dense per-token labels (aux.py) before the decoder is trained, so that the answer
loss of stage 2 finds image tokens that already say "red box here", "a circle", "digit 7".

train.py runs it first (--vision-steps); alone:

    /usr/bin/python3 tools/demo/vision_pretrain.py --work DIR --steps 600
"""
import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aux  # noqa: E402
import data  # noqa: E402
import digit_sheet  # noqa: E402
import resume  # noqa: E402
import scene as scenes  # noqa: E402

VISION_SEED_BASE = 5_000_000  # Scenes of stage 1 (stage 2 draws from train.TRAIN_SEED_BASE).
SHEET_SEED_BASE = 7_000_000  # Digit sheets of stage 1.


def hr_tiles(high, z, s):
    """[N, 3, z*s, z*s] -> [N * z * z, 3, s, s], tiles row-major (flexattention.md §1)."""
    n = high.shape[0]
    return high.reshape(n, 3, z, s, z, s).permute(0, 2, 4, 1, 3, 5).reshape(n * z * z, 3, s, s)


def stitch(feats, n, z, lr):
    """Tile features [N * z * z, lr * lr, D] -> the HR grid [N, (z * lr)^2, D], row-major (as
    FlexNet.hr_grid)."""
    d = feats.shape[-1]
    return feats.reshape(n, z, z, lr, lr, d).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, d)


def make_batch(cfg, seeds, sheet_seeds):
    lr = cfg["image_size"] // cfg["patch_size"]
    hr = lr * cfg["zoom"]
    highs, lows, lr_t, hd, hc = [], [], [], [], []
    for seed in seeds:
        sc = scenes.make_scene(seed)
        high, low, _ = data.preprocess(sc["image"], cfg["zoom"] * cfg["image_size"], cfg["image_size"])
        highs.append(high[0])
        lows.append(low[0])
        lr_t.append(aux.lr_targets(sc, lr))
        d, c2 = aux.hr_targets(sc, hr)
        hd.append(d)
        hc.append(c2)
    st = torch.stack
    sheets, sheet_digit, sheet_colour = digit_sheet.make_sheets(sheet_seeds)
    return dict(high=st(highs), low=st(lows), lr=tuple(st(x) for x in zip(*lr_t)), hr_digit=st(hd), hr_colour=st(hc),
                sheets=sheets, sheet_digit=sheet_digit, sheet_colour=sheet_colour)


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, cfg, args, first):
        self.cfg, self.args, self.first = cfg, args, first

    def __iter__(self):
        a = self.args
        for step in range(self.first, a.vision_steps):
            yield make_batch(self.cfg, [VISION_SEED_BASE + a.seed * 10_000_000 + step * a.vision_images + j
                                        for j in range(a.vision_images)],
                             [SHEET_SEED_BASE + a.seed * 10_000_000 + step * a.vision_sheets + j
                              for j in range(a.vision_sheets)])


def losses(net, heads, batch):
    """(loss, figures) of one batch: LR heads on the low view, HR heads on the 9 tiles of the high view and
    on the digit sheets."""
    c = net.cfg
    lr = net.lr_side
    n = batch["low"].shape[0]
    lo, lr_col, lr_shape, lr_count = heads.lr_loss(net.clip_features(batch["low"]), *batch["lr"])
    hr = stitch(net.clip_features(hr_tiles(batch["high"], c["zoom"], c["image_size"])), n, c["zoom"], lr)
    hi, hr_digit = heads.hr_loss(hr.flatten(0, 1), batch["hr_digit"].flatten(), batch["hr_colour"].flatten())
    sh, sheet_digit = heads.hr_loss(net.clip_features(batch["sheets"]).flatten(0, 1), batch["sheet_digit"].flatten(),
                                    batch["sheet_colour"].flatten())
    return lo + hi + sh, dict(lr_colour=lr_col, lr_shape=lr_shape, lr_count=lr_count, hr_digit=hr_digit, sheet_digit=sheet_digit)


def train(net, heads, args, say):
    """Runs stage 1 from WORK/vision_state.pt (if any) to args.vision_steps; leaves net trained."""
    path = os.path.join(args.work, "vision_state.pt")
    params = list(net.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.0, betas=(0.9, 0.98))
    step = resume.load(path, opt, net=net, heads=heads)
    if step >= args.vision_steps:
        return
    say(f"# vision stage from step {step} of {args.vision_steps}")
    loader = iter(torch.utils.data.DataLoader(Batches(net.cfg, args, step), batch_size=None, num_workers=1,
                                              prefetch_factor=2))
    t0, c0 = time.time(), time.process_time()
    while step < args.vision_steps:
        lr = args.vision_lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / args.vision_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        dev = next(net.parameters()).device
        batch = {k: v.to(dev) if torch.is_tensor(v) else tuple(x.to(dev) for x in v) for k, v in next(loader).items()}
        t_data = time.time()
        loss, fig = losses(net, heads, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        say(f"vision {step} lr {lr:.2e} loss {loss.item():.4f} " + " ".join(f"{k} {v:.3f}" for k, v in fig.items()) +
            f" data_s {t_data - t0:.2f} total_s {time.time() - t0:.2f} cpu_s {time.process_time() - c0:.2f}")
        t0, c0 = time.time(), time.process_time()
        if step % 25 == 0 or step == args.vision_steps:
            resume.save(path, opt, step, net=net, heads=heads)


def add_arguments(ap):
    ap.add_argument("--vision-steps", type=int, default=400)
    ap.add_argument("--vision-images", type=int, default=4)
    ap.add_argument("--vision-sheets", type=int, default=16)
    ap.add_argument("--vision-lr", type=float, default=2e-3)


if __name__ == "__main__":
    from flexnet import DEFAULT_CONFIG, FlexNet
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    add_arguments(ap)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.work, exist_ok=True)
    net = FlexNet(dict(DEFAULT_CONFIG), 512)
    heads = aux.Heads(net.cfg["hidden"])
    log = open(os.path.join(a.work, "vision.log"), "a")

    def say(text):
        log.write(text + "\n")
        log.flush()
        print(text, flush=True)
    train(net, heads, a, say)
