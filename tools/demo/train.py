#!/usr/bin/python3
"""Trains the demo FlexAttention model on generated scenes (docs/demo_model.md). One command, resumable:

    nice -n 19 /usr/bin/python3 tools/demo/train.py --work build/demo-train --steps 1500 \
        --export models/demo-flex

Writes WORK/tokenizer.model, WORK/state.pt (every --save-every steps; a rerun resumes from it),
WORK/train.log (one line per step, an evaluation every --eval-every steps) and, at the end, the checkpoint
in the original-LLaVA flex layout under --export, with a copy of the log. Deterministic by --seed (the data of step s is a
function of the seed and s, so a resumed run sees the same data).
Loss: cross-entropy on the answer token and the end of sequence, plus --attn-weight times an attention
loss on the selecting layers (the flex rows' head-summed LR attention should fall on the box the question
names), which teaches the selection where to look; it adds no term to the forward.
"""
import argparse
import math
import os
import random
import shutil
import sys
import time
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import scene as scenes  # noqa: E402
from flexnet import DEFAULT_CONFIG, FlexNet, bands_of, export  # noqa: E402

TRAIN_SEED_BASE = 1_000_000
HELDOUT_SEED_BASE = 9_000_000


def training_questions(sc, seed):
    """Four of the scene's nine questions: two digit questions, one colour, one count (by seed)."""
    rng = random.Random(seed)
    every = sc["every"]
    return rng.sample(every[:4], 1) + [every[4]] + rng.sample(every[5:], 2)


