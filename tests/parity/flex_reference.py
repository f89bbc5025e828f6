#!/usr/bin/python3
"""A straightforward FlexAttention reference in plain PyTorch (fp32, batch 1), written from
../shared/flexattention.md (the authors' UMass-Foundation-Model/FlexAttention@f814be5), for the engine's
flex parity tests. Full attention matrices; the last row's keys are the ordinary keys concatenated with the
selected high-resolution keys, and those HR keys/values are recomputed from the raw features every step, as
the authors' code does. Generation keeps the per-layer keys/values of earlier rows (HF generate's KV cache,
which the authors' code runs with): a row's keys are those of the step where it was the newest row, whose
hidden state had attended to the HR keys. (Recomputing the whole sequence every step would instead treat
that row as an ordinary row and give different numbers from the released model's generate.) Reads the original-LLaVA checkpoint layout (model.*,
lm_head.*, model.mm_projector.{0,2}.*, the CLIP directory's vision_model.*) with the "extra" dict.

    ref = FlexReference("path/to/model")
    high, low, (w, h) = ref.preprocess("image.png")
    out = ref.generate(input_ids, high, low, (w, h), steps=32, threshold=48)
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llava_reference import activation, read_checkpoint_tensors  # noqa: E402

IMAGE_TOKEN = -200  # llava/constants.py IMAGE_TOKEN_INDEX


def expand2square(img, background):  # llava/mm_utils.py
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class FlexReference:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.cfg = cfg
        extra = cfg["extra"]
        self.zoom = int(extra["zoom_ratio"])
        self.highres = int(extra["highres_size"])
        self.lowres = int(extra["lowres_size"])
        self.threshold = int(extra.get("threshold", 64))
        self.n_sa = int(extra.get("num_sa_layers", 9))
        clip_dir = os.path.join(model_dir, cfg["mm_vision_tower"])
        with open(os.path.join(clip_dir, "config.json")) as f:
            self.vision = json.load(f)["vision_config"]
        with open(os.path.join(clip_dir, "preprocessor_config.json")) as f:
            pre = json.load(f)
        self.mean, self.std = pre["image_mean"], pre["image_std"]
        self.w = {k: (v.float() if v.is_floating_point() else v) for k, v in read_checkpoint_tensors(model_dir).items()}
        self.w.update({k: v.float() for k, v in read_checkpoint_tensors(clip_dir).items()})
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads", self.heads)
        self.dh = cfg["hidden_size"] // self.heads
        self.eps = cfg["rms_norm_eps"]
        self.theta = cfg.get("rope_theta", 10000.0)

    # Images (flexattention.md §1) -------------------------------------------------------------------
    def preprocess(self, path):
        """expand2square with the mean colour, CLIP resize (shortest edge, PIL bicubic) + centre crop to
        highres, /255 and normalise; LR = antialiased bilinear downsample of the normalised tensor."""
        img = Image.open(path).convert("RGB")
        size = img.size
        img = expand2square(img, tuple(int(x * 255) for x in self.mean))
        w, h = img.size
        s = self.highres
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        arr = np.array(img.resize((nw, nh), resample=Image.BICUBIC))
        top, left = (nh - s) // 2, (nw - s) // 2
        arr = arr[top:top + s, left:left + s]
        x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        high = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]  # [1, 3, 1008, 1008]
        low = F.interpolate(high, size=self.lowres, mode="bilinear", antialias=True)  # llava_arch.py:222
        return high, low, size

    def clip_features(self, pixels):
        """CLIP hidden state -2 without CLS, then mm_projector: [B, 3, S, S] -> [B, (S/p)^2, D]."""
        v, w = self.vision, self.w
        d, heads = v["hidden_size"], v["num_attention_heads"]
        dh, eps = d // heads, v.get("layer_norm_eps", 1e-5)
        x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"], stride=v["patch_size"])
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([w["vision_model.embeddings.class_embedding"].expand(b, 1, -1), x], 1)
        x = x + w["vision_model.embeddings.position_embedding.weight"][None]
        x = F.layer_norm(x, (d,), w["vision_model.pre_layrnorm.weight"], w["vision_model.pre_layrnorm.bias"], eps)
        t = x.shape[1]
        for i in range(v["num_hidden_layers"] - 1):  # hidden_states[-2]
            p = f"vision_model.encoder.layers.{i}."
            h = F.layer_norm(x, (d,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)
            proj = lambda n, z: F.linear(z, w[p + f"self_attn.{n}.weight"], w[p + f"self_attn.{n}.bias"])
            q, k, vv = (proj(n, h).view(b, t, heads, dh).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
            a = torch.softmax(q @ k.transpose(-1, -2) * dh ** -0.5, -1) @ vv
            x = x + proj("out_proj", a.transpose(1, 2).reshape(b, t, d))
            h = F.layer_norm(x, (d,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
            h = F.linear(activation(v["hidden_act"], F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                         w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
            x = x + h
        x = x[:, 1:]
        h = F.gelu(F.linear(x, w["model.mm_projector.0.weight"], w["model.mm_projector.0.bias"]))
        return F.linear(h, w["model.mm_projector.2.weight"], w["model.mm_projector.2.bias"])

    def image_features(self, high, low):
        """LR features [576, D]; HR features [5184, D]: 9 tiles of 336, row-major, stitched 72x72."""
        s, z = self.lowres, self.zoom
        tiles = [high[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in range(z) for j in range(z)]
        hr = self.clip_features(torch.cat(tiles, 0))  # [9, 576, D]
        side = int(hr.shape[1] ** 0.5)
        grid = torch.zeros(z * side, z * side, hr.shape[-1])
        for n in range(z * z):
            i, j = divmod(n, z)
            grid[i * side:(i + 1) * side, j * side:(j + 1) * side] = hr[n].view(side, side, -1)
        return self.clip_features(low)[0], grid.reshape(-1, hr.shape[-1])

    # Decoder ------------------------------------------------------------------------------------------
    def rms(self, x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope(self, t):
        inv = 1.0 / (self.theta ** (torch.arange(0, self.dh, 2).float() / self.dh))
        freqs = torch.outer(torch.arange(t).float(), inv)
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos(), emb.sin()

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat([-x[..., half:], x[..., :half]], -1)

    def select(self, probs_last, begin, size, threshold):
        """flexattention.md §3 (modeling_llama.py:523-572): returns the 72x72 boolean mask, flattened,
        and the smallest |255 a - threshold| (how near the selection came to flipping)."""
        lr = int(round((self.lowres // self.vision["patch_size"])))
        a = probs_last[:, begin:begin + lr * lr].sum(0).reshape(1, lr, lr).clone()  # sum over heads
        w, h = size
        margin = abs(w - h) // 2
        m = int(margin / max(w, h) * lr)
        if m:
            if w > h:
                a[:, :m, :] = 0.0
                a[:, -m:, :] = 0.0
            else:
                a[:, :, :m] = 0.0
                a[:, :, -m:] = 0.0
        a = a.flatten(1)
        lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
        hr = lr * self.zoom
        if float(hi) == float(lo):  # 0/0 in the reference: nothing selected.
            return torch.zeros(hr * hr, dtype=torch.bool), float("inf")
        a = (a - lo) / (hi - lo)
        scores = a * 255
        margin_to_threshold = float((scores - threshold).abs().min())
        sel = (scores > threshold).float().reshape(1, 1, lr, lr)
        sel = F.adaptive_max_pool2d(sel, (9, 9))
        sel = F.interpolate(sel, size=hr, mode="nearest").bool()
        return sel.flatten(), margin_to_threshold

    def forward_last(self, embeds, cache, begin, size, hr_feats, hr_cos, hr_sin, threshold):
        """Forward of the new rows embeds [t, D] after the cached ones (cache: per layer [k, v], extended
        in place); returns the last row's logits, the block masks each FA layer used, and the selection
        margins."""
        t, _ = embeds.shape
        start = cache[0][0].shape[1] if cache else 0
        cos, sin = self.rope(start + t)
        cos, sin = cos[start:], sin[start:]
        causal = torch.full((t, start + t), float("-inf")).triu(start + 1)
        g = self.heads // self.kv_heads
        x = embeds
        mask = None
        masks, margins = [], []
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = F.linear(h, self.w[p + "self_attn.q_proj.weight"]).view(t, self.heads, self.dh).transpose(0, 1)
            k = F.linear(h, self.w[p + "self_attn.k_proj.weight"]).view(t, self.kv_heads, self.dh).transpose(0, 1)
            v = F.linear(h, self.w[p + "self_attn.v_proj.weight"]).view(t, self.kv_heads, self.dh).transpose(0, 1)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            if len(cache) <= i:
                cache.append([k[:, :0], v[:, :0]])
            cache[i] = [torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)]
            k, v = cache[i]
            k = k.repeat_interleave(g, 0)
            v = v.repeat_interleave(g, 0)
            scores = q @ k.transpose(1, 2) / self.dh ** 0.5 + causal  # [H, T, T]
            probs = torch.softmax(scores, -1, dtype=torch.float32)
            out = probs @ v  # [H, T, Dh]
            if i >= self.n_sa:
                # The last row also attends to the selected HR keys, recomputed from the raw features.
                sel = mask.nonzero().flatten()
                masks.append(mask)
                kh = F.linear(hr_feats[sel], self.w[p + "self_attn.k_proj_hd.weight"])
                vh = F.linear(hr_feats[sel], self.w[p + "self_attn.v_proj_hd.weight"])
                kh = kh.view(-1, self.kv_heads, self.dh).transpose(0, 1)
                vh = vh.view(-1, self.kv_heads, self.dh).transpose(0, 1)
                kh = kh * hr_cos[sel] + self.rotate_half(kh) * hr_sin[sel]
                kh = kh.repeat_interleave(g, 0)
                vh = vh.repeat_interleave(g, 0)
                keys = torch.cat([k, kh], 1)
                values = torch.cat([v, vh], 1)
                s_last = q[:, -1:] @ keys.transpose(1, 2) / self.dh ** 0.5  # [H, 1, T + M]
                out[:, -1:] = torch.softmax(s_last, -1, dtype=torch.float32) @ values
            if self.n_sa - 1 <= i <= self.layers - 2:
                mask, margin = self.select(probs[:, -1], begin, size, threshold)
                margins.append(margin)
            attn = out.transpose(0, 1).reshape(t, -1)
            x = x + F.linear(attn, self.w[p + "self_attn.o_proj.weight"])
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            gate = F.linear(h, self.w[p + "mlp.gate_proj.weight"])
            up = F.linear(h, self.w[p + "mlp.up_proj.weight"])
            x = x + F.linear(F.silu(gate) * up, self.w[p + "mlp.down_proj.weight"])
        x = self.rms(x[-1:], self.w["model.norm.weight"])
        return F.linear(x, self.w["lm_head.weight"])[0], masks, margins

    @torch.no_grad()
    def generate(self, input_ids, high, low, size, steps, threshold=None):
        threshold = self.threshold if threshold is None else threshold
        lr_feats, hr_feats = self.image_features(high, low)
        n = lr_feats.shape[0]
        begin = input_ids.index(IMAGE_TOKEN)
        assert input_ids[begin:begin + n] == [IMAGE_TOKEN] * n
        # HR RoPE: the LR positions' cos/sin as a 24x24 grid, bicubic-upsampled to 72x72 (llava_llama.py:59-77).
        cos, sin = self.rope(begin + n)
        lr = int(n ** 0.5)
        hr = lr * self.zoom
        up = lambda c: F.interpolate(c[begin:begin + n].reshape(lr, lr, -1).permute(2, 0, 1)[None], size=hr,
                                     mode="bicubic").flatten(2)[0].transpose(0, 1)
        hr_cos, hr_sin = up(cos), up(sin)
        table = self.w["model.embed_tokens.weight"]
        ids = list(input_ids)
        logits_all, tokens, masks_all, margins_all = [], [], [], []
        cache = []
        embeds = table[torch.tensor([max(i, 0) for i in ids])].clone()
        embeds[begin:begin + n] = lr_feats
        for _ in range(steps):
            logits, masks, margins = self.forward_last(embeds, cache, begin, size, hr_feats, hr_cos, hr_sin,
                                                       threshold)
            token = int(torch.argmax(logits))
            top2 = torch.topk(logits, 2).values
            logits_all.append(logits)
            tokens.append(token)
            masks_all.append(masks)
            margins_all.append(margins + [float(top2[0] - top2[1])])
            ids.append(token)
            embeds = table[torch.tensor([token])]
        return dict(logits=torch.stack(logits_all), tokens=tokens, masks=masks_all, margins=margins_all,
                    hr_side=hr)
