#!/usr/bin/python3
"""Writes a held-out split of generated scenes for flexvqa_demo_eval: DIR/scene_<seed>.png and
DIR/questions.tsv (IMAGE<TAB>KIND<TAB>QUESTION<TAB>ANSWER), one question of each kind per scene. The
training seeds start at train.TRAIN_SEED_BASE; held-out splits use other seeds (default
train.HELDOUT_SEED_BASE + 100000, apart from the training log's own evaluation scenes). --ci writes the
CI accuracy test's fixed set: 34 scenes (102 questions) from CI_SEED_BASE.

    /usr/bin/python3 tools/demo/make_split.py --out build/demo-heldout --images 500
    /usr/bin/python3 tools/demo/make_split.py --out build/demo-ci --ci
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scene as scenes  # noqa: E402
from train import HELDOUT_SEED_BASE  # noqa: E402

CI_SEED_BASE = HELDOUT_SEED_BASE + 200_000
CI_IMAGES = 34


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--seed-base", type=int, default=HELDOUT_SEED_BASE + 100_000)
    ap.add_argument("--ci", action="store_true", help="the CI accuracy test's set (overrides the two above)")
    args = ap.parse_args()
    if args.ci:
        args.images, args.seed_base = CI_IMAGES, CI_SEED_BASE
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "questions.tsv"), "w") as f:
        for seed in range(args.seed_base, args.seed_base + args.images):
            sc = scenes.make_scene(seed)
            name = f"scene_{seed}.png"
            sc["image"].save(os.path.join(args.out, name))
            for kind, question, answer, _ in sc["questions"]:
                f.write(f"{name}\t{kind}\t{question}\t{answer}\n")


if __name__ == "__main__":
    main()
