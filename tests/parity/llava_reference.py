#!/usr/bin/python3
"""An independent LLaVA-1.5 reference in plain PyTorch, for the engine's parity tests.

Written from the equations of Hugging Face transformers' LlavaForConditionalGeneration (CLIPVisionModel +
LlavaMultiModalProjector + LlamaForCausalLM), not from the C++ engine: the point is a second, simple
implementation whose bugs would not be the engine's bugs. fp32, batch 1, no KV cache: every call
recomputes the whole sequence (simplicity over speed). Needs only torch and numpy (Debian's python3-torch
1.13 and python3-numpy; run with /usr/bin/python3). The safetensors format is parsed here too.

Reads a checkpoint directory in the llava-hf layout: config.json (text_config / vision_config, Hugging
Face config defaults for absent fields) and model.safetensors (or a model.safetensors.index.json shard
set), tensor names of either transformers generation (language_model.model.* / model.language_model.*,
vision_tower.vision_model.* / vision_tower.* / model.vision_tower.*, ...).

Usage as a library:
    ref = LlavaReference("path/to/model")
    logits = ref.prompt_logits(input_ids, pixel_values)   # [T, V] fp32
    tokens = ref.greedy(input_ids, pixel_values, 32)
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
# then the raw little-endian tensor bytes (offsets relative to the end of the header).

_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
                 "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    """Returns {name: fp32 (or integer) torch tensor} for every tensor of one safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    body = memoryview(data)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        shape = info["shape"]
        dtype = info["dtype"]
        if dtype == "BF16":
            # bfloat16 is the top half of a float32: widen by shifting the bits up 16.
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _NUMPY_DTYPES:
            array = np.frombuffer(raw, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        tensors[name] = torch.from_numpy(array.reshape(shape).copy())
    return tensors


def read_checkpoint_tensors(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(os.path.join(model_dir, shard)))
    return tensors


# ---------------------------------------------------------------------------------------------------
# Configuration, with the defaults of transformers' LlamaConfig, CLIPVisionConfig and LlavaConfig.

LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                      rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
                      mlp_bias=False, tie_word_embeddings=False)
CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)
# LlavaConfig builds this CLIP ViT-L/14-336 when vision_config is absent.
LLAVA_DEFAULT_VISION = dict(CLIP_VISION_DEFAULTS, hidden_size=1024, intermediate_size=4096, patch_size=14,
                            image_size=336, num_hidden_layers=24, num_attention_heads=16)


class Config:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            raw = json.load(f)
        text = dict(LLAMA_DEFAULTS)
        text.update({k: v for k, v in (raw.get("text_config") or {}).items() if v is not None})
        if text["num_key_value_heads"] is None:
            text["num_key_value_heads"] = text["num_attention_heads"]
        if text["head_dim"] is None:
            text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
        rope = text.get("rope_parameters")  # transformers >= 5 keeps rope_theta here.
        if isinstance(rope, dict):
            if rope.get("rope_type", "default") != "default":
                raise ValueError(f"unsupported rope_parameters {rope}")
            text["rope_theta"] = rope.get("rope_theta", text["rope_theta"])
        if text["rope_scaling"]:
            raise ValueError(f"unsupported rope_scaling {text['rope_scaling']}")
        if "tie_word_embeddings" in raw:
            text["tie_word_embeddings"] = raw["tie_word_embeddings"]
        vision = dict(LLAVA_DEFAULT_VISION if raw.get("vision_config") is None else CLIP_VISION_DEFAULTS)
        vision.update({k: v for k, v in (raw.get("vision_config") or {}).items() if v is not None})
        self.text = text
        self.vision = vision
        self.image_token_index = raw.get("image_token_index", raw.get("image_token_id", 32000))
        self.projector_hidden_act = raw.get("projector_hidden_act", "gelu")
        self.vision_feature_layer = raw.get("vision_feature_layer", -2)
        self.vision_feature_select_strategy = raw.get("vision_feature_select_strategy", "default")