def make_batch(prompter, net, seeds, training=False):
    """Scenes of `seeds`, with their evaluation questions (one per kind) or their training questions."""
    highs, lows, seqs = [], [], []
    lr = net.lr_side
    for n, seed in enumerate(seeds):
        sc = scenes.make_scene(seed)
        high, low, size = data.preprocess(sc["image"], net.cfg["zoom"] * net.cfg["image_size"],
                                          net.cfg["image_size"])
        highs.append(high[0])
        lows.append(low[0])
        for kind, question, answer, rect in (training_questions(sc, seed) if training else sc["questions"]):
            cells = scenes.rect_to_cells(rect, size, lr) if rect is not None else None
            seqs.append(dict(image=n, kind=kind, prompt=prompter.prompt(question), answer=prompter.answer(answer),
                             cells=cells, band=bands_of(size, lr), question=question, text=answer, seed=seed))
    t = max(len(s["prompt"]) + 1 for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    rows = torch.zeros(len(seqs), 2, dtype=torch.long)
    targets = torch.zeros(len(seqs), 2, dtype=torch.long)
    for j, s in enumerate(seqs):
        full = s["prompt"] + s["answer"][:1]
        ids[j, :len(full)] = torch.tensor(full)
        p = len(s["prompt"])
        rows[j] = torch.tensor([p - 1, p])
        targets[j] = torch.tensor(s["answer"])
    return dict(images=(torch.stack(highs), torch.stack(lows)), ids=ids, rows=rows, targets=targets,
                image_of=torch.tensor([s["image"] for s in seqs]), bands=[s["band"] for s in seqs], seqs=seqs)


class Batches(torch.utils.data.IterableDataset):
    """The training batches of steps first_step.. in order, made in a DataLoader worker process."""

    def __init__(self, prompter, net, args, first_step):
        self.prompter, self.net, self.args, self.first = prompter, net, args, first_step

    def __iter__(self):
        a = self.args
        for step in range(self.first, a.steps):
            seeds = [TRAIN_SEED_BASE + a.seed * 10_000_000 + step * a.images + j for j in range(a.images)]
            yield make_batch(self.prompter, self.net, seeds, training=True)


def to_device(batch, device):
    out = dict(batch)
    for key in ("ids", "rows", "targets", "image_of"):
        out[key] = batch[key].to(device)
    out["images"] = tuple(x.to(device) for x in batch["images"])
    return out


def run(net, batch, begin, **kw):
    return net(batch["ids"], begin, batch["images"], batch["image_of"], batch["rows"], batch["bands"], **kw)


def attention_loss(probs, seqs):
    """-log of the share of each flex row's LR attention on the target cells, mean over targeted rows."""
    terms = []
    for a in probs:  # [B, R, n] per selecting layer
        for j, s in enumerate(seqs):
            if s["cells"]:
                share = a[j][:, s["cells"]].sum(-1) / a[j].sum(-1)
                terms.append(-torch.log(share + 1e-6))
    return torch.cat(terms).mean() if terms else torch.zeros(())


@torch.no_grad()
def evaluate(net, prompter, seeds, device="cpu", **kw):
    """Greedy two-token answers (answer, end of sequence) of every question of the scenes `seeds`:
    accuracy per kind and mean selected HR tokens per FA layer and question."""
    correct, total, selected = {}, {}, 0.0
    for i in range(0, len(seeds), 8):
        batch = to_device(make_batch(prompter, net, seeds[i:i + 8]), device)
        logits, _, masks = run(net, batch, prompter.begin, **kw)
        pred = logits.argmax(-1)
        ok = (pred == batch["targets"]).all(-1)
        for j, s in enumerate(batch["seqs"]):
            correct[s["kind"]] = correct.get(s["kind"], 0) + int(ok[j])
            total[s["kind"]] = total.get(s["kind"], 0) + 1
        selected += sum(float(m[:, 0].sum()) for m in masks) / len(masks)
    n = sum(total.values())
    return {k: correct[k] / total[k] for k in total}, selected / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--images", type=int, default=8, help="scenes per step (3 questions each)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--attn-weight", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the GPU machine, when lent)")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-images", type=int, default=48)
    ap.add_argument("--export", help="write the final checkpoint here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    tok = os.path.join(args.work, "tokenizer.model")
    if not os.path.exists(tok):
        data.train_tokenizer(os.path.join(args.work, "tokenizer"), args.vocab)
    torch.manual_seed(args.seed)
    cfg = dict(DEFAULT_CONFIG)
    import sentencepiece as spm
    vocab = spm.SentencePieceProcessor(model_file=tok).get_piece_size()
    net = FlexNet(cfg, vocab)
    geometry = types.SimpleNamespace(cfg=net.cfg, lr_side=net.lr_side)  # All make_batch needs of net.
    prompter = data.Prompter(tok, net.lr_side ** 2)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    state_path = os.path.join(args.work, "state.pt")
    step = 0
    if os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    net = net.to(args.device)
    for s in opt.state.values():
        for key, value in s.items():
            if torch.is_tensor(value):
                s[key] = value.to(args.device)
    log = open(os.path.join(args.work, "train.log"), "a")

    def say(text):
        log.write(text + "\n")
        log.flush()
        print(text, flush=True)

    say(f"# start at step {step} of {args.steps}: {vars(args)} config {cfg} vocab {vocab}")
    heldout = [HELDOUT_SEED_BASE + args.seed * 10_000 + i for i in range(args.eval_images)]
    t0, c0 = time.time(), time.process_time()
    loader = iter(torch.utils.data.DataLoader(Batches(prompter, geometry, args, step), batch_size=None,
                                              num_workers=1, prefetch_factor=2))
    while step < args.steps:
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = to_device(next(loader), args.device)
        t_data = time.time()
        logits, probs, _ = run(net, batch, prompter.begin)
        ce = F.cross_entropy(logits.reshape(-1, vocab), batch["targets"].reshape(-1))
        att = attention_loss(probs, batch["seqs"])
        loss = ce + args.attn_weight * att
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        ok = (logits.argmax(-1) == batch["targets"]).all(-1)
        acc = {k: [bool(ok[j]) for j, s in enumerate(batch["seqs"]) if s["kind"] == k] for k in scenes.KINDS}
        say(f"step {step} lr {lr:.2e} loss {loss.item():.4f} ce {ce.item():.4f} attn {att.item():.4f} " +
            " ".join(f"{k} {sum(v)}/{len(v)}" for k, v in acc.items()) +
            f" data_s {t_data - t0:.2f} total_s {time.time() - t0:.2f} cpu_s {time.process_time() - c0:.2f}")
        t0, c0 = time.time(), time.process_time()
        if step % args.save_every == 0 or step == args.steps:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step}, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
        if step % args.eval_every == 0 or step == args.steps:
            acc, sel = evaluate(net, prompter, heldout, args.device)
            say(f"eval step {step} " + " ".join(f"{k} {v:.3f}" for k, v in sorted(acc.items())) +
                f" selected_hr_tokens_per_fa_layer {sel:.1f}")
            t0, c0 = time.time(), time.process_time()
    if args.export:
        export(net.cpu(), args.export, tok)
        say(f"# exported to {args.export}")
        log.close()
        shutil.copyfile(os.path.join(args.work, "train.log"), os.path.join(args.export, "train.log"))


if __name__ == "__main__":
    main()
