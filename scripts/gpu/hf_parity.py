#!/usr/bin/env python3
"""Writes a teacher-forcing parity fixture that bench/device_parity reads (--fixture DIR):

  DIR/model/          the checkpoint both sides load (written once, here)
  DIR/fixture.json    input_ids, pixel_shape, greedy_tokens (32), greedy_margins, logits_shape,
                      step_logits_shape, model_dir, producer
  DIR/pixel_values.f32, DIR/logits.f32 ([T, V] prompt logits), DIR/step_logits.f32 ([n, V]: row i
                      is the logits that chose greedy token i), float32 little-endian

--backend hf (the GPU machine, issue 10): a LLaVA-1.5-7B-shaped LlavaForConditionalGeneration
(CLIP ViT-L/14-336, LLaMA-7B, vocab 32064) with transformers' own random init, built directly on the
device in bf16 and saved once with save_pretrained (about 14 GB); HF's greedy tokens from generate()
with its logits. The engine then loads that directory (no second copy). A tokenizer.model and a
preprocessor_config.json are added so the engine can also serve it for the timings.

--backend reference --model-dir DIR (the CPU dry run): the same fixture from our plain-PyTorch
reference (tests/parity/llava_reference.py) over an existing tiny checkpoint, so that the fixture
format and device_parity's forced path are exercised without transformers.

Inputs are random (never zeros): ids in [100, 31000) (or the tiny vocab) with one image's
placeholders after a BOS and 4 text tokens, pixel values ~ N(0, 1).
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = 32


def write_fixture(out, input_ids, pixel_values, prompt_logits, step_logits, tokens, producer, model_dir):
    top2 = step_logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    pixel_values.float().cpu().numpy().astype("<f4").tofile(os.path.join(out, "pixel_values.f32"))
    prompt_logits.float().cpu().numpy().astype("<f4").tofile(os.path.join(out, "logits.f32"))
    step_logits.float().cpu().numpy().astype("<f4").tofile(os.path.join(out, "step_logits.f32"))
    fixture = {
        "input_ids": input_ids,
        "pixel_shape": list(pixel_values.shape),
        "logits_shape": list(prompt_logits.shape),
        "step_logits_shape": list(step_logits.shape),
        "greedy_tokens": tokens,
        "greedy_margins": [round(m, 6) for m in margins],
        "producer": producer,
        "model_dir": model_dir,
    }
    with open(os.path.join(out, "fixture.json"), "w") as f:
        json.dump(fixture, f)
    near = sum(m <= 0.1 for m in margins)
    print(f"wrote {out}: {len(input_ids)} prompt tokens, {len(tokens)} greedy tokens, "
          f"{near} with margin <= 0.1 (smallest {min(margins):.4f})", flush=True)


def random_prompt(gen, text_vocab, image_token, image_tokens, text_tokens):
    ids = torch.randint(100 if text_vocab > 1000 else 3, text_vocab, (image_tokens + text_tokens,),
                        generator=gen).tolist()
    ids[0] = 1
    ids[5:5 + image_tokens] = [image_token] * image_tokens
    return ids


def hf_backend(args):
    import transformers
    from transformers import CLIPImageProcessor
    sys.path.insert(0, HERE)
    from hf_eager_peer import build  # The peers' model: the same shapes and init.
    t0 = time.time()
    torch.manual_seed(0)
    dev = args.device
    model = build(336, dev)
    model_dir = os.path.join(args.out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save_pretrained(model_dir)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(model_dir)
    shutil.copyfile(args.tokenizer, os.path.join(model_dir, "tokenizer.model"))
    print(f"built and saved the 7B-shaped model in {time.time() - t0:.1f} s", flush=True)
    gen = torch.Generator().manual_seed(1)
    ids = random_prompt(gen, 31000, 32000, 576, 40)
    pixel_values = torch.randn((1, 3, 336, 336), generator=gen)
    x = torch.tensor([ids], device=dev)
    px = pixel_values.to(dev, torch.bfloat16)
    with torch.inference_mode():
        prompt_logits = model(input_ids=x, pixel_values=px).logits[0].float()
        out = model.generate(input_ids=x, pixel_values=px, max_new_tokens=STEPS, min_new_tokens=STEPS,
                             do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    step_logits = torch.stack([s[0].float() for s in out.logits])
    assert len(tokens) == STEPS and tokens == step_logits.argmax(-1).tolist(), "generate() was not raw greedy"
    producer = (f"transformers {transformers.__version__} LlavaForConditionalGeneration, random init, "
                f"bf16 sdpa on {torch.cuda.get_device_name() if dev.startswith('cuda') else dev}, torch {torch.__version__}")
    write_fixture(args.out, ids, pixel_values, prompt_logits, step_logits, tokens, producer, "model")
    print(f"hf_parity total {time.time() - t0:.1f} s", flush=True)


def reference_backend(args):
    sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
    from llava_reference import LlavaReference
    ref = LlavaReference(args.model_dir)
    with open(os.path.join(args.model_dir, "config.json")) as f:
        config = json.load(f)
    text = {"vocab_size": 32000, **config.get("text_config", config)}
    vision = config.get("vision_config", {})
    size = vision.get("image_size", 336)
    image_token = config.get("image_token_index", config.get("image_token_id", 32000))
    gen = torch.Generator().manual_seed(1)
    n_image = (size // vision.get("patch_size", 14)) ** 2
    ids = random_prompt(gen, min(text["vocab_size"], image_token), image_token, n_image, 24)
    pixel_values = torch.randn((1, 3, size, size), generator=gen)
    tokens, _ = ref.greedy(ids, pixel_values, STEPS)
    with torch.no_grad():
        full = ref.decoder_logits(ref.input_embeddings(ids + tokens, pixel_values, len(ids))).float()
    prompt_logits, step_logits = full[:len(ids)], full[len(ids) - 1:len(ids) - 1 + STEPS]
    assert tokens == step_logits.argmax(-1).tolist()
    write_fixture(args.out, ids, pixel_values, prompt_logits, step_logits, tokens,
                  f"tests/parity/llava_reference.py (plain PyTorch {torch.__version__}, CPU fp32)",
                  os.path.abspath(args.model_dir))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--backend", choices=["hf", "reference"], default="hf")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-dir", help="reference backend: the checkpoint to run")
    parser.add_argument("--tokenizer", default=os.path.join(ROOT, "tests/fixtures/reference_tiny/model/tokenizer.model"),
                        help="hf backend: tokenizer.model copied into the checkpoint (the engine needs one)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.backend == "hf":
        hf_backend(args)
    else:
        if not args.model_dir:
            parser.error("--backend reference needs --model-dir")
        reference_backend(args)


if __name__ == "__main__":
    main()
