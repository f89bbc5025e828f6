#!/usr/bin/python3
"""The demo model: a small LLaVA-shaped FlexAttention network in PyTorch, batched for training, whose
forward is the one tests/parity/flex_reference.py computes (and so the one the engine runs): a CLIP-shaped
tower (hidden state -2, CLS dropped), the mlp2x_gelu projector, a LLaMA decoder whose layers >= N_SA give
their "flex rows" one softmax over [causal keys ; selected HR keys] (k/v_proj_hd on the raw projector
outputs, bicubic-upsampled RoPE), with the selection of ../shared/flexattention.md §3 computed by layers
N_SA-1 .. L-2 from each flex row's own probabilities.

Flex rows: the rows that predict answer tokens (the last prompt row and each answer token but the last).
In generation each of them is, at its step, the newest row; the reference's KV-cache semantics (a row's
keys/values are those of the step where it was newest) make one causal forward in which every flex row
attends to its own HR selection equal to step-by-step generation. check_parity.py verifies it.

Written for /usr/bin/python3 (Debian's python3-torch 1.13, CPU).
"""
import json
import math
import os

import torch
import torch.nn.functional as F

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

DEFAULT_CONFIG = dict(
    vision_hidden=64, vision_intermediate=128, vision_layers=3, vision_heads=2, image_size=336,
    patch_size=28, hidden=128, intermediate=256, layers=4, heads=4, n_sa=2, threshold=48, zoom=3,
    max_positions=512, rms_eps=1e-5, rope_theta=10000.0)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class FlexNet(torch.nn.Module):
    def __init__(self, cfg, vocab):
        super().__init__()
        self.cfg = dict(cfg)
        self.vocab = vocab
        c = self.cfg
        dv, d = c["vision_hidden"], c["hidden"]
        self.lr_side = c["image_size"] // c["patch_size"]
        self.hr_side = self.lr_side * c["zoom"]
        n_tok = self.lr_side ** 2
        P = torch.nn.Parameter
        g = lambda *s: P(torch.randn(*s) * 0.02)
        self.w = torch.nn.ParameterDict()
        w = self.w
        # Vision tower (CLIP names, with "/" for ".": ParameterDict keys cannot hold dots).
        w["v/embeddings/class_embedding"] = g(dv)
        w["v/embeddings/patch_embedding/weight"] = g(dv, 3, c["patch_size"], c["patch_size"])
        w["v/embeddings/position_embedding/weight"] = g(1 + n_tok, dv)
        w["v/pre_layrnorm/weight"] = P(torch.ones(dv))
        w["v/pre_layrnorm/bias"] = P(torch.zeros(dv))
        for i in range(c["vision_layers"]):
            p = f"v/encoder/layers/{i}/"
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                w[p + f"self_attn/{n}/weight"] = g(dv, dv)
                w[p + f"self_attn/{n}/bias"] = P(torch.zeros(dv))
            for n in ("layer_norm1", "layer_norm2"):
                w[p + f"{n}/weight"] = P(torch.ones(dv))
                w[p + f"{n}/bias"] = P(torch.zeros(dv))
            w[p + "mlp/fc1/weight"] = g(c["vision_intermediate"], dv)
            w[p + "mlp/fc1/bias"] = P(torch.zeros(c["vision_intermediate"]))
            w[p + "mlp/fc2/weight"] = g(dv, c["vision_intermediate"])
            w[p + "mlp/fc2/bias"] = P(torch.zeros(dv))
        w["v/post_layernorm/weight"] = P(torch.ones(dv))  # Unused by LLaVA (layer -2); CLIP has it.
        w["v/post_layernorm/bias"] = P(torch.zeros(dv))
        w["m/mm_projector/0/weight"] = g(d, dv)
        w["m/mm_projector/0/bias"] = P(torch.zeros(d))
        w["m/mm_projector/2/weight"] = g(d, d)
        w["m/mm_projector/2/bias"] = P(torch.zeros(d))
        # Decoder (LLaMA names under model.).
        w["m/embed_tokens/weight"] = g(vocab, d)
        for i in range(c["layers"]):
            p = f"m/layers/{i}/"
            for n in ("q_proj", "k_proj", "v_proj", "o_proj", "k_proj_hd", "v_proj_hd"):
                w[p + f"self_attn/{n}/weight"] = g(d, d)
            w[p + "mlp/gate_proj/weight"] = g(c["intermediate"], d)
            w[p + "mlp/up_proj/weight"] = g(c["intermediate"], d)
            w[p + "mlp/down_proj/weight"] = g(d, c["intermediate"])
            w[p + "input_layernorm/weight"] = P(torch.ones(d))
            w[p + "post_attention_layernorm/weight"] = P(torch.ones(d))
        w["m/norm/weight"] = P(torch.ones(d))
        w["lm_head/weight"] = g(vocab, d)

    def W(self, name):
        return self.w[name.replace(".", "/")]

    # Vision ---------------------------------------------------------------------------------------
    def clip_features(self, pixels):
        """[N, 3, S, S] normalised -> projector outputs [N, (S/p)^2, D] (CLIP hidden state -2, no CLS)."""
        c, W = self.cfg, self.W
        d, heads = c["vision_hidden"], c["vision_heads"]
        dh = d // heads
        x = F.conv2d(pixels, W("v.embeddings.patch_embedding.weight"), stride=c["patch_size"])
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([W("v.embeddings.class_embedding").expand(b, 1, -1), x], 1)
        x = x + W("v.embeddings.position_embedding.weight")[None]
        x = F.layer_norm(x, (d,), W("v.pre_layrnorm.weight"), W("v.pre_layrnorm.bias"), 1e-5)
        t = x.shape[1]
        for i in range(c["vision_layers"] - 1):
            p = f"v.encoder.layers.{i}."
            h = F.layer_norm(x, (d,), W(p + "layer_norm1.weight"), W(p + "layer_norm1.bias"), 1e-5)
            proj = lambda n, z: F.linear(z, W(p + f"self_attn.{n}.weight"), W(p + f"self_attn.{n}.bias"))
            q, k, v = (proj(n, h).view(b, t, heads, dh).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
            a = torch.softmax(q @ k.transpose(-1, -2) * dh ** -0.5, -1) @ v
            x = x + proj("out_proj", a.transpose(1, 2).reshape(b, t, d))
            h = F.layer_norm(x, (d,), W(p + "layer_norm2.weight"), W(p + "layer_norm2.bias"), 1e-5)
            h = F.linear(quick_gelu(F.linear(h, W(p + "mlp.fc1.weight"), W(p + "mlp.fc1.bias"))),
                         W(p + "mlp.fc2.weight"), W(p + "mlp.fc2.bias"))
            x = x + h
        x = x[:, 1:]
        h = F.gelu(F.linear(x, W("m.mm_projector.0.weight"), W("m.mm_projector.0.bias")))
        return F.linear(h, W("m.mm_projector.2.weight"), W("m.mm_projector.2.bias"))

    # Decoder helpers ------------------------------------------------------------------------------
    def rms(self, x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg["rms_eps"]))

    def rope(self, t):
        dh = self.cfg["hidden"] // self.cfg["heads"]
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, dh, 2).float() / dh))
        freqs = torch.outer(torch.arange(t).float(), inv)
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos(), emb.sin()

    def hr_rope(self, begin):
        """llava_llama.py:59-77: the LR positions' cos/sin as a grid, bicubic-upsampled to the HR grid."""
        n, lr, hr = self.lr_side ** 2, self.lr_side, self.hr_side
        cos, sin = self.rope(begin + n)
        up = lambda c: F.interpolate(c[begin:begin + n].reshape(lr, lr, -1).permute(2, 0, 1)[None], size=hr,
                                     mode="bicubic").flatten(2)[0].transpose(0, 1)
        return up(cos), up(sin)

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat([-x[..., half:], x[..., :half]], -1)

    def select(self, a, bands, threshold, random_blocks=None):
        """a [R, lr*lr] head-summed LR probabilities of R flex rows, bands [R] (rows/columns to zero, and
        whether they are rows) -> bool masks [R, hr*hr] (flexattention.md §3). random_blocks: a
        [R, 9, 9] bool tensor used instead of the attention map (the paper's random ablation)."""
        lr, hr = self.lr_side, self.hr_side
        r = a.shape[0]
        if random_blocks is not None:
            sel = random_blocks.float()[:, None]
        else:
            a = a.detach().reshape(r, lr, lr).clone()
            for j, (m, landscape) in enumerate(bands):
                if m:
                    if landscape:
                        a[j, :m, :] = 0.0
                        a[j, -m:, :] = 0.0
                    else:
                        a[j, :, :m] = 0.0
                        a[j, :, -m:] = 0.0
            a = a.reshape(r, -1)
            lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
            flat = hi == lo
            a = (a - lo) / torch.where(flat, torch.ones_like(hi), hi - lo)
            sel = ((a * 255 > threshold) & ~flat).float().reshape(r, 1, lr, lr)
            sel = F.adaptive_max_pool2d(sel, (9, 9))
        return F.interpolate(sel, size=hr, mode="nearest").bool().reshape(r, -1)

    # The forward ----------------------------------------------------------------------------------
    def block(self, i, x, attn):
        """Residual around attention output `attn` [.., T, D], then the MLP (LlamaDecoderLayer)."""
        W, p = self.W, f"m.layers.{i}."
        x = x + F.linear(attn, W(p + "self_attn.o_proj.weight"))
        h = self.rms(x, W(p + "post_attention_layernorm.weight"))
        return x + F.linear(F.silu(F.linear(h, W(p + "mlp.gate_proj.weight"))) *
                            F.linear(h, W(p + "mlp.up_proj.weight")), W(p + "mlp.down_proj.weight"))

    def qkv(self, i, x, cos, sin):
        """[.., T, D] -> rotated q, k and v [.., H, T, dh]."""
        W, p = self.W, f"m.layers.{i}."
        heads = self.cfg["heads"]
        h = self.rms(x, W(p + "input_layernorm.weight"))
        split = lambda y: y.view(*y.shape[:-1], heads, -1).transpose(-3, -2)
        q, k, v = (split(F.linear(h, W(p + f"self_attn.{n}.weight"))) for n in ("q_proj", "k_proj", "v_proj"))
        return q * cos + self.rotate_half(q) * sin, k * cos + self.rotate_half(k) * sin, v

    def hr_features(self, tiles, need, high):
        """Runs the tower on the HR tiles `need` [(image, tile)] not yet in `tiles` (9 tiles of the
        image size, row-major: flexattention.md §1)."""
        z, s = self.cfg["zoom"], self.cfg["image_size"]
        need = sorted(set(need) - set(tiles))
        if need:
            crops = torch.stack([high[n, :, (ti // z) * s:(ti // z + 1) * s, (ti % z) * s:(ti % z + 1) * s]
                                 for n, ti in need])
            for key, f in zip(need, self.clip_features(crops)):
                tiles[key] = f

    def hr_grid(self, tiles, weight, n_img):
        """Projects the computed tiles with `weight` and stitches them: [N, hr*hr, D] row-major over the
        HR grid, zeros where no tile was computed (those keys are masked out)."""
        z, lr, d = self.cfg["zoom"], self.lr_side, self.cfg["hidden"]
        zero = torch.zeros(lr * lr, d, device=weight.device)
        return torch.stack([
            torch.stack([F.linear(tiles[(n, ti)], weight) if (n, ti) in tiles else zero for ti in range(z * z)])
            .reshape(z, z, lr, lr, d).permute(0, 2, 1, 3, 4).reshape(-1, d) for n in range(n_img)])

    def forward(self, ids, begin, images, image_of, flex_rows, bands, threshold=None, random_blocks=None,
                collect=None):
        """ids [B, T]: full sequences (image positions hold any id; pads after each sequence's last flex row
        are ignored), all with the same text before the image at 0..begin-1; images: (high [N, 3, HS, HS],
        low [N, 3, S, S]); image_of [B]: image index per sequence; flex_rows [B, R] row indices (after the
        image); bands [B] (m, landscape) per sequence; random_blocks: {selecting layer: [B*R, 9, 9]}.
        Returns logits [B, R, V] of the flex rows, the selecting layers' head-summed LR probabilities
        [B, R, lr*lr] (for the attention loss) and the masks [B, R, hr*hr] per FA layer. collect (a dict,
        training only) receives what the auxiliary losses read: "lr_features" [N, lr*lr, D], "tiles" (the
        HR tiles' projector outputs that were computed, {(image, tile): [lr*lr, D]}) and "hr_probs" (per FA
        layer, the flex rows' head-summed probabilities on the HR keys [B, R, hr*hr]) and "rows" (per layer,
        the flex rows' hidden states after it [B, R, D], for the deep-supervision read-outs).

        The rows before the question (text + image, P of them) are the same for every question of an
        image and never attend to HR keys, so they run once per image ([N, P, D]); the question rows
        ([B, S, D]) attend to their image's prefix keys and causally to each other. Exact."""
        c, W = self.cfg, self.W
        threshold = c["threshold"] if threshold is None else threshold
        high, low = images
        b, t = ids.shape
        d, heads = c["hidden"], c["heads"]
        dh = d // heads
        n = self.lr_side ** 2
        n_img = high.shape[0]
        dev = ids.device
        P = begin + n
        S = t - P
        assert torch.equal(ids[:, :begin], ids[:1, :begin].expand(b, -1)), "the text before the image differs"
        table = W("m.embed_tokens.weight")
        lr_features = self.clip_features(low)
        xp = torch.cat([table[ids[0, :begin]].expand(n_img, -1, -1), lr_features], 1)  # [N, P, D]
        xs = table[ids[:, P:].clamp(min=0)]  # [B, S, D]
        cos, sin = (r.to(dev) for r in self.rope(t))
        hr_cos, hr_sin = (r.to(dev) for r in self.hr_rope(begin))
        causal_p = torch.full((P, P), float("-inf"), device=dev).triu(1)
        causal_s = torch.cat([torch.zeros(S, P, device=dev), torch.full((S, S), float("-inf"), device=dev).triu(1)], 1)
        rows = flex_rows.shape[1]
        fr = flex_rows - P  # Question-row indices.
        bi = torch.arange(b, device=dev)[:, None].expand(b, rows)
        tiles = {}  # (image, tile) -> [lr*lr, D]: HR tiles are computed once, only where selected.
        mask, probs_out, masks_out = None, [], []
        for i in range(c["layers"]):
            p = f"m.layers.{i}."
            qp, kp, vp = self.qkv(i, xp, cos[:P], sin[:P])  # [N, H, P, dh]
            out_p = torch.softmax(qp @ kp.transpose(-1, -2) / math.sqrt(dh) + causal_p, -1) @ vp
            qs, ks, vs = self.qkv(i, xs, cos[P:], sin[P:])  # [B, H, S, dh]
            k = torch.cat([kp[image_of], ks], 2)  # [B, H, T, dh]
            v = torch.cat([vp[image_of], vs], 2)
            scores = qs @ k.transpose(-1, -2) / math.sqrt(dh) + causal_s  # [B, H, S, T]
            out = torch.softmax(scores, -1) @ v  # [B, H, S, dh]
            next_mask = None
            if c["n_sa"] - 1 <= i <= c["layers"] - 2:
                a = torch.softmax(scores[bi, :, fr], -1)[..., begin:begin + n].sum(2)  # [B, R, n]
                probs_out.append(a)
                rb = None if random_blocks is None else random_blocks[i].reshape(b * rows, 9, 9)
                next_mask = self.select(a.reshape(b * rows, -1), [bd for bd in bands for _ in range(rows)],
                                        threshold, rb).reshape(b, rows, -1)
            if i >= c["n_sa"]:
                masks_out.append(mask)
                z, lr = c["zoom"], self.lr_side
                tile_of = mask.reshape(b, rows, z, lr, z, lr).any(3).any(4).any(1).reshape(b, -1).tolist()
                owner = image_of.tolist()
                self.hr_features(tiles, [(owner[j], ti) for j in range(b) for ti in range(z * z) if tile_of[j][ti]],
                                 high)
                kh = self.hr_grid(tiles, W(p + "self_attn.k_proj_hd.weight"), n_img).view(n_img, -1, heads, dh)
                kh = kh.transpose(1, 2)
                kh = (kh * hr_cos + self.rotate_half(kh) * hr_sin)[image_of]  # [B, H, M, dh]
                vh = self.hr_grid(tiles, W(p + "self_attn.v_proj_hd.weight"), n_img).view(n_img, -1, heads, dh)
                vh = vh.transpose(1, 2)[image_of]
                s_hr = torch.einsum("brhd,bhmd->brhm", qs[bi, :, fr], kh) / math.sqrt(dh)
                s_hr = s_hr.masked_fill(~mask[:, :, None, :], float("-inf"))
                pr = torch.softmax(torch.cat([scores[bi, :, fr], s_hr], -1), -1)  # [B, R, H, T + M]
                if collect is not None:
                    collect.setdefault("hr_probs", []).append(pr[..., t:].sum(2))
                o_r = torch.einsum("brht,bhtd->brhd", pr[..., :t], v) + \
                    torch.einsum("brhm,bhmd->brhd", pr[..., t:], vh)
                out = out.clone()
                out[bi, :, fr] = o_r
            mask = next_mask
            if i + 1 < c["layers"]:  # The prefix rows' last outputs feed nothing.
                xp = self.block(i, xp, out_p.transpose(1, 2).reshape(n_img, P, d))
            xs = self.block(i, xs, out.transpose(1, 2).reshape(b, S, d))
            if collect is not None:
                collect.setdefault("rows", []).append(xs[bi, fr])
        if collect is not None:
            collect["lr_features"], collect["tiles"] = lr_features, tiles
        xr = self.rms(xs[bi, fr], W("m.norm.weight"))
        return F.linear(xr, W("lm_head.weight")), probs_out, masks_out


def bands_of(size, lr_side):
    """(m, landscape): the LR rows (landscape) or columns (portrait) that came from square padding."""
    w, h = size
    return int(abs(w - h) // 2 / max(w, h) * lr_side), w > h


# Export to the original-LLaVA layout with the CLIP directory (tools/tiny/tiny_llava.cc does the same).

def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        arr = tensors[name].detach().contiguous().float().numpy()
        raw = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def export(net, out_dir, tokenizer_model, bos=1, eos=2, layout="flex"):
    """layout "flex": the FlexAttention checkpoint (k/v_proj_hd, "extra"), which the engine runs in flex;
    "full": the LLaVA-1.5 layout without them, which it runs in full at the tower's size (a network
    trained with threshold 255, i.e. that never saw the high-resolution view: the 336 px baseline)."""
    assert layout in ("flex", "full"), layout
    c = net.cfg
    clip = os.path.join(out_dir, "clip")
    os.makedirs(clip, exist_ok=True)
    text, vision = {}, {}
    for key, value in net.w.items():
        name = key.replace("/", ".")
        if layout == "full" and "_proj_hd." in name:
            continue
        if name.startswith("v."):
            vision["vision_model." + name[2:]] = value
        elif name.startswith("m."):
            text["model." + name[2:]] = value
        else:
            text[name] = value
    write_safetensors(os.path.join(out_dir, "model.safetensors"), text)
    write_safetensors(os.path.join(clip, "model.safetensors"), vision)
    vision_cfg = {"hidden_size": c["vision_hidden"], "intermediate_size": c["vision_intermediate"],
                  "num_hidden_layers": c["vision_layers"], "num_attention_heads": c["vision_heads"],
                  "image_size": c["image_size"], "patch_size": c["patch_size"], "hidden_act": "quick_gelu",
                  "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "projection_dim": c["vision_hidden"]}
    pre = {"image_processor_type": "CLIPImageProcessor",
           "crop_size": {"height": c["image_size"], "width": c["image_size"]},
           "size": {"shortest_edge": c["image_size"]}, "do_center_crop": True, "do_pad": True,
           "do_normalize": True, "do_resize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3}
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
              "hidden_size": c["hidden"], "intermediate_size": c["intermediate"],
              "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
              "num_key_value_heads": c["heads"], "max_position_embeddings": c["max_positions"],
              "rms_norm_eps": c["rms_eps"], "rope_theta": c["rope_theta"], "vocab_size": net.vocab,
              "bos_token_id": bos, "eos_token_id": eos, "hidden_act": "silu", "torch_dtype": "float32",
              "mm_vision_tower": "clip", "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "mm_hidden_size": c["vision_hidden"],
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
              "pad_token_id": 0}
    if layout == "flex":
        config["extra"] = {"zoom_ratio": str(c["zoom"]), "highres_size": str(c["zoom"] * c["image_size"]),
                           "lowres_size": str(c["image_size"]), "threshold": str(c["threshold"]), "warmup": "10",
                           "num_sa_layers": str(c["n_sa"])}
    for path, obj in [(os.path.join(out_dir, "config.json"), config),
                      (os.path.join(out_dir, "preprocessor_config.json"), pre),
                      (os.path.join(clip, "preprocessor_config.json"), pre),
                      (os.path.join(clip, "config.json"), {"architectures": ["CLIPModel"], "model_type": "clip",
                                                           "projection_dim": c["vision_hidden"],
                                                           "vision_config": vision_cfg})]:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
    with open(os.path.join(out_dir, "demo_config.json"), "w") as f:
        json.dump(c, f, indent=2)  # FlexNet's own config, for check_parity.py and evaluate.py.
    with open(tokenizer_model, "rb") as src, open(os.path.join(out_dir, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
