#!/usr/bin/env python3
"""Independent PyTorch reference for the Llama-family engines (Llama, SmolLM2, Qwen2): issue 24.

A plain float64 Llama decoder written from Hugging Face transformers' modeling code (never from the
project's TypeScript), that builds a random-weight Hugging Face checkpoint at a real model's shape
and writes reference vectors (logits, prompt-tuning loss and gradient, KV-cached greedy decoding, a
mixed batch) computed from exactly the values stored in that checkpoint.

Run it with Debian's Python (python3-torch, numpy; transformers and safetensors are NOT needed):

  /usr/bin/python3 test/python/llama_reference.py --shape NAME --out DIR
      [--layers K] [--vocab V] [--dtype F32|BF16|F16] [--shards N] [--seed S]
  /usr/bin/python3 test/python/llama_reference.py --self-test
  /usr/bin/python3 test/python/llama_reference.py --list-shapes

Exit status 0 on success; 1 when a self-check fails; 2 on a usage error.

Shapes (--shape):
  smollm2-135m  llama: 30 layers, hidden 576, 9 heads, 3 KV heads (head_dim 64), intermediate 1536,
                vocab 49152, rope_theta 100000, rms_norm_eps 1e-5, max_position_embeddings 8192,
                tied embeddings, no biases, bos = eos = 0 (HuggingFaceTB/SmolLM2-135M's config.json).
  qwen2.5-0.5b  qwen2: 24 layers, hidden 896, 14 heads, 2 KV heads (head_dim 64), intermediate 4864,
                vocab 151936, rope_theta 1e6, rms_norm_eps 1e-6, max_position_embeddings 32768, tied,
                q/k/v biases (o_proj none), bos = eos = 151643, sliding_window 32768 with
                use_sliding_window false (Qwen/Qwen2.5-0.5B's config.json; it has no attention_bias key).
  llama3-tiny   llama: 2 layers, hidden 64, 4 heads, 2 KV heads (head_dim 16), intermediate 128,
                vocab 256, rope_theta 500000, rope_scaling {rope_type llama3, factor 32,
                low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192},
                max_position_embeddings 131072, untied lm_head. Its 8 RoPE frequencies fall in all three
                llama3 bands: 4 high (unchanged), 1 medium (smoothed), 3 low (divided by 32).
  tiny          llama: 2 layers, hidden 32, 4 heads, 2 KV heads (head_dim 8), intermediate 64,
                vocab 128, rope_theta 10000, tied, no biases.
  tiny-bias     tiny with attention_bias true, untied. NOTE: Hugging Face Llama's attention_bias puts a
                bias on q, k, v AND o_proj (modeling_llama.py:245-256 below), unlike Qwen2.
  tiny-qwen2    tiny as model_type qwen2: q/k/v biases, no o_proj bias, tied.
  tiny-headdim  tiny with head_dim 16 != hidden/heads (8): q_proj [64, 32], o_proj [32, 64], untied.
--layers K cuts num_hidden_layers (the first K layers are the same tensors as the full model's:
every tensor has its own generator seeded from --seed and its name). --vocab V cuts vocab_size;
bos/eos ids >= V become V - 1. The engine tests use the real hidden/heads/KV-heads widths (what
exercises GQA and head_dim) with few layers and a small vocabulary, e.g.
  smollm2-135m --layers 2 --vocab 2048   and   qwen2.5-0.5b --layers 2 --vocab 2048.

Files written in DIR:
  config.json                      Hugging Face config (model_type, architectures, hidden_size,
                                   intermediate_size, num_hidden_layers, num_attention_heads,
                                   num_key_value_heads, head_dim (smollm2 and tiny-headdim only),
                                   rms_norm_eps, rope_theta, rope_scaling (null or the llama3 dict),
                                   max_position_embeddings, vocab_size, tie_word_embeddings,
                                   attention_bias (llama only; qwen2 has biases without the key),
                                   mlp_bias, hidden_act "silu", bos_token_id, eos_token_id,
                                   torch_dtype float32|bfloat16|float16, ...).
  model.safetensors                (--shards 1, the default) or
  model-0000k-of-0000N.safetensors + model.safetensors.index.json ({"metadata": {"total_size"},
                                   "weight_map": {tensor: file}}) for --shards N > 1.
      Tensors (Hugging Face names, nn.Linear layout [out_features, in_features], dtype --dtype):
        model.embed_tokens.weight                      [V, C]
        model.layers.{i}.input_layernorm.weight        [C]
        model.layers.{i}.self_attn.q_proj.weight       [H*D, C]    (+ .bias [H*D] when biased)
        model.layers.{i}.self_attn.k_proj.weight       [Hkv*D, C]  (+ .bias [Hkv*D] when biased)
        model.layers.{i}.self_attn.v_proj.weight       [Hkv*D, C]  (+ .bias [Hkv*D] when biased)
        model.layers.{i}.self_attn.o_proj.weight       [C, H*D]    (+ .bias [C]: llama attention_bias only)
        model.layers.{i}.post_attention_layernorm.weight [C]
        model.layers.{i}.mlp.gate_proj.weight          [I, C]
        model.layers.{i}.mlp.up_proj.weight            [I, C]
        model.layers.{i}.mlp.down_proj.weight          [C, I]
        model.norm.weight                              [C]
        lm_head.weight                                 [V, C]      (only when not tied)
      Init: embeddings N(0, 0.02); linear weights N(0, 1/fan_in) (std 1/sqrt(fan_in), so attention
      scores are O(1) and RoPE/GQA mistakes show in the logits; 0.02 everywhere gives nearly uniform
      attention at these widths); biases N(0, 0.2^2); norm weights 1 + N(0, 0.1^2).
  reference.safetensors            the vectors below; F32 floats (computed in float64 from the stored
                                   weights and the F32 inputs given here, then rounded to F32), I32
                                   ints. __metadata__: shape, dtype, seed, layers, vocab, compute
                                   "float64", K (decode steps), eos_token_id.

Reference tensors (C = hidden_size, V = vocab_size, D = head_dim). Sequences are packed back to back
in rows; each sequence is causal and alone (no attention across sequences), positions 0..len-1. In
*.input_ids an id < V is a token (embedding = model.embed_tokens.weight[id], widened to F32) and an
id >= V is a virtual (prompt-table) row: embedding = that section's table[id - V].
  rope.inv_freq        F32 [D/2]    inverse frequencies after rope_scaling (llama3) if any
  logits.input_ids     I32 [N]      3 plain-token sequences (lengths 7, 1, 24; llama3-tiny 7, 1, 120)
  logits.lengths       I32 [3]
  logits.inputs_embeds F32 [N, C]   the engine's input (embed_tokens rows)
  logits.out           F32 [N, V]   logits at every row
  grad.table           F32 [P, C]   one prompt table (P = 4 virtual rows), shared by both sequences
  grad.input_ids       I32 [N]      2 sequences: V+0..V+P-1, then prompt tokens, then answer tokens
                                   (prompt 5 + answer 3; prompt 2 + answer 2)
  grad.lengths         I32 [2]
  grad.inputs_embeds   F32 [N, C]
  grad.loss_rows       I32 [R]      packed row before each answer token (R = 5)
  grad.targets         I32 [R]      the answer token that row predicts
  grad.loss            F32 [1]      mean cross-entropy over the R rows (weights frozen)
  grad.grad            F32 [N, C]   d loss / d inputs_embeds, every row (zero after the last loss row
                                   of each sequence)
  grad.table_grad      F32 [P, C]   d loss / d table (sum of grad.grad's virtual rows)
  decode.prompt_ids    I32 [L]      2 prompts packed (lengths 6, 3)
  decode.prompt_lengths I32 [2]
  decode.prompt_embeds F32 [L, C]
  decode.tokens        I32 [2, K]   greedy tokens (K = 5), argmax over all V, no stop at EOS
  decode.logits        F32 [2, K, V] logits each token was chosen from: step 0 is the prefill's last
                                   row, step s the row fed token s-1 (KV cache); asserted here to equal
                                   the no-cache forward over prompt + tokens[:-1]
  decode.margin        F32 [2, K]   top-1 minus top-2 logit per step (near-tie guard for low precision)
  mixed.tables         F32 [T, C]   3 prompt tables of 3, 0 and 5 rows, concatenated (T = 8)
  mixed.table_lengths  I32 [3]
  mixed.input_ids      I32 [N]      each sequence: its table's rows (V + offset into mixed.tables),
                                   then 4, 6 and 2 tokens
  mixed.lengths        I32 [3]      7, 6, 7
  mixed.inputs_embeds  F32 [N, C]
  mixed.last_rows      I32 [3]      packed row of each sequence's last row
  mixed.logits         F32 [3, V]   logits at those rows; asserted here to equal each sequence run
                                   alone
The loss is Hugging Face's causal-LM loss: labels shifted so a row predicts the next token, mean
cross-entropy over rows whose label is not -100 (loss/loss_utils.py:45-68 below); with PEFT prompt
tuning only answer tokens carry labels, so it is the mean over grad.loss_rows.

What each part follows (Hugging Face transformers, read through the code-search tool):
  [L] src/transformers/models/llama/modeling_llama.py @ 5dd4a63548857797727ae73eeb6a6e886ea02a3e
      (v4.49-era: head_dim from config, scaling = head_dim**-0.5, eager_attention_forward)
  [R] src/transformers/modeling_rope_utils.py @ ef46806472a64b0013ed413781e3afed82bfa047
  [Q] src/transformers/models/qwen2/modeling_qwen2.py @ 63bb723747035466e5339aea864b133f709b067d
  [X] src/transformers/loss/loss_utils.py @ 0114da07ec0e101b420a923dedeb6032b6ac3a44
  RMSNorm                 [L]:69-74   x * rsqrt(mean(x^2) + eps), times weight
  default inv_freq        [R]:55-68   1 / theta^(arange(0, D, 2) / D), D = head_dim ([R]:61-62)
  llama3 inv_freq         [R]:305-345 wavelen bands, smooth interpolation
  cos/sin                 [L]:126-135 freqs = inv_freq x positions; emb = cat(freqs, freqs)
                          (attention_scaling is 1.0 for default and llama3: [R]:64, [R]:325)
  rotate_half             [L]:144-148 cat(-x2, x1) over the two halves of head_dim (not interleaved)
  apply_rotary_pos_emb    [L]:173-174 q*cos + rotate_half(q)*sin, same for k
  q/k/v/o projections     [L]:239-256 head_dim, scaling = head_dim**-0.5, bias=attention_bias on all
                          four; [Q]:129-137 Qwen2: q/k/v bias=True, o_proj bias=False
  attention               [L]:270-275 view/transpose/rope; [L]:206-229 eager_attention_forward:
                          repeat_kv, q k^T * scaling + causal mask, softmax, @ v; [L]:303-304 o_proj
  repeat_kv               [L]:194-203 KV head j serves query heads j*n_rep .. j*n_rep+n_rep-1
  causal mask             [L]:727-733 min_dtype above the diagonal (here -inf, per packed sequence)
  KV cache                [L]:277-280 rotated keys and values appended; queries attend to all cached
  decoder layer           [L]:331-353 pre-norm residual attention, then pre-norm residual MLP
  MLP                     [L]:189-190 down(silu(gate(x)) * up(x)) (mlp_bias false: [L]:184-186)
  model                   [L]:549-550 embeddings (or inputs_embeds); [L]:561-562 positions from 0;
                          [L]:571 shared cos/sin; [L]:611 final norm
  lm_head                 [L]:761, [L]:857; tied to embed_tokens when tie_word_embeddings
                          ([L]:753 _tied_weights_keys = ["lm_head.weight"])
  causal-LM loss          [X]:45-68 (shift at [X]:57-60, mean cross-entropy at [X]:36)

Precision: every weight is stored in --dtype, read back as the stored (rounded) values and widened
to float64; inputs are the F32 values written to reference.safetensors; the whole forward/backward
runs in float64 (cos/sin too: Hugging Face computes them in float32, a difference near 1e-7
relative); results are rounded to F32 on writing.
"""
import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Shapes


