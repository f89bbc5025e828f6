#!/usr/bin/python3
"""Synthetic high-resolution VQA scenes, deterministic by seed (docs/demo_model.md lists the
distributions).

A scene is drawn at its own pixel size (long side 1008 px or another size, several aspect ratios, so
the LLaVA pipeline pads it to a square with bands). Lengths below are given in "model pixels": pixels of
the padded square after its resize to 1008, so a glyph has the same size in the model's 1008 px view
whatever the file's size. Four coloured boxes (one per quadrant of the picture), each with a small
black digit on a white label; circles and triangles; grey clutter. Questions:
  low  (answerable at 336 px): "What colour is the box at the top left?", "How many circles are there?"
  high (needs the 1008 px view): "What digit is in the red box?"
Answers are one word. Needs numpy and PIL (python3-pil); the font is DejaVu (fonts-dejavu-core).

    scene = make_scene(seed)          # dict: image (PIL RGB), questions [(kind, question, answer, target)]
"""
import random

from PIL import Image, ImageDraw, ImageFont

FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
HIGHRES = 1008  # The model's high-resolution side; model pixels are pixels of that view.
LOWRES = 336
PATCH_PX = 28  # The demo tower's patch (flexnet.DEFAULT_CONFIG): one HR token covers 28 model pixels.

COLOURS = {  # Saturated and far apart, so a 336 px view tells them apart.
    "red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220),
    "yellow": (235, 200, 20), "purple": (140, 40, 170), "orange": (245, 130, 20),
}
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]  # Quadrants, row-major.
ASPECTS = [(1, 1), (1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (3, 2), (2, 3)]  # width : height
LONG_SIDES = [1008, 1008, 768, 1200, 1344]
GLYPH_PX = (12, 15)  # Digit height range in model pixels: 4-5 px in the 336 px view.
BOX_PX = (120, 180)  # Box side in model pixels.
CIRCLES = (1, 4)
KINDS = ("colour", "count", "digit")  # colour, count: low resolution; digit: high resolution.
KIND_LEVEL = {"colour": "low", "count": "low", "digit": "high"}

_fonts = {}


def font(size):
    if size not in _fonts:
        _fonts[size] = ImageFont.truetype(FONT_PATH, size)
    return _fonts[size]


def _overlaps(rect, rects, gap):
    x0, y0, x1, y1 = rect
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in rects)


def _glyph_size(digit, size):
    """Height in pixels of the ink of `digit` at font size `size` (the bounding box of its pixels)."""
    box = font(size).getbbox(digit)
    return box[3] - box[1]


def font_size_for(height):
    """The font size whose digits' ink is about `height` pixels tall (DejaVu digits: ~0.73 em)."""
    size = max(4, round(height / 0.73))
    while size > 4 and _glyph_size("8", size) > height:
        size -= 1
    return size


def snap_to_patch(x, y, w, h, patch=None):
    """The centre of the HR patch (PATCH_PX model pixels of the 1008 px view) nearest to file point
    (x, y) of a w x h picture: labels sit on the patch grid, so a token sees its whole glyph. Why: the
    demo tower embeds a patch linearly (as CLIP does) and is trained from scratch on a CPU budget; a glyph
    at a random offset needs translation-invariant features it cannot learn in that budget (measured:
    docs/demo_model.md), while the question we ask of it is one of resolution (13 px glyphs in the
    1008 px view, 4 px at 336)."""
    s = max(w, h)
    k = s / HIGHRES
    ox, oy = (s - w) / 2, (s - h) / 2
    patch = patch or PATCH_PX
    snap = lambda v, o: ((int((v + o) / k / patch) + 0.5) * patch) * k - o
    return snap(x, ox), snap(y, oy)


