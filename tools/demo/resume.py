#!/usr/bin/python3
"""A training stage's state file (WORK/vision_state.pt, WORK/state.pt): its modules' weights, the
optimizer's state and the step, written atomically so that a killed run resumes from the last save."""
import os

import torch


def load(path, opt, **modules):
    """Loads `path` into `modules` (name -> module) and `opt` if it exists; returns its step (0 if not)."""
    if not os.path.exists(path):
        return 0
    state = torch.load(path, map_location="cpu")
    for name, module in modules.items():
        module.load_state_dict(state[name])
    opt.load_state_dict(state["opt"])
    return state["step"]


def save(path, opt, step, **modules):
    state = {name: module.state_dict() for name, module in modules.items()}
    state.update(opt=opt.state_dict(), step=step)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