def _llama(**kw):
    base = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "rope_scaling": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
    }
    base.update(kw)
    return base


def _qwen2(**kw):
    base = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "rope_scaling": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "use_sliding_window": False,
    }
    base.update(kw)
    return base


TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
            max_position_embeddings=256, vocab_size=128, bos_token_id=1, eos_token_id=2)

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M config.json (as quoted in public copies; see the report).
    "smollm2-135m": _llama(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, initializer_range=0.041666666666666664),
    # Qwen/Qwen2.5-0.5B config.json.
    "qwen2.5-0.5b": _qwen2(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, vocab_size=151936, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151643, sliding_window=32768, max_window_layers=24),
    "llama3-tiny": _llama(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        max_position_embeddings=131072, vocab_size=256, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2),
    "tiny": _llama(**TINY, tie_word_embeddings=True),
    "tiny-bias": _llama(**TINY, tie_word_embeddings=False, attention_bias=True),
    "tiny-qwen2": _qwen2(**TINY, tie_word_embeddings=True, sliding_window=256,
                         max_window_layers=2),
    "tiny-headdim": _llama(**TINY, head_dim=16, tie_word_embeddings=False),
}

# Per-shape lengths of the logits section (llama3-tiny: one long sequence so that positions reach
# where the scaled low/medium frequency bands turn by a visible angle).
LOGITS_LENGTHS = {"llama3-tiny": [7, 1, 120]}
DEFAULT_LOGITS_LENGTHS = [7, 1, 24]
GRAD_P = 4
GRAD_SEQS = [(5, 3), (2, 2)]  # (prompt tokens, answer tokens) after the P virtual rows
DECODE_PROMPTS = [6, 3]
DECODE_K = 5
MIXED_P = [3, 0, 5]
MIXED_TOKENS = [4, 6, 2]

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
TORCH_DTYPE_NAME = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def make_config(shape, layers=None, vocab=None, dtype="F32"):
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")
    cfg = json.loads(json.dumps(SHAPES[shape]))
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers must be >= 1: got {layers}")
        cfg["num_hidden_layers"] = layers
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = layers
    if vocab is not None:
        if vocab < 8:
            raise ValueError(f"--vocab must be >= 8: got {vocab}")
        cfg["vocab_size"] = vocab
        for key in ("bos_token_id", "eos_token_id"):
            if cfg[key] >= vocab:
                cfg[key] = vocab - 1
    cfg["torch_dtype"] = TORCH_DTYPE_NAME[dtype]
    return cfg


