#!/usr/bin/python3
"""Trains the demo FlexAttention model on generated scenes (docs/demo_model.md). One command, resumable:

    nice -n 19 /usr/bin/python3 tools/demo/train.py --work build/demo-train --steps 2000 \
        --export models/demo-flex

Writes WORK/tokenizer.model, WORK/state.pt (every --save-every steps; a rerun resumes from it),
WORK/train.log (one line per step, an evaluation every --eval-every steps) and, at the end, the checkpoint
in the original-LLaVA flex layout under --export, with a copy of the log. Deterministic by --seed (the data of step s is a
function of the seed and s, so a resumed run sees the same data).
Two stages. Stage 1 (vision_pretrain.py, --vision-steps): the tower and projector learn to read the scenes
from dense per-token labels (aux.py: box colour and shape per LR cell, digit and box colour per HR cell).
Stage 2 (--steps): the whole network on the questions. Loss: cross-entropy on the answer token and the end
of sequence (a count question weighs --count-weight times a colour or digit one), plus --attn-weight times
an attention loss on the selecting layers (the answer rows' head-summed LR attention should fall on the
box the question names: it teaches the selection where to look), --hr-attn-weight times the same on the
FA layers' HR keys for digit questions (their attention should fall on the named box's label),
--aux-weight times stage 1's label losses (so the tokens keep saying what they show) and --deep-weight
times the decoder's deep supervision (aux.Readouts: the answer row says what the question names after
every layer, and the answer once it has seen it). None adds a term to the forward; the auxiliary heads
and read-outs are not exported. --layout full trains and exports the 336 px baseline instead (nothing
selected, LLaVA-1.5 layout).
"""
import argparse
import math
import os
import shutil
import sys
import time
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aux  # noqa: E402
import data  # noqa: E402
import resume  # noqa: E402
import scene as scenes  # noqa: E402
import vision_pretrain  # noqa: E402
from flexnet import DEFAULT_CONFIG, FlexNet, bands_of, export  # noqa: E402

TRAIN_SEED_BASE = 1_000_000
HELDOUT_SEED_BASE = 9_000_000


def training_questions(sc, seed):
    """All nine questions a scene answers (four colour, one count, four digit): the image's prefix rows run
    once for all of them (FlexNet.forward), so each extra question costs only its own ~15 rows."""
    return sc["every"]


def make_batch(prompter, net, seeds, training=False):
    """Scenes of `seeds`, with their evaluation questions (one per kind) or their training questions."""
    highs, lows, seqs, targets_lr, targets_hr = [], [], [], [], []
    lr = net.lr_side
    hr = lr * net.cfg["zoom"]
    for n, seed in enumerate(seeds):
        sc = scenes.make_scene(seed)
        high, low, size = data.preprocess(sc["image"], net.cfg["zoom"] * net.cfg["image_size"],
                                          net.cfg["image_size"])
        highs.append(high[0])
        lows.append(low[0])
        if training:
            targets_lr.append(aux.lr_targets(sc, lr))
            targets_hr.append(aux.hr_targets(sc, hr))
        for kind, question, answer, rect in (training_questions(sc, seed) if training else sc["questions"]):
            if kind == "count":  # The circles' cells: where a count question's LR attention should go.
                cells = sorted({aux.cell_of(sh["centre"], size, lr) for sh in sc["shapes"] if sh["kind"] == "circle"})
            else:
                cells = scenes.rect_to_cells(rect, size, lr)
            label = [aux.label_cells(b, size, hr) for b in sc["boxes"] if b["rect"] == rect and kind == "digit"]
            seqs.append(dict(image=n, kind=kind, prompt=prompter.prompt(question), answer=prompter.answer(answer),
                             named=aux.named_target(kind, question),
                             cells=cells, label_cells=label[0] if label else None, band=bands_of(size, lr),
                             question=question, text=answer, seed=seed))
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
    out = dict(images=(torch.stack(highs), torch.stack(lows)), ids=ids, rows=rows, targets=targets,
               image_of=torch.tensor([s["image"] for s in seqs]), bands=[s["band"] for s in seqs], seqs=seqs)
    if training:
        out["aux_lr"] = tuple(torch.stack(x) for x in zip(*targets_lr))  # colour, shape, quadrant, count [N, lr*lr]
        out["aux_hr"] = tuple(torch.stack(x) for x in zip(*targets_hr))  # digit, colour [N, hr*hr]
        # Deep supervision (aux.Readouts): colour and count are in the rows once a selecting layer has
        # read the LR view, digits once the first FlexAttention layer has read the HR view.
        out["named"] = torch.tensor([s["named"] for s in seqs])
        out["answer_from"] = torch.tensor([net.cfg["n_sa"] - (s["kind"] != "digit") for s in seqs])
    return out


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
    for key in ("ids", "rows", "targets", "image_of", "named", "answer_from"):
        if key not in batch:
            continue
        out[key] = batch[key].to(device)
    out["images"] = tuple(x.to(device) for x in batch["images"])
    return out