def make_scene(seed):
    rng = random.Random(seed)
    aw, ah = rng.choice(ASPECTS)
    long_side = rng.choice(LONG_SIDES)
    if aw >= ah:
        w, h = long_side, round(long_side * ah / aw)
    else:
        w, h = round(long_side * aw / ah), long_side
    k = max(w, h) / HIGHRES  # File pixels per model pixel.
    bg = tuple(rng.randint(200, 250) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    # Clutter: thin grey lines and specks, under everything else.
    for _ in range(rng.randint(10, 30)):
        g = rng.randint(120, 190)
        pts = [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(2)]
        draw.line(pts, fill=(g, g, g), width=max(1, round(rng.uniform(1, 3) * k)))
    for _ in range(rng.randint(20, 60)):
        g = rng.randint(100, 200)
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 4) * k
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(g, g, g))

    colours = rng.sample(sorted(COLOURS), 4)
    digits = rng.sample("0123456789", 4)
    taken, boxes = [], []
    for q, pos in enumerate(POSITIONS):
        side = rng.uniform(*BOX_PX) * k
        qx, qy = (q % 2) * w / 2, (q // 2) * h / 2
        margin = 8 * k
        x0 = rng.uniform(qx + margin, qx + w / 2 - side - margin)
        y0 = rng.uniform(qy + margin, qy + h / 2 - side - margin)
        rect = (x0, y0, x0 + side, y0 + side)
        draw.rectangle(rect, fill=COLOURS[colours[q]])
        # The white label with its digit, centred in the box.
        glyph = rng.uniform(*GLYPH_PX) * k
        fsize = font_size_for(glyph)
        gx0, gy0, gx1, gy1 = font(fsize).getbbox(digits[q])
        cx, cy = snap_to_patch((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2, w, h)
        pad = 0.5 * glyph
        label = (cx - (gx1 - gx0) / 2 - pad, cy - (gy1 - gy0) / 2 - pad,
                 cx + (gx1 - gx0) / 2 + pad, cy + (gy1 - gy0) / 2 + pad)
        draw.rectangle(label, fill=(255, 255, 255))
        draw.text((cx - (gx0 + gx1) / 2, cy - (gy0 + gy1) / 2), digits[q], font=font(fsize), fill=(0, 0, 0))
        taken.append(rect)
        boxes.append(dict(position=pos, colour=colours[q], digit=digits[q], rect=rect, label=label,
                          glyph_px=(gy1 - gy0) / k))
    n_circles = rng.randint(*CIRCLES)
    shapes = [("circle", i) for i in range(n_circles)] + [("triangle", i) for i in range(rng.randint(0, 3))]
    placed, drawn = 0, []
    for shape, _ in shapes:
        for _attempt in range(200):
            r = rng.uniform(22, 38) * k
            # Centred on an LR patch (3 HR patches, 84 model pixels), as labels sit on HR patches.
            x, y = snap_to_patch(rng.uniform(r, w - r), rng.uniform(r, h - r), w, h, 3 * PATCH_PX)
            rect = (x - r, y - r, x + r, y + r)
            if r <= x <= w - r and r <= y <= h - r and not _overlaps(rect, taken, 6 * k):
                break
        else:
            raise RuntimeError(f"seed {seed}: no room for a {shape}")
        taken.append(rect)
        fill = COLOURS[rng.choice(sorted(COLOURS))]
        drawn.append(dict(kind=shape, centre=(x, y), radius=r))
        if shape == "circle":
            draw.ellipse(rect, fill=fill)
            placed += 1
        else:
            draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
    assert placed == n_circles

    box = boxes[rng.randrange(4)]
    colour_box = boxes[rng.randrange(4)]
    questions = [
        ("colour", f"What colour is the box at the {colour_box['position']}?", colour_box["colour"],
         colour_box["rect"]),
        ("count", "How many circles are there?", str(n_circles), None),
        ("digit", f"What digit is in the {box['colour']} box?", box["digit"], box["rect"]),
    ]
    every = [("colour", f"What colour is the box at the {b['position']}?", b["colour"], b["rect"]) for b in boxes]
    every += [questions[1]]
    every += [("digit", f"What digit is in the {b['colour']} box?", b["digit"], b["rect"]) for b in boxes]
    # questions: one of each kind (the evaluation's); every: all nine the scene can answer (training's).
    # shapes: the circles and triangles as drawn (file pixels), for training's per-cell targets (aux.py).
    return dict(image=img, questions=questions, every=every, boxes=boxes, shapes=drawn, size=(w, h))


def rect_to_cells(rect, size, side):
    """The cells of a side x side grid over the padded square that `rect` (file pixels) covers."""
    w, h = size
    s = max(w, h)
    ox, oy = (s - w) / 2, (s - h) / 2
    x0, y0, x1, y1 = rect
    c0, c1 = int((x0 + ox) / s * side), min(side - 1, int((x1 + ox) / s * side))
    r0, r1 = int((y0 + oy) / s * side), min(side - 1, int((y1 + oy) / s * side))
    return [r * side + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def corpus_lines():
    """Every question and answer text the generator can produce, for the tokenizer."""
    lines = [f"What colour is the box at the {p}?" for p in POSITIONS]
    lines += ["How many circles are there?"]
    lines += [f"What digit is in the {c} box?" for c in sorted(COLOURS)]
    lines += sorted(COLOURS) + list("0123456789")
    return lines


if __name__ == "__main__":
    import sys
    for s in sys.argv[1:]:
        sc = make_scene(int(s))
        sc["image"].save(f"scene_{s}.png")
        print(s, sc["size"], [(q[1], q[2]) for q in sc["questions"]])