def head_dim_of(cfg):
    # [L]:239 getattr(config, "head_dim", hidden_size // num_attention_heads)
    hd = cfg.get("head_dim")
    return hd if hd is not None else cfg["hidden_size"] // cfg["num_attention_heads"]


def bias_flags(cfg):
    """(q/k/v biased, o_proj biased). [L]:245-256 Llama: bias=config.attention_bias on q, k, v and
    o_proj. [Q]:134-137 Qwen2: q/k/v bias=True, o_proj bias=False, whatever attention_bias says."""
    if cfg["model_type"] == "qwen2":
        return True, False
    b = bool(cfg.get("attention_bias", False))
    return b, b


# ---------------------------------------------------------------------------------------------
# Weights


def tensor_specs(cfg):
    """[(name, shape, kind)] in Hugging Face's order; kind picks the init."""
    C, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    qkv_bias, o_bias = bias_flags(cfg)
    specs = [("model.embed_tokens.weight", [V, C], "embed")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs.append((p + "input_layernorm.weight", [C], "norm"))
        for proj, out in (("q", H * D), ("k", Hkv * D), ("v", Hkv * D)):
            specs.append((p + f"self_attn.{proj}_proj.weight", [out, C], "linear"))
            if qkv_bias:
                specs.append((p + f"self_attn.{proj}_proj.bias", [out], "bias"))
        specs.append((p + "self_attn.o_proj.weight", [C, H * D], "linear"))
        if o_bias:
            specs.append((p + "self_attn.o_proj.bias", [C], "bias"))
        specs.append((p + "post_attention_layernorm.weight", [C], "norm"))
        specs.append((p + "mlp.gate_proj.weight", [I, C], "linear"))
        specs.append((p + "mlp.up_proj.weight", [I, C], "linear"))
        specs.append((p + "mlp.down_proj.weight", [C, I], "linear"))
    specs.append(("model.norm.weight", [C], "norm"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", [V, C], "linear"))
    return specs


def _generator(seed, name):
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**62))


def init_weights(cfg, seed, dtype="F32"):
    """{name: tensor in the stored dtype}: what the checkpoint holds, bit for bit."""
    out = {}
    for name, shape, kind in tensor_specs(cfg):
        g = _generator(seed, name)
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind == "embed":
            x = x * 0.02
        elif kind == "linear":
            x = x * (1.0 / math.sqrt(shape[1]))
        elif kind == "bias":
            x = x * 0.2
        else:  # norm
            x = 1.0 + 0.1 * x
        out[name] = x.to(DTYPES[dtype]).contiguous()
    return out


class Weights:
    """float64 views of the stored weights (cached when small; widened on use when large)."""

    def __init__(self, stored, cfg):
        self.stored = stored
        self.cfg = cfg
        self.cache = {} if sum(t.numel() for t in stored.values()) <= 50_000_000 else None

    def __getitem__(self, name):
        if name == "lm_head.weight" and self.cfg["tie_word_embeddings"]:
            name = "model.embed_tokens.weight"  # [L]:753 tied lm_head
        if self.cache is None:
            return self.stored[name].double()
        t = self.cache.get(name)
        if t is None:
            t = self.cache[name] = self.stored[name].double()
        return t

    def get(self, name):
        return self[name] if name in self.stored else None


# ---------------------------------------------------------------------------------------------
# The model (float64)


def default_inv_freq(cfg):
    # [R]:55-68 _compute_default_rope_parameters: base = rope_theta, dim = head_dim ([R]:61-62),
    # inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  [R]:67
    dim = head_dim_of(cfg)
    return 1.0 / (cfg["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).double() / dim))


def llama3_inv_freq(cfg):
    # [R]:305-345 _compute_llama3_parameters
    inv_freq = default_inv_freq(cfg)  # [R]:325
    rs = cfg["rope_scaling"]
    factor = rs["factor"]  # [R]:327
    low_freq_factor = rs["low_freq_factor"]  # [R]:328
    high_freq_factor = rs["high_freq_factor"]  # [R]:329
    old_context_len = rs["original_max_position_embeddings"]  # [R]:330
    low_freq_wavelen = old_context_len / low_freq_factor  # [R]:332
    high_freq_wavelen = old_context_len / high_freq_factor  # [R]:333
    wavelen = 2 * math.pi / inv_freq  # [R]:335
    # wavelen > low_freq_wavelen: divide by factor  [R]:338
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    # otherwise interpolate with a smooth factor  [R]:340-343
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def inv_freq_of(cfg):
    rs = cfg.get("rope_scaling")
    # [L]:87-90 rope_type from rope_scaling["rope_type"] (or the older "type"), else "default"
    rope_type = "default" if rs is None else rs.get("rope_type", rs.get("type"))
    if rope_type == "default":
        return default_inv_freq(cfg)
    if rope_type == "llama3":
        return llama3_inv_freq(cfg)
    raise ValueError(f"rope_type {rope_type!r} is not supported by this reference")


def rope_cos_sin(inv_freq, positions):
    # [L]:132-135 freqs = inv_freq @ positions; emb = cat((freqs, freqs), -1); cos, sin.
    # attention_scaling ([L]:138-139) is 1.0 for "default" and "llama3" ([R]:64, [R]:325).
    freqs = positions.double()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()  # [N, D]


def rotate_half(x):
    # [L]:144-148
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    # [L]:173-174 q_embed = (q * cos) + (rotate_half(q) * sin); x [heads, N, D], cos/sin [N, D]
    return (x * cos[None]) + (rotate_half(x) * sin[None])


def rms_norm(x, weight, eps):
    # [L]:69-74 variance = x.pow(2).mean(-1, keepdim=True); x * rsqrt(variance + eps); weight * x
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def repeat_kv(x, n_rep):
    # [L]:194-203 (here without the batch dim): [Hkv, N, D] -> [Hkv * n_rep, N, D]
    hkv, slen, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, None, :, :].expand(hkv, n_rep, slen, hd).reshape(hkv * n_rep, slen, hd)


def attention(w, cfg, i, h, cos, sin, mask, cache):
    """One layer's self-attention on rows h [N, C]; mask [N, Nk] additive or None; cache None or a
    {"k", "v"} dict of rotated keys/values [Hkv, T, D] that this call appends to ([L]:277-280)."""
    p = f"model.layers.{i}.self_attn."
    H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    n = h.shape[0]
    # [L]:270-272 q/k/v projections, view (N, heads, D), transpose to (heads, N, D)
    q = F.linear(h, w[p + "q_proj.weight"], w.get(p + "q_proj.bias")).view(n, H, D).transpose(0, 1)
    k = F.linear(h, w[p + "k_proj.weight"], w.get(p + "k_proj.bias")).view(n, Hkv, D).transpose(0, 1)
    v = F.linear(h, w[p + "v_proj.weight"], w.get(p + "v_proj.bias")).view(n, Hkv, D).transpose(0, 1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [L]:274-275
    if cache is not None:  # [L]:277-280
        if "k" in cache:
            k = torch.cat((cache["k"], k), dim=1)
            v = torch.cat((cache["v"], v), dim=1)
        cache["k"], cache["v"] = k, v
    # [L]:216-227 eager_attention_forward
    k = repeat_kv(k, H // Hkv)
    v = repeat_kv(v, H // Hkv)
    scaling = D ** -0.5  # [L]:241
    scores = torch.matmul(q, k.transpose(1, 2)) * scaling
    if mask is not None:
        scores = scores + mask[None]
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v).transpose(0, 1).reshape(n, H * D)  # [L]:226-227, [L]:303
    return F.linear(out, w[p + "o_proj.weight"], w.get(p + "o_proj.bias"))  # [L]:304


def mlp(w, i, h):
    # [L]:189-190 down_proj(act_fn(gate_proj(x)) * up_proj(x)), act_fn = silu (hidden_act)
    p = f"model.layers.{i}.mlp."
    return F.linear(F.silu(F.linear(h, w[p + "gate_proj.weight"])) * F.linear(h, w[p + "up_proj.weight"]),
                    w[p + "down_proj.weight"])


def decoder(w, cfg, x, positions, mask, caches=None):
    """Rows x [N, C] (float64) at positions [N] -> logits [N, V]."""
    eps = cfg["rms_norm_eps"]
    cos, sin = rope_cos_sin(inv_freq_of(cfg), positions)  # [L]:571 shared by every layer
    h = x
    for i in range(cfg["num_hidden_layers"]):
        # [L]:331-353
        residual = h
        a = rms_norm(h, w[f"model.layers.{i}.input_layernorm.weight"], eps)
        h = residual + attention(w, cfg, i, a, cos, sin, mask, None if caches is None else caches[i])
        residual = h
        m = rms_norm(h, w[f"model.layers.{i}.post_attention_layernorm.weight"], eps)
        h = residual + mlp(w, i, m)
    h = rms_norm(h, w["model.norm.weight"], eps)  # [L]:611
    return F.linear(h, w["lm_head.weight"])  # [L]:857


def packed_mask(lengths):
    """Additive [N, N] mask: row i sees row j iff same sequence and j <= i ([L]:727-733, per
    sequence), and the positions 0..len-1 of every sequence ([L]:561-562)."""
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    n = int(seq.numel())
    idx = torch.arange(n)
    allowed = (seq[:, None] == seq[None, :]) & (idx[None, :] <= idx[:, None])
    mask = torch.zeros(n, n, dtype=torch.float64)
    mask[~allowed] = float("-inf")
    positions = torch.cat([torch.arange(L) for L in lengths])
    return mask, positions


def forward_packed(w, cfg, x, lengths):
    """Packed rows of several sequences [N, C] -> logits [N, V], each sequence alone and causal."""
    mask, positions = packed_mask(lengths)
    return decoder(w, cfg, x, positions, mask)


def forward_cached(w, cfg, x, caches, pos0):
    """One sequence's next rows x [n, C] at positions pos0.. with a KV cache (one dict per layer)."""
    n = x.shape[0]
    positions = torch.arange(pos0, pos0 + n)
    mask = None
    if n > 1:
        # new row r (position pos0 + r) sees cached keys 0..pos0-1 and new keys 0..r ([L]:731-733)
        mask = torch.zeros(n, pos0 + n, dtype=torch.float64)
        mask[:, pos0:] = torch.triu(torch.full((n, n), float("-inf"), dtype=torch.float64), diagonal=1)
    return decoder(w, cfg, x, positions, mask, caches)


# ---------------------------------------------------------------------------------------------
# safetensors (hand-written: 8-byte little-endian header length, JSON header, raw little-endian data)


def tensor_bytes(t):
    t = t.contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes(), "BF16"
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes(), "F16"
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes(), "F32"
    if t.dtype == torch.int32:
        return t.numpy().astype("<i4").tobytes(), "I32"
    if t.dtype == torch.int64:
        return t.numpy().astype("<i8").tobytes(), "I64"
    raise ValueError(f"unsupported dtype {t.dtype}")


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: torch tensor} in the order to store. Header padded with spaces to 8 bytes."""
    header = {}
    blobs = []
    offset = 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        data, dt = tensor_bytes(t)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return offset


def read_safetensors(path):
    """{name: np.ndarray} (BF16 widened to float32 by bit shift) and the metadata; checks offsets."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    end_max = 0
    for name, info in header.items():
        b, e = info["data_offsets"]
        end_max = max(end_max, e)
        buf = data[b:e]
        dt = info["dtype"]
        if dt == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype={"F32": "<f4", "F16": "<f2", "I32": "<i4", "I64": "<i8"}[dt])
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if arr.size != count:
            raise ValueError(f"{path}: {name}: {arr.size} values for shape {info['shape']}")
        out[name] = arr.reshape(info["shape"])
    if end_max != len(data):
        raise ValueError(f"{path}: data section is {len(data)} bytes, tensors end at {end_max}")
    return out, meta


def write_checkpoint(out_dir, cfg, stored, shards=1):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    items = list(stored.items())
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), stored, {"format": "pt"})
        return ["model.safetensors"]
    if shards > len(items):
        raise ValueError(f"--shards {shards} exceeds the {len(items)} tensors")
    sizes = [t.numel() * t.element_size() for _, t in items]
    total = sum(sizes)
    target = total / shards
    groups = [[] for _ in range(shards)]
    k, acc = 0, 0
    for i, (name, _) in enumerate(items):
        if groups[k] and k < shards - 1 and (acc >= target * (k + 1) or len(items) - i <= shards - k - 1):
            k += 1
        groups[k].append(i)
        acc += sizes[i]
    files, weight_map = [], {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out_dir, fname), {items[i][0]: items[i][1] for i in group},
                          {"format": "pt"})
        files.append(fname)
        for i in group:
            weight_map[items[i][0]] = fname
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
        f.write("\n")
    return files


