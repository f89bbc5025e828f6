#!/usr/bin/env python3
"""Derives the engine's timing checkpoints from one Hugging Face-layout LLaVA checkpoint (the 7B one
scripts/gpu/hf_parity.py saved), without rewriting what can be shared:

  --full-px N DIR   the same model with its CLIP tower at N px (LLaVA at 1008 px: every high-res token
                    in the sequence): the shards are hard-linked, one new shard holds a random position
                    embedding of (N/14)^2 + 1 rows, and model.safetensors.index.json points that one
                    name at it; config.json and preprocessor_config.json say N.
  --flex DIR        a FlexAttention checkpoint as senfu/llava-v1.5-7b-flexattn lays it out (original
                    LLaVA layout, CLIP in DIR/clip, the "extra" dict, k_proj_hd / v_proj_hd in every
                    layer, random): the tensors are renamed, so this one is a full copy (streamed).

Standard library only; safetensors are read and written by hand (8 bytes of header length, a JSON
header, then the raw data). Random values ~ N(0, 0.02) in the source's dtype, drawn by torch (on the
GPU when there is one) where torch is installed, else by the standard library (the CPU dry run's tiny
sizes: scripts/install_deps.sh installs no Python torch).
"""
import argparse
import json
import os
import shutil
import random
import struct

try:
    import torch
except ImportError:
    torch = None

# transformers writes only the fields that differ from its defaults (save_pretrained's diff): these are
# the defaults of LlamaConfig and CLIPVisionConfig, which the engine's config parser shares.
TEXT_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "vocab_size": 32000}
VISION_DEFAULTS = {"hidden_size": 768, "image_size": 224, "patch_size": 32}
ITEM_BYTES = {"BF16": 2, "F16": 2, "F32": 4}


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def shards(src):
    """{tensor name: shard file name} of a checkpoint directory."""
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return json.load(f)["weight_map"]
    header, _ = read_header(os.path.join(src, "model.safetensors"))
    return {name: "model.safetensors" for name in header}


class Writer:
    """Streams tensors into one safetensors file whose header is known up front."""

    def __init__(self, path, entries):  # entries: [(name, dtype name, shape, nbytes)]
        header, offset = {}, 0
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(text)) + text)

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()


def random_bytes(shape, dtype, seed):
    """N(0, 0.02) values of `shape` as raw little-endian `dtype` ("BF16", "F16", "F32") bytes."""
    n = 1
    for d in shape:
        n *= d
    if torch is not None:
        types = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        gen = torch.Generator(device=dev).manual_seed(seed)
        t = torch.randn(n, generator=gen, device=dev, dtype=torch.float32).mul_(0.02).to(types[dtype])
        return t.cpu().view(torch.uint8).numpy().tobytes()
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 0.02) for _ in range(n)]
    if dtype == "F16":
        return struct.pack(f"<{n}e", *values)
    f32 = struct.pack(f"<{n}f", *values)
    if dtype == "F32":
        return f32
    return b"".join(f32[i + 2:i + 4] for i in range(0, len(f32), 4))  # BF16: the high half (truncated).


