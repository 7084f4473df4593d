#!/usr/bin/env python3
"""PyTorch side of bench/model_bench.ts for the Llama family (SmolLM2, Llama, Qwen2): the same work
as bench/torch_gpt2_bench.py, timed by the same code (its bench_model), on a plain float32 PyTorch
Llama loading the same safetensors checkpoint our engines load.

Input: a model directory in Hugging Face Llama/Qwen2 layout (config.json + model.safetensors or
shards with model.safetensors.index.json), e.g. one written by test/python/llama_reference.py.
Work (as model_bench.ts does it, see torch_gpt2_bench.py):
- train: prompt-tuning step: B sequences of T rows (V virtual rows from a trainable prompt table,
  then token embeddings), logits at the A answer rows per sequence, mean cross-entropy, backward to
  the prompt table only (every weight frozen: requires_grad False, no weight gradient);
- forward: the same batch without gradients, logits at each sequence's last row;
- gen1 / genN: greedy decoding with a KV cache after a prompt of G tokens, 1 and N sequences.
Prints one JSON line, last on stdout: {"torch", "threads", "fp32": {...}, "bf16": {...}} with
seconds per unit of work; a precision the device cannot run gets {"failed": "..."}.

The model follows the structure of test/python/llama_reference.py (Hugging Face's LlamaModel with
eager attention; its config helpers are imported from there): RMSNorm computed in float32, rotary
positions (rotate_half over the two halves of head_dim; cos/sin from float32 inv_freq, as Hugging
Face computes them), grouped-query attention with repeat_kv and plain matmuls (masked softmax, as
torch_gpt2.py's GPT-2 does: no scaled_dot_product_attention on either side), a KV cache of rotated
keys, SwiGLU, tied or separate lm_head, q/k/v (Qwen2) and o (Llama attention_bias) biases.

Run: /usr/bin/python3 bench/torch_llama_bench.py MODEL_DIR --batch 4 --seq 128 --virtual 10
       --answer 8 --steps 3 --gen-prompt 32 --gen-tokens 16 --concurrent 32 --threads 2
       [--precision fp32,bf16] [--device cpu|cuda]
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
sys.path.insert(0, os.path.join(_here, "..", "test", "python"))
from torch_gpt2 import read_checkpoint  # noqa: E402
from torch_gpt2_bench import bench_model, parse_args  # noqa: E402
from llama_reference import bias_flags, head_dim_of, inv_freq_of  # noqa: E402


def load_llama_checkpoint(model_dir):
    """(cfg, {Hugging Face name: float32 CPU tensor}) of model.safetensors or its shards."""
    cfg, tensors = read_checkpoint(model_dir)
    weights = {
        key: torch.from_numpy(arr.astype("float32", copy=False))
        for key, arr in tensors
        if arr.dtype.kind == "f"
    }
    return cfg, weights


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x, n_rep):
    """[B, Hkv, T, D] -> [B, Hkv * n_rep, T, D]: KV head j serves query heads j*n_rep..+n_rep-1."""
    if n_rep == 1:
        return x
    b, hkv, t, d = x.shape
    return x[:, :, None].expand(b, hkv, n_rep, t, d).reshape(b, hkv * n_rep, t, d)


class Llama:
    """A Llama-family decoder on `device` in `dtype` (weights moved and cast once, here), with the
    interface bench_model times: vocab_size, n_embd, embed, forward(x, past), logits."""

    def __init__(self, cfg, weights, device="cpu", dtype=torch.float32):
        self.n_layer = cfg["num_hidden_layers"]
        self.n_head, self.n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = head_dim_of(cfg)
        self.n_embd, self.vocab_size = cfg["hidden_size"], cfg["vocab_size"]
        self.eps = cfg["rms_norm_eps"]
        qkv_bias, o_bias = bias_flags(cfg)
        self.w = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
        for i in range(self.n_layer):
            for proj, biased in (("q", qkv_bias), ("k", qkv_bias), ("v", qkv_bias), ("o", o_bias)):
                name = f"model.layers.{i}.self_attn.{proj}_proj.bias"
                if biased != (name in self.w):
                    raise ValueError(f"{name}: {'missing' if biased else 'not expected'}")
        self.inv_freq = inv_freq_of(cfg).float().to(device)
        self.wte = self.w["model.embed_tokens.weight"]
        if cfg.get("tie_word_embeddings", False):
            self.lm_head = self.wte
        elif "lm_head.weight" in self.w:
            self.lm_head = self.w["lm_head.weight"]
        else:
            raise ValueError("tie_word_embeddings is false but there is no lm_head.weight")

    def _rms(self, x, name):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.w[name] * xf.to(x.dtype)

    def _linear(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def forward(self, x, past=None):
        """x [B,T,C] input embeddings; past: per layer (k rotated, v) [B,Hkv,P,D] of the P rows
        before. Returns (hidden after the final norm [B,T,C], new past). Row t is at position
        P + t."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv, self.head_dim
        P = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(P, P + T, device=x.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # [T, D]
        mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
        new = []
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            h = self._rms(x, p + "input_layernorm.weight")
            q = self._linear(h, p + "self_attn.q_proj").view(B, T, H, D).transpose(1, 2)
            k = self._linear(h, p + "self_attn.k_proj").view(B, T, Hkv, D).transpose(1, 2)
            v = self._linear(h, p + "self_attn.v_proj").view(B, T, Hkv, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if past is not None:
                k = torch.cat([past[i][0], k], 2)
                v = torch.cat([past[i][1], v], 2)
            new.append((k, v))
            s = (q @ repeat_kv(k, H // Hkv).transpose(-1, -2)) * (D ** -0.5)
            s = s.masked_fill(~mask, float("-inf")).softmax(-1)
            y = (s @ repeat_kv(v, H // Hkv)).transpose(1, 2).reshape(B, T, H * D)
            x = x + self._linear(y, p + "self_attn.o_proj")
            h = self._rms(x, p + "post_attention_layernorm.weight")
            m = F.silu(self._linear(h, p + "mlp.gate_proj")) * self._linear(h, p + "mlp.up_proj")
            x = x + self._linear(m, p + "mlp.down_proj")
        return self._rms(x, "model.norm.weight"), new

    def logits(self, hidden):
        return hidden @ self.lm_head.t()

    def embed(self, ids):
        return self.wte[ids]


def main():
    a = parse_args()
    if a.peft:
        print("error: --peft is GPT-2 only (bench/torch_gpt2_bench.py)", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    cfg, weights = load_llama_checkpoint(a.model)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
    out.update(bench_model(a, Llama(cfg, weights, device), device, a.precision.split(",")))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