def run(net, batch, begin, **kw):
    return net(batch["ids"], begin, batch["images"], batch["image_of"], batch["rows"], batch["bands"], **kw)


def answer_loss(logits, batch, count_weight):
    """Cross-entropy of the answer and end-of-sequence tokens, a weighted mean over questions: a scene
    asks one count question beside four colour and four digit ones, and counting is what the decoder
    learns last (the 1,000-step run ended at 0.75 on count, 1.00 on the others, still rising)."""
    per = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
    per = per.reshape(batch["targets"].shape).mean(-1)
    w = torch.tensor([count_weight if s["kind"] == "count" else 1.0 for s in batch["seqs"]], device=per.device)
    return (per * w).sum() / w.sum()


def attention_loss(probs, seqs):
    """-log of the share of each flex row's LR attention on the target cells, mean over targeted rows: the
    named box for colour and digit questions, the circles for the count question. A share of the image
    attention, so the row can still weigh the image against the text (a softmax counts n circles by how
    much of it they take from the text keys)."""
    terms = []
    for a in probs:  # [B, R, n] per selecting layer
        for j, s in enumerate(seqs):
            if s["cells"]:
                share = a[j][:, s["cells"]].sum(-1) / a[j].sum(-1)
                terms.append(-torch.log(share + 1e-6))
    return torch.cat(terms).mean() if terms else torch.zeros(())


