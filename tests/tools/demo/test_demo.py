#!/usr/bin/python3
"""Tests of the demo model's tools (tools/demo): the scene generator is deterministic by seed and draws
glyphs readable at 1008 px but a few pixels tall at 336 px; every answer is one token of the trained
tokenizer; an exported checkpoint read back by tests/parity/flex_reference.py computes what the training
forward computes (logits and HR selections, step by step). Runs in seconds: a random-weight network."""
import hashlib
import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "demo"))
sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
import aux  # noqa: E402
import data  # noqa: E402
import digit_sheet  # noqa: E402
import scene as scenes  # noqa: E402
import vision_pretrain  # noqa: E402
from flexnet import DEFAULT_CONFIG, FlexNet, bands_of, export  # noqa: E402


def digest(img):
    return hashlib.sha256(img.tobytes()).hexdigest()


def ink_height(img, rect):
    """Rows holding dark (ink) pixels inside the white label `rect` (img's pixels), its border excluded."""
    a = np.asarray(img.convert("L"), np.float32)
    x0, y0, x1, y1 = rect
    patch = a[int(y0) + 1:int(y1), int(x0) + 1:int(x1)]
    rows = np.nonzero((patch < 128).any(1))[0]
    return 0 if len(rows) == 0 else rows[-1] - rows[0] + 1


class SceneTest(unittest.TestCase):
    def test_same_seed_same_scene_other_seed_other_scene(self):
        a, b, c = scenes.make_scene(7), scenes.make_scene(7), scenes.make_scene(8)
        self.assertEqual(digest(a["image"]), digest(b["image"]))
        self.assertEqual(a["questions"], b["questions"])
        self.assertNotEqual(digest(a["image"]), digest(c["image"]))

    def test_glyphs_readable_at_1008_and_a_few_pixels_at_336(self):
        for seed in range(6):
            sc = scenes.make_scene(seed)
            square = data.expand2square(sc["image"], (0, 0, 0))
            s = square.size[0]
            offset = ((s - sc["size"][0]) / 2, (s - sc["size"][1]) / 2)
            views = {}
            for side in (1008, 336):
                view = square.resize((side, side), resample=3)
                k = side / s
                views[side] = [ink_height(view, [(v + offset[i % 2]) * k for i, v in enumerate(b["label"])])
                               for b in sc["boxes"]]
            for h_hi, h_lo in zip(views[1008], views[336]):
                self.assertGreaterEqual(h_hi, 10, (seed, views))  # Readable: >= 10 px of ink at 1008.
                self.assertLessEqual(h_lo, 6, (seed, views))  # <= 6 rows of ink at 336: a blob.

    def test_labels_on_hr_patches_and_shapes_on_lr_patches(self):
        """Each label's centre is an HR patch centre of the 1008 px view (28 model px), each shape's an LR
        patch centre (84): scene.snap_to_patch."""
        for seed in range(8):
            sc = scenes.make_scene(seed)
            w, h = sc["size"]
            s = max(w, h)
            k = s / scenes.HIGHRES
            model = lambda v, pad: (v + (s - pad) / 2) / k
            for b in sc["boxes"]:
                x0, y0, x1, y1 = b["label"]
                for v, pad in (((x0 + x1) / 2, w), ((y0 + y1) / 2, h)):
                    self.assertAlmostEqual(model(v, pad) % 28, 14, delta=1e-6)
            for sh in sc["shapes"]:
                for v, pad in zip(sh["centre"], (w, h)):
                    self.assertAlmostEqual(model(v, pad) % 84, 42, delta=1e-6)

    def test_questions_of_both_levels_and_answers_in_range(self):
        sc = scenes.make_scene(3)
        kinds = [q[0] for q in sc["questions"]]
        self.assertEqual(kinds, list(scenes.KINDS))
        self.assertEqual({scenes.KIND_LEVEL[k] for k in kinds}, {"low", "high"})
        self.assertEqual(len(sc["every"]), 9)
        colour, count, digit = sc["questions"]
        self.assertIn(colour[2], scenes.COLOURS)
        self.assertIn(int(count[2]), range(scenes.CIRCLES[0], scenes.CIRCLES[1] + 1))
        self.assertIn(digit[2], [b["digit"] for b in sc["boxes"] if b["colour"] in digit[1]])


