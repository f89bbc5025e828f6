#!/usr/bin/python3
"""From generated scenes to model inputs: the tokenizer (SentencePiece, trained on the questions, answers
and the prompt template), the LLaVA-1.5 vicuna_v1 prompt exactly as model/text/prompt.cc builds it, and
the FlexAttention image pipeline of tests/parity/flex_reference.py (pad to square with the mean colour,
PIL-bicubic resize + crop to 1008, normalise, antialiased bilinear downsample to 336), applied to an
in-memory image.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import scene as scenes
from flexnet import CLIP_MEAN, CLIP_STD

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "parity"))
from flex_reference import expand2square  # noqa: E402

# conv_vicuna_v1's system prompt: the engine's default template for the original-LLaVA layout
# (model/text/prompt.cc kVicunaV1System; test_demo.py checks they agree). Runs before 2026-12-02 used
# conv_llava_v1's ("curious human ... human's questions"): their checkpoints need --chat-template llava_v1.
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the user's questions.")
IMAGE_ID = -200  # llava/constants.py IMAGE_TOKEN_INDEX, as the original layout marks the image.


def train_tokenizer(prefix, vocab_size):
    """LLaMA's tokenizer settings (tools/tiny/tokenizer_trainer.cc), on the demo's texts."""
    import sentencepiece as spm
    corpus = prefix + ".corpus.txt"
    lines = []
    for q in scenes.corpus_lines():
        lines.append(f"{SYSTEM} USER: ")
        lines.append(f"\n{q} ASSISTANT:")
        lines.append(q)
    with open(corpus, "w") as f:
        f.write("\n".join(lines * 20) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, split_digits=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, num_threads=1, minloglevel=2)
    os.remove(corpus)
    os.remove(prefix + ".vocab")
    return prefix + ".model"


class Prompter:
    def __init__(self, tokenizer_model, n_image_tokens):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
        self.n = n_image_tokens
        self.head = [1] + self.sp.encode(f"{SYSTEM} USER: ")
        self.begin = len(self.head)
        self.eos = self.sp.eos_id()

    def prompt(self, question):
        return self.head + [IMAGE_ID] * self.n + self.sp.encode(f"\n{question} ASSISTANT:")

    def answer(self, text):
        ids = self.sp.encode(text)
        assert len(ids) == 1, f"answer {text!r} is {len(ids)} tokens"
        return ids + [self.eos]

    def decode(self, ids):
        return self.sp.decode([i for i in ids if i != self.eos])


_NORMALISE = [((np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32) - np.float32(m)) / np.float32(d)
              for m, d in zip(CLIP_MEAN, CLIP_STD)]


def _normalised(arr):
    """uint8 [H, W, 3] -> float32 [3, H, W]: the reference's ((v / 255 in float64, to float32) - mean) / std,
    done once per byte value and channel and looked up (the same numbers, without ~3M float64 operations
    per image)."""
    return torch.from_numpy(np.stack([_NORMALISE[c][arr[..., c]] for c in range(3)]))


def normalise(img):
    """A PIL RGB image -> [3, H, W] normalised as the pipeline does (no resize)."""
    return _normalised(np.asarray(img.convert("RGB")))


def preprocess(img, highres, lowres):
    """flex_reference.FlexReference.preprocess on a PIL image: (high [1,3,H,H], low [1,3,L,L], size)."""
    size = img.size
    img = expand2square(img, tuple(int(x * 255) for x in CLIP_MEAN))
    w, h = img.size
    s = highres
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    arr = np.array(img.resize((nw, nh), resample=Image.BICUBIC))
    top, left = (nh - s) // 2, (nw - s) // 2
    arr = arr[top:top + s, left:left + s]
    high = _normalised(arr)[None]
    low = F.interpolate(high, size=lowres, mode="bilinear", antialias=True)
    return high, low, size

