"""A plain PyTorch GPT-2 with Hugging Face GPT-2 semantics, needing only torch and numpy.

Used by bench/torch_gpt2_bench.py (the PyTorch baseline of the model benchmarks) and by
test/gpu/oracle.py (its fallback reference when transformers is missing, and its cross-check when
not). Importing it has no side effects.

- read_safetensors(path): the tensors and metadata of one safetensors file (numpy, no package).
- read_checkpoint(model_dir): config.json and the tensors of an HF checkpoint (one file or shards).
- load_checkpoint(model_dir): config.json and float32 CPU weights of an HF GPT-2 checkpoint.
- Gpt2(cfg, weights, device, dtype): forward (with a KV cache), logits, embed.
- precision_context(name, device): the torch settings of one precision (fp32, tf32, bf16, fp16).
"""
import contextlib
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

# safetensors dtype -> numpy dtype as stored (little-endian). BF16 has no numpy type: it is read as
# uint16 and widened to float32 by read_safetensors.
_NUMPY_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path):
    """Returns ({name: np.ndarray}, metadata dict) of one safetensors file; BF16 tensors come back
    as float32. Raises ValueError naming the file (and tensor) when the file is malformed."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} runs past the end of the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: header is not JSON: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    # numpy cannot map zero bytes: a file of empty tensors gets an empty buffer instead.
    data = (np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(size - 8 - n,))
            if size > 8 + n else np.zeros(0, np.uint8))
    return {name: _read_tensor(path, name, entry, data) for name, entry in header.items()}, metadata


def _read_tensor(path, name, entry, data):
    where = f"{path}: tensor {name!r}"
    try:
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        shape = [int(d) for d in shape]
        count = math.prod(shape) if min(shape, default=0) >= 0 else -1
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: header entry lacks a dtype, shape or data_offsets") from None
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"{where}: unsupported dtype {dtype}")
    np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
    if end - start != count * np_dtype.itemsize or not 0 <= start <= end <= len(data):
        raise ValueError(f"{where}: data_offsets {[start, end]} do not hold {dtype} {shape}")
    arr = np.frombuffer(data, dtype=np_dtype, count=count, offset=start).reshape(shape)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.copy()  # off the memory map, native byte order


def read_checkpoint(model_dir):
    """(config.json as a dict, an iterator of (name, numpy array)) of an HF checkpoint:
    model.safetensors, or the shards model.safetensors.index.json lists."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]

    def tensors():
        for name in files:
            yield from read_safetensors(os.path.join(model_dir, name))[0].items()

    return cfg, tensors()


def load_checkpoint(model_dir):
    """Returns (cfg, weights) of an HF GPT-2 checkpoint: config.json as a dict and float32 CPU
    tensors named without the `transformer.` prefix (lm_head.weight kept when present)."""
    cfg, tensors = read_checkpoint(model_dir)
    weights = {}
    for key, arr in tensors:
        key = key[len("transformer."):] if key.startswith("transformer.") else key
        # The causal-mask buffers older transformers saved (attn.bias, attn.masked_bias) are
        # never read: the mask is built in forward.
        if arr.dtype.kind != "f" or key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        weights[key] = torch.from_numpy(arr.astype(np.float32, copy=False))
    return cfg, weights


def gelu_new(x):
    """GPT-2's tanh approximation of GELU (HF "gelu_new")."""
    return 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


# config.json activation_function -> function, as transformers' ACT2FN maps them.
_ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,  # the same formula, fused in PyTorch
    "gelu": F.gelu,  # exact (erf)
    "relu": F.relu,
}


class Gpt2:
    """GPT-2 on `device` in `dtype` (the weights are moved and cast once, here)."""

    def __init__(self, cfg, weights, device="cpu", dtype=torch.float32):
        self.n_layer, self.n_head = cfg["n_layer"], cfg["n_head"]
        self.n_embd, self.vocab_size = cfg["n_embd"], cfg["vocab_size"]
        self.n_positions = cfg.get("n_positions", 1024)
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        act = cfg.get("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            raise ValueError(f"activation_function {act!r} is not one of {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[act]
        # HF's attention scaling options: 1/sqrt(head dim), and 1/(layer + 1) on top when asked.
        self.scale_by_dim = cfg.get("scale_attn_weights", True)
        self.scale_by_layer = cfg.get("scale_attn_by_inverse_layer_idx", False)
        self.w = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
        self.wte = self.w["wte.weight"]
        # As transformers does: a tied head is the token table, whatever the file holds.
        if cfg.get("tie_word_embeddings", True):
            self.lm_head = self.wte
        elif "lm_head.weight" in self.w:
            self.lm_head = self.w["lm_head.weight"]
        else:
            raise ValueError("tie_word_embeddings is false but there is no lm_head.weight")

    def _ln(self, x, p):
        return F.layer_norm(x, (self.n_embd,), self.w[p + ".weight"], self.w[p + ".bias"], self.eps)

    def _conv1d(self, x, p):
        """GPT-2's Conv1D: weight stored [in, out]."""
        return x @ self.w[p + ".weight"] + self.w[p + ".bias"]

    def forward(self, x, past=None):
        """x [B,T,C] input embeddings; past: per layer (k, v) [B,H,P,D] of the P rows before.
        Returns (hidden after ln_f [B,T,C], new past). Row t sits at position P + t."""
        B, T, C = x.shape
        H = self.n_head
        D = C // H
        P = 0 if past is None else past[0][0].shape[2]
        if P + T > self.n_positions:
            raise ValueError(f"positions up to {P + T} exceed n_positions {self.n_positions}")
        x = x + self.w["wpe.weight"][P:P + T]
        mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
        new = []
        for i in range(self.n_layer):
            p = f"h.{i}."
            qkv = self._conv1d(self._ln(x, p + "ln_1"), p + "attn.c_attn")
            q, k, v = [t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(C, -1)]
            if past is not None:
                k = torch.cat([past[i][0], k], 2)
                v = torch.cat([past[i][1], v], 2)
            new.append((k, v))
            s = q @ k.transpose(-1, -2)
            if self.scale_by_dim:
                s = s / (D ** 0.5)
            if self.scale_by_layer:
                s = s / (i + 1)
            s = s.masked_fill(~mask, float("-inf")).softmax(-1)
            y = (s @ v).transpose(1, 2).reshape(B, T, C)
            x = x + self._conv1d(y, p + "attn.c_proj")
            h = self.act(self._conv1d(self._ln(x, p + "ln_2"), p + "mlp.c_fc"))
            x = x + self._conv1d(h, p + "mlp.c_proj")
        return self._ln(x, "ln_f"), new

    def logits(self, hidden):
        return hidden @ self.lm_head.t()

    def embed(self, ids):
        return self.wte[ids]


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@contextlib.contextmanager
def _tf32(enabled):
    """TF32 tensor-core products for float32 matmuls and convolutions on or off, restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def precision_context(name, device):
    """Runs the body at precision `name` on `device`: fp32 (exact float32 products: TF32 off on
    CUDA), tf32 (CUDA: float32 with TF32 products), bf16 or fp16 (autocast; fp16 on CUDA only).
    Raises ValueError, on entry, for a precision the device cannot run."""
    device_type = torch.device(device).type
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (one of {', '.join(PRECISIONS)})")
    if name in ("tf32", "fp16") and device_type != "cuda":
        raise ValueError(f"{name} runs on cuda only")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
    with contextlib.ExitStack() as stack:
        if device_type == "cuda":
            stack.enter_context(_tf32(name == "tf32"))
        if half is not None:
            stack.enter_context(torch.autocast(device_type, dtype=half))
        yield