class AuxTargetTest(unittest.TestCase):
    """Stage 1's per-token labels (aux.py, digit_sheet.py) say what lies under each token."""

    def test_stage_two_targets_name_the_box_and_the_circles(self):
        """What a question names (the deep read-out's class) and where its LR attention should go."""
        import types
        import train
        net = types.SimpleNamespace(cfg=dict(DEFAULT_CONFIG), lr_side=12)
        prompter = data.Prompter(os.path.join(ROOT, "models", "demo-flex", "tokenizer.model"), 144)
        for seed in (3, 4):
            sc = scenes.make_scene(seed)
            batch = train.make_batch(prompter, net, [seed], training=True)
            named = batch["named"].tolist()
            self.assertEqual(named[:4], [0, 1, 2, 3])  # The four quadrants, row-major.
            self.assertEqual(named[4], aux.NAMED_CLASSES - 1)
            self.assertEqual(sorted(named[5:]), sorted(4 + sorted(scenes.COLOURS).index(b["colour"])
                                                       for b in sc["boxes"]))
            circles = [aux.cell_of(sh["centre"], sc["size"], 12) for sh in sc["shapes"] if sh["kind"] == "circle"]
            self.assertEqual(batch["seqs"][4]["cells"], sorted(set(circles)))
            self.assertEqual(len(set(circles)), int(sc["every"][4][2]))  # A cell per circle, none shared.
            for s, b in zip(batch["seqs"][:4], sc["boxes"]):
                self.assertEqual(s["cells"], scenes.rect_to_cells(b["rect"], sc["size"], 12))
            self.assertEqual(batch["answer_from"].tolist(), [1] * 5 + [2] * 4)

    def test_lr_targets_mark_each_box_and_every_shape(self):
        for seed in range(5):
            sc = scenes.make_scene(seed)
            colour, shape, quadrant, count = aux.lr_targets(sc, 12)
            for q, b in enumerate(sc["boxes"]):
                cx, cy = (b["rect"][0] + b["rect"][2]) / 2, (b["rect"][1] + b["rect"][3]) / 2
                cell = aux.cell_of((cx, cy), sc["size"], 12)
                self.assertEqual(aux.COLOUR_CLASSES[int(colour[cell])], b["colour"], seed)
                self.assertEqual(scenes.POSITIONS[int(quadrant[cell])], b["position"], seed)
            circles = sum(1 for sh in sc["shapes"] if sh["kind"] == "circle")
            self.assertEqual(circles, int(sc["questions"][1][2]))
            self.assertTrue(bool((count == circles).all()))
            self.assertLessEqual(int((shape == 1).sum()), circles)
            self.assertGreaterEqual(int((shape > 0).sum()), 1)

    def test_digit_target_sits_on_the_ink(self):
        """The cell holding a digit target shows dark ink in the 1008 px view (scenes) or the sheet."""
        pixels, digit, _ = digit_sheet.make_sheet(3)
        grey = pixels.mean(0)  # Normalised: ink is far below the white label and the colours.
        held = (digit > 0).nonzero().flatten().tolist()
        self.assertGreater(len(held), 20)
        for cell in held:
            r, c = divmod(cell, 12)
            self.assertLess(float(grey[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28].min()), -1.5, cell)
        sc = scenes.make_scene(4)
        high, _, _ = data.preprocess(sc["image"], 1008, 336)
        digit, _ = aux.hr_targets(sc, 36)
        held = (digit > 0).nonzero().flatten().tolist()
        self.assertEqual(sorted(aux.DIGIT_CLASSES[int(digit[c])] for c in held), sorted(b["digit"] for b in sc["boxes"]))
        for cell in held:
            r, c = divmod(cell, 36)
            self.assertLess(float(high[0].mean(0)[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28].min()), -1.5, cell)

    def test_stage_one_tiles_are_the_forwards_hr_grid(self):
        """vision_pretrain cuts and stitches the HR tiles in FlexNet.hr_features/hr_grid's order."""
        torch.manual_seed(0)
        net = FlexNet(DEFAULT_CONFIG, 64)
        high = torch.randn(2, 3, 1008, 1008)
        with torch.no_grad():
            tiles = {}
            net.hr_features(tiles, [(n, t) for n in range(2) for t in range(9)], high)
            eye = torch.eye(DEFAULT_CONFIG["hidden"])
            want = net.hr_grid(tiles, eye, 2)
            got = vision_pretrain.stitch(net.clip_features(vision_pretrain.hr_tiles(high, 3, 336)), 2, 3, 12)
        self.assertLess(float((want - got).abs().max()), 1e-5)


class PromptTest(unittest.TestCase):
    def test_system_prompt_is_the_engines_default_template(self):
        """The trained prompt is the one the engine builds for the original layout (vicuna_v1): a drift
        (as when the engine's vicuna_v1 was corrected and the demo kept llava_v1's text) changes what the
        engine feeds the model, and its answers with it."""
        import re
        source = open(os.path.join(ROOT, "model", "text", "prompt.cc")).read()
        m = re.search(r"kVicunaV1System\[\] =((?:\s*\"[^\"]*\")+);", source)
        self.assertIsNotNone(m, "kVicunaV1System not found in model/text/prompt.cc")
        engine = "".join(re.findall(r'"([^"]*)"', m.group(1)))
        self.assertEqual(data.SYSTEM, engine)


class ExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.tok = data.train_tokenizer(os.path.join(cls.tmp.name, "tokenizer"), 512)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_every_answer_is_one_token(self):
        prompter = data.Prompter(self.tok, 144)
        for answer in list(scenes.COLOURS) + [str(d) for d in range(10)]:
            self.assertEqual(len(prompter.answer(answer)), 2, answer)

    def test_exported_checkpoint_computes_the_training_forward(self):
        from check_parity import load_net  # noqa: E402
        torch.manual_seed(1)
        net = FlexNet(DEFAULT_CONFIG, 512)
        with torch.no_grad():  # Larger weights than the 0.02 init, so that logits and selections vary.
            for p in net.parameters():
                if p.dim() > 1:
                    p.normal_(0, 1.0 / p.shape[-1] ** 0.5)
        model = os.path.join(self.tmp.name, "model")
        export(net, model, self.tok)
        ref, back = load_net(model, DEFAULT_CONFIG)
        prompter = data.Prompter(self.tok, net.lr_side ** 2)
        sc = scenes.make_scene(11)
        path = os.path.join(self.tmp.name, "scene.png")
        sc["image"].save(path)
        high, low, size = ref.preprocess(path)
        h2, l2, _ = data.preprocess(sc["image"], ref.highres, ref.lowres)
        self.assertTrue(torch.equal(high, h2) and torch.equal(low, l2))
        selected = set()
        for _, question, _, _ in sc["questions"]:
            prompt = prompter.prompt(question)
            out = ref.generate(prompt, high, low, size, steps=2)
            ids = torch.tensor([prompt + out["tokens"][:1]])
            p = len(prompt)
            for model_net in (net, back):
                with torch.no_grad():
                    logits, _, masks = model_net(ids, prompter.begin, (high, low), torch.tensor([0]),
                                                 torch.tensor([[p - 1, p]]), [bands_of(size, net.lr_side)])
                self.assertLess(float((logits[0] - out["logits"]).abs().max()), 1e-4)
                for layer, m in enumerate(masks):
                    for step in range(2):
                        self.assertTrue(torch.equal(m[0, step], out["masks"][step][layer]))
                        selected.add(int(m[0, step].sum()))
        self.assertGreater(len(selected), 1)  # Selections differ between questions/steps: not trivial.
        self.assertFalse(all(s in (0, 36 * 36) for s in selected))

    def test_full_layout_is_the_flex_export_without_flexattention(self):
        """The 336 px baseline's export: the same tensors and config but k/v_proj_hd and "extra", so the
        engine's loader reads it as LLaVA-1.5 (full)."""
        from llava_reference import read_checkpoint_tensors  # noqa: E402
        net = FlexNet(DEFAULT_CONFIG, 512)
        dirs = {layout: os.path.join(self.tmp.name, layout) for layout in ("flex", "full")}
        for layout, out in dirs.items():
            export(net, out, self.tok, layout=layout)
        cfg = {k: json.load(open(os.path.join(d, "config.json"))) for k, d in dirs.items()}
        self.assertIn("extra", cfg["flex"])
        self.assertNotIn("extra", cfg["full"])
        del cfg["flex"]["extra"]
        self.assertEqual(cfg["flex"], cfg["full"])
        flex, full = (read_checkpoint_tensors(d) for d in dirs.values())
        hd = {k for k in flex if "_proj_hd." in k}
        self.assertEqual(len(hd), 2 * DEFAULT_CONFIG["layers"])  # FlexNet holds them in every layer.
        self.assertEqual(set(full), set(flex) - hd)
        for k, v in full.items():
            self.assertTrue(torch.equal(v, flex[k]), k)


class RecipeTest(unittest.TestCase):
    """The training command itself, two steps of each stage on one scene: it runs (every module it needs
    is there), writes a checkpoint the parity reference loads, and a rerun resumes where it stopped."""

    def test_two_steps_of_each_stage_export_and_resume(self):
        import subprocess
        from check_parity import load_net  # noqa: E402
        with tempfile.TemporaryDirectory() as tmp:
            work, out = os.path.join(tmp, "work"), os.path.join(tmp, "model")
            cmd = [sys.executable, os.path.join(ROOT, "tools", "demo", "train.py"), "--work", work,
                   "--vision-steps", "2", "--vision-images", "1", "--vision-sheets", "1", "--images", "1",
                   "--eval-images", "1", "--steps", "2"]
            subprocess.run(cmd + ["--export", out], check=True, capture_output=True, timeout=300)
            with open(os.path.join(out, "train.log")) as f:
                log = f.read().splitlines()
            self.assertTrue(any(line.startswith("vision 2 ") for line in log))  # Stage 1 ran, to its end.
            steps = [line.split() for line in log if line.startswith("step ")]
            self.assertEqual([int(s[1]) for s in steps], [1, 2])
            for s in steps:  # Every loss term is logged and finite.
                for name in ("loss", "ce", "attn", "attn_hr", "aux", "deep"):
                    self.assertTrue(np.isfinite(float(s[s.index(name) + 1])), (name, s))
            with open(os.path.join(out, "demo_config.json")) as f:
                _, back = load_net(out, json.load(f))
            trained = torch.load(os.path.join(work, "state.pt"))["net"]
            for key, value in back.w.items():  # The export holds the trained weights.
                self.assertTrue(torch.equal(value, trained["w." + key]), key)
            done = subprocess.run(cmd[:-1] + ["3"], check=True, capture_output=True, text=True, timeout=300)
            self.assertIn("# start at step 2 of 3", done.stdout)
            self.assertNotIn("# vision stage", done.stdout)  # Stage 1 is not rerun.


if __name__ == "__main__":
    unittest.main()