# ---------------------------------------------------------------------------------------------
# Reference vectors


def _rng(seed, section):
    return torch.Generator().manual_seed((seed * 7919 + zlib.crc32(section.encode())) % (2**62))


def _ids(g, n, V):
    return torch.randint(0, V, (n,), generator=g, dtype=torch.int64)


def _table(g, p, C):
    return (torch.randn(p, C, generator=g, dtype=torch.float32) * 0.02)


def _embed_rows(w_stored, ids, table, V):
    """F32 rows for ids (< V: token embedding; >= V: table[id - V])."""
    emb = w_stored["model.embed_tokens.weight"]
    rows = []
    for t in ids.tolist():
        rows.append(emb[t].float() if t < V else table[t - V])
    return torch.stack(rows).float()


def _close(a, b, rel=1e-9):
    scale = max(float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) / scale <= rel


def compute_reference(cfg, stored, seed, shape):
    w = Weights(stored, cfg)
    V, C = cfg["vocab_size"], cfg["hidden_size"]
    out = {}
    out["rope.inv_freq"] = inv_freq_of(cfg).float()

    # logits: plain-token sequences of different lengths, every row.
    g = _rng(seed, "logits")
    lengths = LOGITS_LENGTHS.get(shape, DEFAULT_LOGITS_LENGTHS)
    ids = _ids(g, sum(lengths), V)
    x = _embed_rows(stored, ids, None, V)
    with torch.no_grad():
        logits = forward_packed(w, cfg, x.double(), lengths)
    out["logits.input_ids"] = ids.int()
    out["logits.lengths"] = torch.tensor(lengths, dtype=torch.int32)
    out["logits.inputs_embeds"] = x
    out["logits.out"] = logits.float()

    # grad: P virtual rows + prompt + answer per sequence; mean CE over the answer rows.
    g = _rng(seed, "grad")
    table = _table(g, GRAD_P, C)
    ids_list, lens, loss_rows, targets = [], [], [], []
    row = 0
    for n_prompt, n_answer in GRAD_SEQS:
        toks = _ids(g, n_prompt + n_answer, V).tolist()
        seq = [V + j for j in range(GRAD_P)] + toks
        for a in range(n_answer):
            pos = GRAD_P + n_prompt + a  # row of the answer token inside the sequence
            loss_rows.append(row + pos - 1)  # the row before it predicts it ([X]:57-60)
            targets.append(seq[pos])
        ids_list += seq
        lens.append(len(seq))
        row += len(seq)
    gids = torch.tensor(ids_list)
    gx = _embed_rows(stored, gids, table, V)
    xin = gx.double().requires_grad_(True)
    glogits = forward_packed(w, cfg, xin, lens)
    loss = F.cross_entropy(glogits[torch.tensor(loss_rows)], torch.tensor(targets))  # [X]:36 mean
    (grad,) = torch.autograd.grad(loss, xin)
    table_grad = torch.zeros(GRAD_P, C, dtype=torch.float64)
    for r, t in enumerate(ids_list):
        if t >= V:
            table_grad[t - V] += grad[r]
    out["grad.table"] = table
    out["grad.input_ids"] = gids.int()
    out["grad.lengths"] = torch.tensor(lens, dtype=torch.int32)
    out["grad.inputs_embeds"] = gx
    out["grad.loss_rows"] = torch.tensor(loss_rows, dtype=torch.int32)
    out["grad.targets"] = torch.tensor(targets, dtype=torch.int32)
    out["grad.loss"] = loss.detach().reshape(1).float()
    out["grad.grad"] = grad.float()
    out["grad.table_grad"] = table_grad.float()

    # decode: KV-cached greedy decoding of 2 prompts, checked against the no-cache forward.
    g = _rng(seed, "decode")
    pids = _ids(g, sum(DECODE_PROMPTS), V)
    px = _embed_rows(stored, pids, None, V)
    tokens = torch.zeros(len(DECODE_PROMPTS), DECODE_K, dtype=torch.int32)
    dlogits = torch.zeros(len(DECODE_PROMPTS), DECODE_K, V, dtype=torch.float64)
    margin = torch.zeros(len(DECODE_PROMPTS), DECODE_K, dtype=torch.float64)
    start = 0
    with torch.no_grad():
        for s, L in enumerate(DECODE_PROMPTS):
            prompt_x = px[start:start + L].double()
            toks, rows = greedy_decode(w, cfg, stored, prompt_x, DECODE_K)
            check_decode(w, cfg, stored, prompt_x, toks, rows)
            for k in range(DECODE_K):
                tokens[s, k] = toks[k]
                dlogits[s, k] = rows[k]
                top2 = torch.topk(rows[k], 2).values
                margin[s, k] = top2[0] - top2[1]
            start += L
    out["decode.prompt_ids"] = pids.int()
    out["decode.prompt_lengths"] = torch.tensor(DECODE_PROMPTS, dtype=torch.int32)
    out["decode.prompt_embeds"] = px
    out["decode.tokens"] = tokens
    out["decode.logits"] = dlogits.float()
    out["decode.margin"] = margin.float()

    # mixed: 3 sequences with their own prompt tables (3, 0, 5 rows), last-row logits.
    g = _rng(seed, "mixed")
    tables = [_table(g, p, C) for p in MIXED_P]
    all_tables = torch.cat(tables, dim=0)
    mids, mlens, last_rows = [], [], []
    offset, row = 0, 0
    for p, n in zip(MIXED_P, MIXED_TOKENS):
        seq = [V + offset + j for j in range(p)] + _ids(g, n, V).tolist()
        mids += seq
        mlens.append(len(seq))
        row += len(seq)
        last_rows.append(row - 1)
        offset += p
    mids_t = torch.tensor(mids)
    mx = _embed_rows(stored, mids_t, all_tables, V)
    with torch.no_grad():
        mlogits = forward_packed(w, cfg, mx.double(), mlens)
        last = mlogits[torch.tensor(last_rows)]
        start = 0
        for s, L in enumerate(mlens):
            alone = forward_packed(w, cfg, mx[start:start + L].double(), [L])
            if not _close(last[s], alone[-1]):
                raise AssertionError(f"mixed: sequence {s} in the batch differs from it alone")
            start += L
    out["mixed.tables"] = all_tables
    out["mixed.table_lengths"] = torch.tensor(MIXED_P, dtype=torch.int32)
    out["mixed.input_ids"] = mids_t.int()
    out["mixed.lengths"] = torch.tensor(mlens, dtype=torch.int32)
    out["mixed.inputs_embeds"] = mx
    out["mixed.last_rows"] = torch.tensor(last_rows, dtype=torch.int32)
    out["mixed.logits"] = last.float()
    return out