def activation(name, x):
    """transformers.activations.ACT2FN for the names LLaVA checkpoints use."""
    if name == "gelu":  # GELUActivation: the exact erf form.
        return F.gelu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return F.gelu(x, approximate="tanh")
    if name == "quick_gelu":  # QuickGELUActivation (CLIP).
        return x * torch.sigmoid(1.702 * x)
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unsupported activation {name}")


# ---------------------------------------------------------------------------------------------------
# Weights, under canonical names: text.* (LlamaModel), lm_head.weight, vision.* (CLIPVisionTransformer),
# projector.* (LlavaMultiModalProjector).

_PREFIXES = [  # Longest first, so that vision_tower.vision_model. wins over vision_tower.
    ("model.language_model.", "text."), ("language_model.model.", "text."),
    ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
    ("model.vision_tower.vision_model.", "vision."), ("vision_tower.vision_model.", "vision."),
    ("model.vision_tower.", "vision."), ("vision_tower.", "vision."),
    ("model.multi_modal_projector.", "projector."), ("multi_modal_projector.", "projector."),
]


def canonical_weights(tensors):
    out = {}
    for name, tensor in tensors.items():
        for prefix, canon in _PREFIXES:
            if name.startswith(prefix):
                out[canon + name[len(prefix):]] = tensor.float() if tensor.is_floating_point() else tensor
                break
    return out


# ---------------------------------------------------------------------------------------------------
# The model.

