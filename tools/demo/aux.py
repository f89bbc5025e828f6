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


def cell_of(point, size, side):
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
        shape[cell_of(sh["centre"], sc["size"], side)] = SHAPE_CLASSES.index(sh["kind"])
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
        digit[cell_of(((x0 + x1) / 2, (y0 + y1) / 2), sc["size"], side)] = DIGIT_CLASSES.index(b["digit"])
    return digit, colour_grid(sc, side)


def label_cells(box, size, side):
    """The HR cells the box's label overlaps (where a digit question's HR attention should go)."""
    return scenes.rect_to_cells(box["label"], size, side)


class Heads(torch.nn.Module):
    """Linear read-outs of the projector's tokens (training only)."""

    def __init__(self, width):
        super().__init__()
        self.lr_colour = torch.nn.Linear(width, len(COLOUR_CLASSES))
        self.lr_shape = torch.nn.Linear(width, len(SHAPE_CLASSES))
        self.lr_quadrant = torch.nn.Linear(width, QUADRANTS)
        self.lr_count = torch.nn.Linear(width, MAX_CIRCLES + 1)
        self.hr_digit = torch.nn.Linear(width, len(DIGIT_CLASSES))
        self.hr_colour = torch.nn.Linear(width, len(COLOUR_CLASSES))

    def lr_loss(self, feats, colour, shape, quadrant, count):
        """feats [N, n, D], targets [N, n] -> (loss, right colours, right shape cells that hold a shape,
        right circle counts). The quadrant keeps where a token is in it (a colour question names a
        quadrant; the first two-stage run learnt digits but not colours without it), the count makes
        every token carry the scene's number of circles (counting by attention is what a 4-layer
        decoder learns last)."""
        lc, ls = self.lr_colour(feats), self.lr_shape(feats)
        ln = self.lr_count(feats)
        # Most cells hold no shape: weight the classes so that shapes are not drowned.
        loss = F.cross_entropy(lc.flatten(0, 1), colour.flatten()) + \
            F.cross_entropy(ls.flatten(0, 1), shape.flatten(),
                            weight=torch.tensor([0.05, 1.0, 1.0], device=feats.device)) + \
            F.cross_entropy(self.lr_quadrant(feats).flatten(0, 1), quadrant.flatten()) + \
            F.cross_entropy(ln.flatten(0, 1), count.flatten())
        held = shape > 0
        return loss, float((lc.argmax(-1) == colour).float().mean()), \
            float((ls.argmax(-1)[held] == shape[held]).float().mean()) if held.any() else 0.0, \
            float((ln.argmax(-1) == count).float().mean())

    def hr_loss(self, feats, digit, colour):
        """feats [M, D] HR tokens, targets [M] -> (loss, right digits at digit cells)."""
        ld = self.hr_digit(feats)
        held = digit > 0
        # The digit is scored only where one is (4 cells of 1,296 per image: weighting "none" down is not
        # enough, the first run of this stage learnt no digit in 180 steps with "none" at 0.1), and "none"
        # versus "some digit" on the other cells at a small weight.
        loss = F.cross_entropy(self.hr_colour(feats), colour)
        if held.any():
            loss = loss + F.cross_entropy(ld[held], digit[held])
        w = torch.ones(len(DIGIT_CLASSES), device=feats.device)
        w[0] = 0.1
        loss = loss + 0.1 * F.cross_entropy(ld, digit, weight=w, ignore_index=IGNORE)
        return loss, float((ld.argmax(-1)[held] == digit[held]).float().mean()) if held.any() else 0.0


NAMED_CLASSES = len(scenes.POSITIONS) + len(scenes.COLOURS) + 1  # quadrant | box colour | "count"


def named_target(kind, question):
    """What the question names, as one class: the quadrant of a colour question, the box colour of a
    digit question, one class for the count question."""
    for q, pos in enumerate(scenes.POSITIONS):
        if kind == "colour" and question.endswith(f"the {pos}?"):
            return q
    for c, colour in enumerate(sorted(scenes.COLOURS)):
        if kind == "digit" and f" {colour} box" in question:
            return len(scenes.POSITIONS) + c
    assert kind == "count", (kind, question)
    return NAMED_CLASSES - 1


class Readouts(torch.nn.Module):
    """Deep supervision of the decoder (training only, not exported): linear read-outs of the answer
    row's hidden state after each layer but the last (whose read-out is the model's own lm_head). After
    every such layer, what the question names (so the first layer gathers both words of "top left"
    into the row whose query the selecting layer uses: without it the selection looked at both boxes
    of the named row); after the layers that have seen what the answer needs (the LR view for colour
    and count, the first FlexAttention layer's HR view for digits), the answer token."""

    def __init__(self, width, layers, vocab):
        super().__init__()
        self.named = torch.nn.ModuleList(torch.nn.Linear(width, NAMED_CLASSES) for _ in range(layers - 1))
        self.answer = torch.nn.ModuleList(torch.nn.Linear(width, vocab) for _ in range(layers - 1))

    def loss(self, rows, named, answer, answer_from):
        """rows: per layer [B, R, D] (FlexNet collect["rows"]); named, answer [B]; answer_from [B]: the
        first layer whose output is scored on the answer. -> (loss, right named at layer 0)."""
        terms, first_right = [], 0.0
        for i, h in enumerate(rows[:-1]):
            x = h[:, 0]  # The row that predicts the answer token.
            ln = self.named[i](x)
            terms.append(F.cross_entropy(ln, named))
            if i == 0:
                first_right = float((ln.argmax(-1) == named).float().mean())
            use = answer_from <= i
            if bool(use.any()):
                terms.append(F.cross_entropy(self.answer[i](x[use]), answer[use]))
        return torch.stack(terms).mean(), first_right
