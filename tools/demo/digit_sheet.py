#!/usr/bin/python3
"""Digit sheets: one HR tile's worth (336 model pixels) of white labels with digits on coloured patches,
drawn like the scenes' labels (scene.py: DejaVu Sans Bold, ink 12-15 model px, a white label with half a
glyph of padding, box colours, grey clutter), for stage 1 of the recipe (vision_pretrain.py).

Why: a scene holds four digits, so the first version of stage 1 saw ~32 labelled digits per step and the
tower learnt none in 220 steps (digit accuracy at chance, 0.1). A sheet holds up to 36 (a 6 x 6 lattice of
56 px areas, each label on one of its four 28 px patches, as scene.snap_to_patch places them). It is drawn at one of the scenes' file scales and resized to 336 with PIL's bicubic filter, as
the scenes' pixels reach the 1008 px view. Deterministic by seed.
"""
import random

import torch
from PIL import Image, ImageDraw

import aux
import data
import scene as scenes

AREA = 56  # Model pixels per lattice area: two 28 px patches.


def make_sheet(seed, tile=336, patch=28):
    """-> (pixels [3, tile, tile] normalised, digit [n], colour [n]) with n = (tile / patch)^2 cell
    targets as aux.hr_targets gives them (digit at the label centre's cell, IGNORE where the label
    only overlaps, box colour class under each cell's centre)."""
    rng = random.Random(seed)
    k = rng.choice([1.0, 1.0, 768 / 1008, 1200 / 1008, 1344 / 1008])  # File pixels per model pixel.
    side = round(tile * k)
    img = Image.new("RGB", (side, side), tuple(rng.randint(200, 250) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        g = rng.randint(120, 190)
        draw.line([(rng.uniform(0, side), rng.uniform(0, side)) for _ in range(2)], fill=(g, g, g),
                  width=max(1, round(rng.uniform(1, 3) * k)))
    lattice = tile // AREA
    areas, labels = [], []
    for r in range(lattice):
        for c in range(lattice):
            x0, y0 = c * AREA * k, r * AREA * k
            colour = rng.choice(sorted(scenes.COLOURS))
            rect = (x0, y0, x0 + AREA * k, y0 + AREA * k)
            if rng.random() < 0.85:  # Some areas stay background: labels are not everywhere.
                draw.rectangle((x0, y0, rect[2] - 1, rect[3] - 1), fill=scenes.COLOURS[colour])
                areas.append(dict(colour=colour, rect=rect))
            else:
                colour = None
            if colour is None or rng.random() < 0.1:
                continue
            digit = str(rng.randrange(10))
            glyph = rng.uniform(*scenes.GLYPH_PX) * k
            fsize = scenes.font_size_for(glyph)
            gx0, gy0, gx1, gy1 = scenes.font(fsize).getbbox(digit)
            pad = 0.5 * glyph
            hw, hh = (gx1 - gx0) / 2 + pad, (gy1 - gy0) / 2 + pad
            # On a patch centre, as scene.snap_to_patch places the scenes' labels.
            cx = x0 + (rng.randrange(AREA // patch) + 0.5) * patch * k
            cy = y0 + (rng.randrange(AREA // patch) + 0.5) * patch * k
            label = (cx - hw, cy - hh, cx + hw, cy + hh)
            draw.rectangle(label, fill=(255, 255, 255))
            draw.text((cx - (gx0 + gx1) / 2, cy - (gy0 + gy1) / 2), digit, font=scenes.font(fsize), fill=(0, 0, 0))
            labels.append(dict(colour=colour, digit=digit, label=label, rect=rect))
    # Targets on the sheet's own square (no padding bands): digits of the labels, colours of every area.
    digit_t, _ = aux.hr_targets(dict(size=(side, side), boxes=labels), tile // patch)
    colour_t = aux.colour_grid(dict(size=(side, side), boxes=areas), tile // patch)
    if side != tile:
        img = img.resize((tile, tile), resample=Image.BICUBIC)
    pixels = data.normalise(img)
    return pixels, digit_t, colour_t


def make_sheets(seeds):
    out = [make_sheet(s) for s in seeds]
    return tuple(torch.stack(x) for x in zip(*out))