def greedy_decode(w, cfg, stored, prompt_x, K):
    """KV-cached greedy decoding: returns (K tokens, K logits rows [V] they were chosen from)."""
    caches = [dict() for _ in range(cfg["num_hidden_layers"])]
    row = forward_cached(w, cfg, prompt_x, caches, 0)[-1]
    pos = prompt_x.shape[0]
    toks, rows = [], []
    for k in range(K):
        t = int(torch.argmax(row))
        toks.append(t)
        rows.append(row)
        if k < K - 1:
            x = stored["model.embed_tokens.weight"][t].double()[None]
            row = forward_cached(w, cfg, x, caches, pos)[-1]
            pos += 1
    return toks, rows


def check_decode(w, cfg, stored, prompt_x, toks, rows):
    """The cached rows equal the no-cache forward over prompt + toks[:-1] (float64, 1e-9 relative)."""
    emb = stored["model.embed_tokens.weight"]
    L = prompt_x.shape[0]
    full_x = torch.cat([prompt_x] + [emb[t].double()[None] for t in toks[:-1]], dim=0)
    full = forward_packed(w, cfg, full_x, [full_x.shape[0]])
    for k, r in enumerate(rows):
        if not _close(r, full[L - 1 + k]):
            raise AssertionError(f"decode step {k}: KV-cached logits differ from the full forward")