def copy_side_files(src, dst, px=None):
    os.makedirs(dst, exist_ok=True)
    for name in ("tokenizer.model", "preprocessor_config.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    if px:
        path = os.path.join(dst, "preprocessor_config.json")
        with open(path) as f:
            pre = json.load(f)
        pre["size"] = {"shortest_edge": px}
        pre["crop_size"] = {"height": px, "width": px}
        with open(path, "w") as f:
            json.dump(pre, f, indent=2)


def full_px(src, dst, px):
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    vision = config.setdefault("vision_config", {})
    patch = vision.get("patch_size", VISION_DEFAULTS["patch_size"])
    vision["image_size"] = px
    copy_side_files(src, dst, px)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    weight_map = shards(src)
    for shard in sorted(set(weight_map.values())):
        target = os.path.join(dst, shard)
        if os.path.exists(target):
            os.remove(target)
        os.link(os.path.join(src, shard), target)
    name = next(n for n in weight_map if n.endswith("embeddings.position_embedding.weight"))
    header, _ = read_header(os.path.join(src, weight_map[name]))
    rows, width = (px // patch) ** 2 + 1, header[name]["shape"][1]
    dtype = header[name]["dtype"]
    data = random_bytes((rows, width), dtype, 1)
    w = Writer(os.path.join(dst, f"position_embedding_{px}.safetensors"), [(name, dtype, (rows, width), len(data))])
    w.write(data)
    w.close()
    weight_map[name] = f"position_embedding_{px}.safetensors"
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    print(f"wrote {dst}: {px} px, {rows - 1} image tokens, shards shared with {src}", flush=True)


def original_name(name):
    """HF-layout name -> (file, original-layout name); file 'clip' for the vision tower."""
    for prefix, file, new in (("model.language_model.", "llm", "model."), ("language_model.model.", "llm", "model."),
                              ("language_model.lm_head.", "llm", "lm_head."), ("lm_head.", "llm", "lm_head."),
                              ("model.multi_modal_projector.", "llm", "model.mm_projector."),
                              ("multi_modal_projector.", "llm", "model.mm_projector."),
                              ("model.vision_tower.vision_model.", "clip", "vision_model."),
                              ("model.vision_tower.", "clip", "vision_model."),
                              ("vision_tower.vision_model.", "clip", "vision_model."),
                              ("vision_tower.", "clip", "vision_model.")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if new == "model.mm_projector.":
                rest = rest.replace("linear_1.", "0.", 1).replace("linear_2.", "2.", 1)
            return file, new + rest
    raise ValueError(f"unexpected tensor name {name}")


def flex(src, dst, num_sa_layers, threshold):
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    text = {**TEXT_DEFAULTS, **config.get("text_config", {})}
    vision = {**VISION_DEFAULTS, **config.get("vision_config", {})}
    lowres = vision["image_size"]
    os.makedirs(os.path.join(dst, "clip"), exist_ok=True)
    copy_side_files(src, dst, 3 * lowres)
    copy_side_files(src, os.path.join(dst, "clip"))
    weight_map = shards(src)
    headers = {s: read_header(os.path.join(src, s)) for s in set(weight_map.values())}
    first = next(iter(weight_map))
    dtype = headers[weight_map[first]][0][first]["dtype"]
    top = {k: v for k, v in text.items() if k not in ("model_type", "architectures", "dtype", "torch_dtype")}
    top.update({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
                "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
                "mm_hidden_size": vision["hidden_size"], "mm_projector_type": "mlp2x_gelu",
                "mm_vision_select_layer": config.get("vision_feature_layer", -2), "mm_vision_select_feature": "patch",
                "mm_vision_tower": "clip", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
                "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
                "extra": {"zoom_ratio": "3", "highres_size": str(3 * lowres), "lowres_size": str(lowres),
                          "threshold": str(threshold), "warmup": "10"}})
    if num_sa_layers:  # Unset: the authors' 9 (modeling_llama.py:424-426).
        top["extra"]["num_sa_layers"] = str(num_sa_layers)
    top.setdefault("vocab_size", config.get("vocab_size", 32064))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(top, f, indent=2)
    clip_config = {"architectures": ["CLIPModel"], "model_type": "clip",
                   "projection_dim": vision.get("projection_dim", 768),
                   "vision_config": {k: v for k, v in vision.items() if k not in ("dtype", "torch_dtype")}}
    with open(os.path.join(dst, "clip", "config.json"), "w") as f:
        json.dump(clip_config, f, indent=2)
    plan = {"llm": [], "clip": []}  # (new name, dtype, shape, nbytes, source shard, offset) or random
    for name, shard in sorted(weight_map.items()):
        header, base = headers[shard]
        e = header[name]
        file, new = original_name(name)
        a, b = e["data_offsets"]
        plan[file].append((new, e["dtype"], e["shape"], b - a, (shard, base + a)))
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    kv = text.get("num_key_value_heads", text["num_attention_heads"]) * (hidden // text["num_attention_heads"])
    for i in range(layers):
        for proj in ("k_proj_hd", "v_proj_hd"):
            n = kv * hidden * ITEM_BYTES[dtype]
            plan["llm"].append((f"model.layers.{i}.self_attn.{proj}.weight", dtype, [kv, hidden], n, None))
    for file, path in (("llm", os.path.join(dst, "model.safetensors")),
                       ("clip", os.path.join(dst, "clip", "model.safetensors"))):
        w = Writer(path, [p[:4] for p in plan[file]])
        handles = {}
        for seed, (name, dt, shape, n, source) in enumerate(plan[file]):
            if source is None:
                w.write(random_bytes(shape, dt, 100 + seed))
                continue
            shard, offset = source
            f = handles.setdefault(shard, open(os.path.join(src, shard), "rb"))
            f.seek(offset)
            w.write(f.read(n))
        for f in handles.values():
            f.close()
        w.close()
    print(f"wrote {dst}: FlexAttention checkpoint (original layout), N_SA {num_sa_layers}, "
          f"{lowres} -> {3 * lowres} px", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="a Hugging Face-layout LLaVA checkpoint directory")
    parser.add_argument("--full-px", nargs=2, metavar=("PX", "DIR"))
    parser.add_argument("--flex", metavar="DIR")
    parser.add_argument("--num-sa-layers", type=int, default=0, help="flex: N_SA; 0: the authors' 9")
    parser.add_argument("--threshold", type=int, default=48)
    args = parser.parse_args()
    if args.full_px:
        full_px(args.src, args.full_px[1], int(args.full_px[0]))
    if args.flex:
        flex(args.src, args.flex, args.num_sa_layers, args.threshold)


if __name__ == "__main__":
    main()
