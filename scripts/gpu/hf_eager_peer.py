#!/usr/bin/env python3
"""Peer: Hugging Face transformers LLaVA-1.5-7B shape, random bf16 weights, sdpa, eager generate: the
measurement of ../shared/peer-bench/hf_llava.py (same model, same timing: TTFT = one forward between
CUDA events, decode = (64-token generate - TTFT) / 63), with the image sizes and batch sizes as
arguments so that scripts/gpu/check.sh can run exactly the rows it compares, each row printed as one
`RESULT {json}` line as soon as it is measured (a killed run keeps the rows it finished).

    hf_eager_peer.py --px 336 --batch 1,8,32,64      hf_eager_peer.py --px 1008 --batch 1,8 --steps 0
"""
import argparse
import json
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration


def build(image_size, dev):
    """LLaVA-1.5-7B shape (CLIP ViT-L/14 at image_size, LLaMA-7B, vocab 32064), transformers' random
    init, bf16, built on `dev`; also the model scripts/gpu/hf_parity.py saves."""
    vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=image_size, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    tc = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32064, max_position_embeddings=8192, rms_norm_eps=1e-5)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=32000, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    cfg._attn_implementation = "sdpa"
    with torch.device(dev):
        torch.set_default_dtype(torch.bfloat16)
        m = LlavaForConditionalGeneration(cfg)
        torch.set_default_dtype(torch.float32)
    return m.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, nargs="+", default=[336])
    parser.add_argument("--batch", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=64, help="0: TTFT only")
    parser.add_argument("--text", type=int, default=40, help="text tokens beside the image's")
    args = parser.parse_args()
    dev = "cuda"
    torch.manual_seed(0)
    for image_size in args.px:
        model = build(image_size, dev)
        n_img = (image_size // 14) ** 2
        for batch in [int(b) for b in args.batch.split(",")]:
            ids = torch.randint(100, 31000, (batch, args.text + n_img), device=dev)
            ids[:, 5:5 + n_img] = 32000
            px = torch.randn(batch, 3, image_size, image_size, device=dev, dtype=torch.bfloat16)
            row = dict(check="peer", peer="hf-eager", image_px=image_size, batch=batch, prompt_tokens=args.text + n_img)
            try:
                with torch.inference_mode():
                    for _ in range(2):
                        model.generate(input_ids=ids, pixel_values=px, max_new_tokens=2, min_new_tokens=2,
                                       do_sample=False)
                    ttfts = []
                    for _ in range(3):
                        torch.cuda.synchronize()
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record()
                        model(input_ids=ids, pixel_values=px, use_cache=True)
                        b.record()
                        torch.cuda.synchronize()
                        ttfts.append(a.elapsed_time(b))
                    row["ttft_ms"] = round(sorted(ttfts)[1], 2)
                    if args.steps > 1:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        model.generate(input_ids=ids, pixel_values=px, max_new_tokens=args.steps,
                                       min_new_tokens=args.steps, do_sample=False)
                        torch.cuda.synchronize()
                        total = (time.perf_counter() - t0) * 1e3
                        per = (total - row["ttft_ms"]) / (args.steps - 1)
                        row["decode_ms_per_step"] = round(per, 3)
                        row["tokens_per_s"] = round(batch * 1000 / per, 1)
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                torch.cuda.empty_cache()
            print("RESULT " + json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