def hr_attention_loss(hr_probs, masks, seqs, heads):
    """-log of the share of the answer row's HR attention (of all its attention, mean over heads) on the
    named box's label, per FA layer, over the digit questions whose selection holds part of the label."""
    terms = []
    for pr, m in zip(hr_probs, masks):  # [B, R, M], [B, R, M]
        for j, s in enumerate(seqs):
            cells = s["label_cells"]
            if cells and bool(m[j, 0, cells].any()):
                terms.append(-torch.log(pr[j, 0, cells].sum() / heads + 1e-6))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def aux_loss(heads, net, batch, collect):
    """Stage 1's label losses on what this forward computed: every image's LR tokens, the HR tiles that
    some selection needed."""
    lo, *_ = heads.lr_loss(collect["lr_features"], *batch["aux_lr"])
    tiles = collect["tiles"]
    if not tiles:
        return lo
    z, lr = net.cfg["zoom"], net.lr_side
    keys = sorted(tiles)
    feats = torch.cat([tiles[k] for k in keys])

    def of_tile(grid):  # [N, hr*hr] -> the computed tiles' cells, in `keys` order.
        g = grid.reshape(-1, z, lr, z, lr)
        return torch.cat([g[n, ti // z, :, ti % z, :].reshape(-1) for n, ti in keys])
    hi, _ = heads.hr_loss(feats, *(of_tile(g) for g in batch["aux_hr"]))
    return lo + hi


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
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--images", type=int, default=4, help="scenes per step (9 questions each)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--attn-weight", type=float, default=0.5)
    ap.add_argument("--hr-attn-weight", type=float, default=0.5)
    ap.add_argument("--aux-weight", type=float, default=0.3)
    ap.add_argument("--deep-weight", type=float, default=1.0, help="of the decoder's read-outs (aux.Readouts)")
    ap.add_argument("--count-weight", type=float, default=4.0,
                    help="weight of a count question's answer loss against a colour or digit one's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the GPU machine, when lent)")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-images", type=int, default=48)
    ap.add_argument("--export", help="write the final checkpoint here")
    ap.add_argument("--layout", choices=("flex", "full"), default="flex",
                    help="full: the 336 px baseline, trained and evaluated with nothing selected (threshold "
                         "255) and exported without the FlexAttention weights, for the engine's full mode")
    vision_pretrain.add_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    tok = os.path.join(args.work, "tokenizer.model")
    if not os.path.exists(tok):
        data.train_tokenizer(os.path.join(args.work, "tokenizer"), args.vocab)
    torch.manual_seed(args.seed)
    cfg = dict(DEFAULT_CONFIG)
    if args.layout == "full":
        cfg["threshold"] = 255  # a * 255 > 255 never holds: no row ever sees the high-resolution view.
    import sentencepiece as spm
    vocab = spm.SentencePieceProcessor(model_file=tok).get_piece_size()
    net = FlexNet(cfg, vocab)
    geometry = types.SimpleNamespace(cfg=net.cfg, lr_side=net.lr_side)  # All make_batch needs of net.
    prompter = data.Prompter(tok, net.lr_side ** 2)
    heads = aux.Heads(cfg["hidden"])
    readouts = aux.Readouts(cfg["hidden"], cfg["layers"], vocab)
    params = list(net.parameters()) + list(heads.parameters()) + list(readouts.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    state_path = os.path.join(args.work, "state.pt")
    step = resume.load(state_path, opt, net=net, heads=heads, readouts=readouts)
    net, heads, readouts = net.to(args.device), heads.to(args.device), readouts.to(args.device)
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
    if step == 0:
        vision_pretrain.train(net, heads, args, say)
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
        collect = {}
        logits, probs, masks = run(net, batch, prompter.begin, collect=collect)
        ce = answer_loss(logits, batch, args.count_weight)
        att = attention_loss(probs, batch["seqs"])
        att_hr = hr_attention_loss(collect.get("hr_probs", []), masks, batch["seqs"], cfg["heads"])
        ax = aux_loss(heads, net, batch, collect)
        deep, named_right = readouts.loss(collect["rows"], batch["named"], batch["targets"][:, 0],
                                          batch["answer_from"])
        loss = ce + args.attn_weight * att + args.hr_attn_weight * att_hr + args.aux_weight * ax + \
            args.deep_weight * deep
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ok = (logits.argmax(-1) == batch["targets"]).all(-1)
        acc = {k: [bool(ok[j]) for j, s in enumerate(batch["seqs"]) if s["kind"] == k] for k in scenes.KINDS}
        say(f"step {step} lr {lr:.2e} loss {loss.item():.4f} ce {ce.item():.4f} attn {att.item():.4f} "
            f"attn_hr {att_hr.item():.4f} aux {ax.item():.4f} deep {deep.item():.4f} named {named_right:.2f} " +
            " ".join(f"{k} {sum(v)}/{len(v)}" for k, v in acc.items()) +
            f" data_s {t_data - t0:.2f} total_s {time.time() - t0:.2f} cpu_s {time.process_time() - c0:.2f}")
        t0, c0 = time.time(), time.process_time()
        if step % args.save_every == 0 or step == args.steps:
            resume.save(state_path, opt, step, net=net, heads=heads, readouts=readouts)
        if step % args.eval_every == 0 or step == args.steps:
            acc, sel = evaluate(net, prompter, heldout, args.device)
            say(f"eval step {step} " + " ".join(f"{k} {v:.3f}" for k, v in sorted(acc.items())) +
                f" selected_hr_tokens_per_fa_layer {sel:.1f}")
            t0, c0 = time.time(), time.process_time()
    if args.export:
        export(net.cpu(), args.export, tok, layout=args.layout)
        say(f"# exported to {args.export}")
        log.close()
        shutil.copyfile(os.path.join(args.work, "train.log"), os.path.join(args.export, "train.log"))


if __name__ == "__main__":
    main()