def generate(shape, out_dir, layers=None, vocab=None, dtype="F32", shards=1, seed=0):
    cfg = make_config(shape, layers, vocab, dtype)
    stored = init_weights(cfg, seed, dtype)
    files = write_checkpoint(out_dir, cfg, stored, shards)
    ref = compute_reference(cfg, stored, seed, shape)
    meta = {"format": "pt", "shape": shape, "dtype": dtype, "seed": seed,
            "layers": cfg["num_hidden_layers"], "vocab": cfg["vocab_size"], "compute": "float64",
            "decode_steps": DECODE_K, "eos_token_id": cfg["eos_token_id"],
            "source": "test/python/llama_reference.py"}
    write_safetensors(os.path.join(out_dir, "reference.safetensors"), ref, meta)
    return cfg, files


# ---------------------------------------------------------------------------------------------
# Self-test


def _self_test():
    failures = []

    def check(name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}")
        if not ok:
            failures.append(name)

    # 1. GQA equals MHA whose K/V heads are the GQA heads repeated (repeat_kv's order, [L]:194-203).
    for shape in ("tiny", "tiny-qwen2", "tiny-bias", "tiny-headdim"):
        cfg = make_config(shape)
        stored = {k: v.double() for k, v in init_weights(cfg, 3).items()}
        H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
        rep = H // Hkv
        mha_cfg = dict(cfg, num_key_value_heads=H)
        mha = dict(stored)
        for i in range(cfg["num_hidden_layers"]):
            for proj in ("k", "v"):
                name = f"model.layers.{i}.self_attn.{proj}_proj.weight"
                mha[name] = stored[name].view(Hkv, D, -1).repeat_interleave(rep, dim=0).reshape(H * D, -1)
                bname = name[:-len("weight")] + "bias"
                if bname in stored:
                    mha[bname] = stored[bname].view(Hkv, D).repeat_interleave(rep, dim=0).reshape(H * D)
        x = torch.randn(9, cfg["hidden_size"], generator=torch.Generator().manual_seed(5),
                        dtype=torch.float64) * 0.02
        with torch.no_grad():
            a = forward_packed(Weights(stored, cfg), cfg, x, [5, 4])
            b = forward_packed(Weights(mha, mha_cfg), mha_cfg, x, [5, 4])
        diff = float((a - b).abs().max())
        check(f"GQA == MHA with repeated KV heads ({shape}, {H} heads / {Hkv} KV)", diff < 1e-12,
              f"max |diff| {diff:.1e}")

    # 2. RoPE at position 0 is the identity; the pairing is (i, i + D/2) (rotate_half, not interleaved).
    for shape in ("tiny", "llama3-tiny"):
        cfg = make_config(shape)
        D = head_dim_of(cfg)
        inv = inv_freq_of(cfg)
        q = torch.randn(3, 1, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        cos, sin = rope_cos_sin(inv, torch.tensor([0]))
        check(f"RoPE at position 0 is the identity ({shape})", torch.equal(apply_rotary(q, cos, sin), q))
        p = 7
        cos, sin = rope_cos_sin(inv, torch.tensor([p]))
        e = torch.zeros(1, 1, D, dtype=torch.float64)
        e[0, 0, 1] = 1.0
        r = apply_rotary(e, cos, sin)[0, 0]
        ang = p * float(inv[1])
        want = torch.zeros(D, dtype=torch.float64)
        want[1], want[1 + D // 2] = math.cos(ang), math.sin(ang)
        check(f"RoPE rotates dims (1, 1 + D/2) by position * inv_freq[1] ({shape})",
              float((r - want).abs().max()) < 1e-15)

    # 3. llama3 inv_freq against Meta's loop formula and the band limits ([R]:305-345).
    cfg = make_config("llama3-tiny")
    rs = cfg["rope_scaling"]
    base = default_inv_freq(cfg)
    got = llama3_inv_freq(cfg)
    low_wl = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    high_wl = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    bands = {"high": 0, "medium": 0, "low": 0}
    ok = True
    for f0, f1 in zip(base.tolist(), got.tolist()):
        wl = 2 * math.pi / f0
        if wl < high_wl:
            bands["high"] += 1
            ok &= f1 == f0  # high-frequency band unchanged
        elif wl > low_wl:
            bands["low"] += 1
            ok &= abs(f1 - f0 / rs["factor"]) <= 1e-15 * f0  # low-frequency band divided by factor
        else:
            bands["medium"] += 1
            smooth = (rs["original_max_position_embeddings"] / wl - rs["low_freq_factor"]) / (
                rs["high_freq_factor"] - rs["low_freq_factor"])
            want = (1 - smooth) * f0 / rs["factor"] + smooth * f0
            ok &= abs(f1 - want) <= 1e-15 * f0 and f0 / rs["factor"] <= f1 <= f0
    check("llama3 inv_freq: high band unchanged, low band / factor, medium smoothed in between",
          ok and all(bands.values()), f"bands {bands} of {len(base)} (factor {rs['factor']})")
    check("default inv_freq = 1/theta^(2i/D)",
          float((default_inv_freq(make_config("tiny"))
                 - torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)], dtype=torch.float64))
                .abs().max()) < 1e-15)

    # 4. Cached decode equals the full forward (also asserted on every generate()).
    for shape in ("tiny", "tiny-bias", "llama3-tiny", "tiny-qwen2"):
        cfg = make_config(shape)
        stored = init_weights(cfg, 4)
        w = Weights(stored, cfg)
        prompt = stored["model.embed_tokens.weight"][torch.tensor([3, 9, 27, 4])].double()
        with torch.no_grad():
            toks, rows = greedy_decode(w, cfg, stored, prompt, 6)
            try:
                check_decode(w, cfg, stored, prompt, toks, rows)
                check(f"KV-cached greedy decode == no-cache forward ({shape})", True, f"tokens {toks}")
            except AssertionError as e:
                check(f"KV-cached greedy decode == no-cache forward ({shape})", False, str(e))

    # 5. A packed batch equals each sequence alone; rows of one sequence do not see another.
    cfg = make_config("tiny-qwen2")
    w = Weights(init_weights(cfg, 6), cfg)
    x = torch.randn(12, cfg["hidden_size"], generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64) * 0.02
    with torch.no_grad():
        batch = forward_packed(w, cfg, x, [5, 7])
        a = forward_packed(w, cfg, x[:5], [5])
        b = forward_packed(w, cfg, x[5:], [7])
    check("packed batch == each sequence alone", _close(batch, torch.cat([a, b])))

    # 6. The gradient against central finite differences (float64).
    cfg = make_config("tiny-bias")
    w = Weights(init_weights(cfg, 8), cfg)
    x = torch.randn(7, cfg["hidden_size"], generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64) * 0.02
    rows, tg = torch.tensor([2, 3, 5]), torch.tensor([4, 5, 6])

    def loss_of(xx):
        return F.cross_entropy(forward_packed(w, cfg, xx, [4, 3])[rows], tg)

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(xg), xg)
    worst = 0.0
    for (r, c) in ((0, 0), (1, 5), (3, 31), (4, 7), (5, 2)):
        h = 1e-6
        xp, xm = x.clone(), x.clone()
        xp[r, c] += h
        xm[r, c] -= h
        fd = (float(loss_of(xp)) - float(loss_of(xm))) / (2 * h)
        worst = max(worst, abs(fd - float(grad[r, c])) / max(abs(fd), 1e-3))
    check("d loss / d inputs_embeds == finite differences", worst < 1e-5, f"worst rel {worst:.1e}")
    check("rows after a sequence's last loss row get no gradient",
          float(grad[6].abs().max()) == 0.0 and float(grad[3].abs().max()) > 0.0)

    # 7. Bias layout: Llama attention_bias -> q, k, v and o biases; Qwen2 -> q, k, v only.
    names = {s: {n for n, _, _ in tensor_specs(make_config(s))} for s in ("tiny", "tiny-bias", "tiny-qwen2")}
    check("no biases in tiny", not any(n.endswith(".bias") for n in names["tiny"]))
    check("tiny-bias: q/k/v/o biases",
          all(f"model.layers.0.self_attn.{p}_proj.bias" in names["tiny-bias"] for p in "qkvo"))
    check("tiny-qwen2: q/k/v biases, no o_proj bias",
          all(f"model.layers.0.self_attn.{p}_proj.bias" in names["tiny-qwen2"] for p in "qkv")
          and "model.layers.0.self_attn.o_proj.bias" not in names["tiny-qwen2"])

    # 8. Checkpoints round-trip through the hand-written safetensors writer (an independent reader),
    # every dtype, sharded and not; the reference file reads back too.
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, shards in (("F32", 1), ("BF16", 3), ("F16", 2)):
            d = os.path.join(tmp, f"{dtype}-{shards}")
            cfg, files = generate("tiny-bias", d, dtype=dtype, shards=shards, seed=11)
            stored = init_weights(cfg, 11, dtype)
            got = {}
            for fname in files:
                t, meta = read_safetensors(os.path.join(d, fname))
                got.update(t)
            same = set(got) == set(stored) and all(
                np.array_equal(got[n].astype(np.float64), stored[n].double().numpy()) for n in stored)
            if shards > 1:
                with open(os.path.join(d, "model.safetensors.index.json")) as f:
                    index = json.load(f)
                same &= set(index["weight_map"]) == set(stored) and set(index["weight_map"].values()) == set(files)
                same &= index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
            with open(os.path.join(d, "config.json")) as f:
                c = json.load(f)
            same &= c["torch_dtype"] == TORCH_DTYPE_NAME[dtype] and c["attention_bias"] is True
            ref, meta = read_safetensors(os.path.join(d, "reference.safetensors"))
            same &= ref["logits.out"].shape == (32, 128) and ref["decode.logits"].shape == (2, DECODE_K, 128)
            same &= meta["dtype"] == dtype and ref["grad.grad"].shape == (sum(GRAD_P + a + b for a, b in GRAD_SEQS), 32)
            check(f"checkpoint round-trip {dtype}, {shards} shard(s) ({', '.join(files)})", same)
        # The 16-bit reference uses the stored (rounded) weights: it differs from the F32 one.
        r32, _ = read_safetensors(os.path.join(tmp, "F32-1", "reference.safetensors"))
        r16, _ = read_safetensors(os.path.join(tmp, "BF16-3", "reference.safetensors"))
        d = float(np.abs(r32["logits.out"] - r16["logits.out"]).max())
        check("BF16 reference computed from the rounded weights", d > 0, f"max |F32 - BF16| logits {d:.1e}")

    if failures:
        print(f"{len(failures)} self-test check(s) failed")
        return 1
    print("self-test passed")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Random-weight Llama/Qwen2 checkpoint + float64 reference vectors (see the docstring).")
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--out")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--dtype", default="F32", choices=sorted(DTYPES))
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--list-shapes", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        return _self_test()
    if args.list_shapes:
        for name in SHAPES:
            print(name, json.dumps(SHAPES[name], sort_keys=True))
        return 0
    if not args.shape or not args.out:
        ap.print_usage(sys.stderr)
        print("error: --shape and --out are required", file=sys.stderr)
        return 2
    if args.shards < 1:
        print("error: --shards must be >= 1", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        cfg, files = generate(args.shape, args.out, args.layers, args.vocab, args.dtype, args.shards,
                              args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AssertionError as e:
        print(f"self-check failed: {e}", file=sys.stderr)
        return 1
    print(f"{args.shape}: {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}, {args.dtype}, "
          f"{', '.join(files)} + reference.safetensors in {args.out} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
