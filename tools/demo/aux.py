#!/usr/bin/python3
"""Dense auxiliary targets that teach the vision side to read (docs/demo_model.md, "the recipe").

The first run trained everything from the answer loss alone and stayed at chance: the projector's tokens
carried a box's colour only faintly (a linear probe found it, the decoder never did) and nothing pulled
them to carry digits. Here each token gets a label of what lies under it, read through linear heads that
exist only in training (they are not exported, the forward the engine runs is unchanged):
  LR grid (lr x lr cells over the padded square): the colour of the box under the cell's centre (or none)
    and the shape whose centre lies in the cell (circle, triangle, none): what colour and count questions
    read;
  HR grid (hr x hr cells, the 1008 px view's patches): the digit whose ink centre lies in the cell (other
    cells the label touches are not scored: they see part of it) and the box colour under the cell's
    centre: what a digit question reads ("the digit in the red box").
Linear heads, so what they find is linearly there for the decoder's value projections.
"""
import torch
import torch.nn.functional as F

import scene as scenes

COLOUR_CLASSES = ["none"] + sorted(scenes.COLOURS)
SHAPE_CLASSES = ["none", "circle", "triangle"]
QUADRANTS = 4  # scene.POSITIONS, row-major: the picture's quadrants (padding is symmetric, so the square's).
MAX_CIRCLES = scenes.CIRCLES[1]
DIGIT_CLASSES = ["none"] + list("0123456789")
IGNORE = -100


def _to_square(size):
    """(offset x, offset y, side) of the padded square in file pixels (expand2square centres the image)."""
    w, h = size
    s = max(w, h)
    return (s - w) / 2, (s - h) / 2, s


def _cell_of(point, size, side):
    ox, oy, s = _to_square(size)
    c = min(side - 1, max(0, int((point[0] + ox) / s * side)))
    r = min(side - 1, max(0, int((point[1] + oy) / s * side)))
    return r * side + c


def colour_grid(sc, side):
    """The box colour class under each cell's centre, [side * side] long."""
    ox, oy, s = _to_square(sc["size"])
    out = torch.zeros(side * side, dtype=torch.long)
    for b in sc["boxes"]:
        x0, y0, x1, y1 = b["rect"]
        k = COLOUR_CLASSES.index(b["colour"])
        for r in range(side):
            cy = (r + 0.5) / side * s - oy
            if y0 <= cy <= y1:
                for c in range(side):
                    cx = (c + 0.5) / side * s - ox
                    if x0 <= cx <= x1:
                        out[r * side + c] = k
    return out


def lr_targets(sc, side):
    """(colour, shape, quadrant, count), each [side^2] class indices for the LR grid: the box colour under
    the cell's centre, the shape centred in it, the cell's quadrant, and the scene's number of circles
    (the same at every cell)."""
    shape = torch.zeros(side * side, dtype=torch.long)
    for sh in sc["shapes"]:
        shape[_cell_of(sh["centre"], sc["size"], side)] = SHAPE_CLASSES.index(sh["kind"])
    cells = torch.arange(side * side)
    quadrant = (cells // side >= side // 2).long() * 2 + (cells % side >= side // 2).long()
    circles = sum(1 for sh in sc["shapes"] if sh["kind"] == "circle")
    return colour_grid(sc, side), shape, quadrant, torch.full((side * side,), circles, dtype=torch.long)


def hr_targets(sc, side):
    """(digit [side^2], colour [side^2]): the digit at the cell of its label's centre, IGNORE at the other
    cells the label overlaps, none elsewhere; the colour grid as for LR."""
    digit = torch.zeros(side * side, dtype=torch.long)
    for b in sc["boxes"]:
        digit[label_cells(b, sc["size"], side)] = IGNORE
        x0, y0, x1, y1 = b["label"]
        digit[_cell_of(((x0 + x1) / 2, (y0 + y1) / 2), sc["size"], side)] = DIGIT_CLASSES.index(b["digit"])
    return digit, colour_grid(sc, side)


def label_cells(box, size, side):
    """The HR cells the box's label overlaps (where a digit question's HR attention should go)."""
    return scenes.rect_to_cells(box["label"], size, side)