class LlavaReference:
    def __init__(self, model_dir):
        self.config = Config(model_dir)
        self.w = canonical_weights(read_checkpoint_tensors(model_dir))
        if "lm_head.weight" not in self.w:
            if not self.config.text["tie_word_embeddings"]:
                raise KeyError("checkpoint has no lm_head weight and tie_word_embeddings is false")
            self.w["lm_head.weight"] = self.w["text.embed_tokens.weight"]

    def _get(self, name):
        return self.w.get(name)  # None for absent biases.

    # CLIPVisionModel -----------------------------------------------------------------------------------
    def vision_hidden_states(self, pixel_values):
        """pixel_values [B, 3, S, S] -> CLIPEncoder's hidden_states: a list of num_hidden_layers + 1
        tensors [B, 1 + (S/p)^2, Dv], the first being the pre_layrnorm output (modeling_clip.py)."""
        vc = self.config.vision
        w = self._get
        b = pixel_values.shape[0]
        d = vc["hidden_size"]
        heads = vc["num_attention_heads"]
        dh = d // heads
        eps = vc["layer_norm_eps"]
        # CLIPVisionEmbeddings: conv (no bias) -> [B, Dv, S/p, S/p] -> [B, (S/p)^2, Dv]; CLS first; + positions.
        patches = F.conv2d(pixel_values.float(), w("vision.embeddings.patch_embedding.weight"),
                           stride=vc["patch_size"])
        patches = patches.flatten(2).transpose(1, 2)
        cls = w("vision.embeddings.class_embedding").expand(b, 1, -1)
        x = torch.cat([cls, patches], dim=1)  # [B, T, Dv]
        t = x.shape[1]
        x = x + w("vision.embeddings.position_embedding.weight")[torch.arange(t)].unsqueeze(0)
        x = F.layer_norm(x, (d,), w("vision.pre_layrnorm.weight"), w("vision.pre_layrnorm.bias"), eps)
        states = [x]
        for i in range(vc["num_hidden_layers"]):
            p = f"vision.encoder.layers.{i}."
            # CLIPEncoderLayer: pre-LN attention (bidirectional) and pre-LN MLP, each with a residual.
            h = F.layer_norm(x, (d,), w(p + "layer_norm1.weight"), w(p + "layer_norm1.bias"), eps)

            def proj(name, inp):
                return F.linear(inp, w(p + f"self_attn.{name}.weight"), w(p + f"self_attn.{name}.bias"))

            q = proj("q_proj", h).view(b, t, heads, dh).transpose(1, 2)  # [B, heads, T, dh]
            k = proj("k_proj", h).view(b, t, heads, dh).transpose(1, 2)
            v = proj("v_proj", h).view(b, t, heads, dh).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(-1, -2)) * (dh ** -0.5)  # [B, heads, T, T]
            probs = torch.softmax(scores, dim=-1)
            attn = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d)
            x = x + proj("out_proj", attn)
            h = F.layer_norm(x, (d,), w(p + "layer_norm2.weight"), w(p + "layer_norm2.bias"), eps)
            h = F.linear(h, w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"))
            h = F.linear(activation(vc["hidden_act"], h), w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"))
            x = x + h
            states.append(x)
        return states

    def image_features(self, pixel_values):
        """LlavaForConditionalGeneration.get_image_features: [B, 3, S, S] -> [B, tokens, D]."""
        states = self.vision_hidden_states(pixel_values)
        layer = self.config.vision_feature_layer
        if isinstance(layer, int):
            selected = states[layer]
        else:  # A list of layers: their hidden states concatenated on the feature axis.
            selected = torch.cat([states[i] for i in layer], dim=-1)
        strategy = self.config.vision_feature_select_strategy
        if strategy == "default":
            selected = selected[:, 1:]  # Drop CLS.
        elif strategy != "full":
            raise ValueError(f"unsupported vision_feature_select_strategy {strategy}")
        w = self._get
        h = F.linear(selected, w("projector.linear_1.weight"), w("projector.linear_1.bias"))
        h = activation(self.config.projector_hidden_act, h)
        return F.linear(h, w("projector.linear_2.weight"), w("projector.linear_2.bias"))

    # Merge -------------------------------------------------------------------------------------------
    def input_embeddings(self, input_ids, pixel_values, num_prompt_tokens=None):
        """input_ids [T] -> [T, D]. Rows of the first num_prompt_tokens positions whose id is the image
        token take the image features in order (masked_scatter in HF); later positions (generated
        tokens) are plain embeddings, as in HF generate, where pixel_values only reach the first step."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        table = self.w["text.embed_tokens.weight"]
        lookup = torch.where(ids < table.shape[0], ids, torch.zeros_like(ids))  # Out-of-table ids -> 0.
        embeds = table[lookup].clone()  # [T, D]
        if pixel_values is None:
            return embeds
        n = len(ids) if num_prompt_tokens is None else num_prompt_tokens
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:n] = ids[:n] == self.config.image_token_index
        features = self.image_features(pixel_values).reshape(-1, embeds.shape[1])
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(f"{int(mask.sum())} image tokens in the prompt but {features.shape[0]} "
                             "image features")
        embeds[mask] = features
        return embeds

    # LlamaForCausalLM --------------------------------------------------------------------------------
    def rms_norm(self, x, weight):
        # LlamaRMSNorm: statistics in fp32, cast back to the input dtype, then times the weight.
        eps = self.config.text["rms_norm_eps"]
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        return weight * (x32 * torch.rsqrt(variance + eps)).to(x.dtype)

    def rotary(self, t):
        """LlamaRotaryEmbedding (default rope type): cos, sin [T, Dh] for positions 0..T-1."""
        tc = self.config.text
        dh = tc["head_dim"]
        inv_freq = 1.0 / (tc["rope_theta"] ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
        positions = torch.arange(t, dtype=torch.float32)
        freqs = (inv_freq[:, None] @ positions[None, :]).transpose(0, 1)  # [T, Dh/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, Dh]
        return emb.cos(), emb.sin()

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

    def decoder_logits(self, embeds):
        """LlamaForCausalLM over inputs_embeds [T, D] at positions 0..T-1 -> logits [T, V] (fp32)."""
        tc = self.config.text
        w = self._get
        t, d = embeds.shape
        h_q = tc["num_attention_heads"]
        h_kv = tc["num_key_value_heads"]
        dh = tc["head_dim"]
        cos, sin = self.rotary(t)
        causal = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)  # [T, T], 0 on and below diag.
        x = embeds
        for i in range(tc["num_hidden_layers"]):
            p = f"text.layers.{i}."
            h = self.rms_norm(x, w(p + "input_layernorm.weight"))
            q = F.linear(h, w(p + "self_attn.q_proj.weight"), w(p + "self_attn.q_proj.bias"))
            k = F.linear(h, w(p + "self_attn.k_proj.weight"), w(p + "self_attn.k_proj.bias"))
            v = F.linear(h, w(p + "self_attn.v_proj.weight"), w(p + "self_attn.v_proj.bias"))
            q = q.view(t, h_q, dh).transpose(0, 1)  # [H, T, Dh]
            k = k.view(t, h_kv, dh).transpose(0, 1)  # [KV, T, Dh]
            v = v.view(t, h_kv, dh).transpose(0, 1)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            # repeat_kv: KV head j serves query heads j*g .. j*g+g-1.
            groups = h_q // h_kv
            k = k[:, None].expand(h_kv, groups, t, dh).reshape(h_q, t, dh)
            v = v[:, None].expand(h_kv, groups, t, dh).reshape(h_q, t, dh)
            scores = torch.matmul(q, k.transpose(1, 2)) * (dh ** -0.5) + causal  # [H, T, T]
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            attn = torch.matmul(probs, v).transpose(0, 1).reshape(t, h_q * dh)  # [T, H Dh]
            x = x + F.linear(attn, w(p + "self_attn.o_proj.weight"), w(p + "self_attn.o_proj.bias"))
            h = self.rms_norm(x, w(p + "post_attention_layernorm.weight"))
            gate = F.linear(h, w(p + "mlp.gate_proj.weight"), w(p + "mlp.gate_proj.bias"))
            up = F.linear(h, w(p + "mlp.up_proj.weight"), w(p + "mlp.up_proj.bias"))
            act = activation(tc["hidden_act"], gate) * up
            x = x + F.linear(act, w(p + "mlp.down_proj.weight"), w(p + "mlp.down_proj.bias"))
        x = self.rms_norm(x, w("text.norm.weight"))
        return F.linear(x, w("lm_head.weight")).float()

    # Entry points ------------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_logits(self, input_ids, pixel_values):
        """Logits [T, V] of every prompt position."""
        return self.decoder_logits(self.input_embeddings(input_ids, pixel_values))

    @torch.no_grad()
    def greedy(self, input_ids, pixel_values, max_new_tokens):
        """Greedy continuation, every step recomputed from scratch. Returns (tokens, margins): the argmax
        ids and, per step, the top-1 minus top-2 logit (how far each choice is from a tie)."""
        ids = list(input_ids)
        tokens, margins = [], []
        for _ in range(max_new_tokens):
            last = self.decoder_logits(self.input_embeddings(ids, pixel_values, len(input_ids)))[-1]
            top2 = torch.topk(last, 2).values
            token = int(torch.argmax(last))
            tokens.append(token)
            margins.append(float(top2[0] - top2[1]))
            ids.append(token)
        return tokens, margins


def main():
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    parser.add_argument("--seed", type=int, default=0, help="seed of random normal pixel_values")
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    ref = LlavaReference(args.model_dir)
    s = ref.config.vision["image_size"]
    pixels = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((1, 3, s, s), np.float32))
    ids = [int(i) for i in args.ids.split(",")]
    logits = ref.prompt_logits(ids, pixels)
    print("last-position top-5:", torch.topk(logits[-1], 5))
    print("greedy:", ref.greedy(ids, pixels, args.new_tokens)[0])


if __name__ == "__main__":
    main()
