#!/usr/bin/env python3
"""PyTorch side of bench/model_bench.ts: the same work on the same weights, in plain PyTorch on the
CPU (Debian's python3-torch), fp32 and bf16 autocast.

Input: a model directory in HF GPT-2 layout written by the bench (config.json + one F32
model.safetensors, bare keys, tied head). Work (as model_bench.ts does it):
- train: prompt tuning step: a batch of B sequences of T rows (V virtual rows from a trainable
  prompt, then token embeddings), logits only at the A answer rows per sequence, mean
  cross-entropy, backward to the prompt only (weights frozen: no weight gradient);
- forward: the same batch without gradients, logits at each sequence's last row;
- gen1 / genN: greedy decoding with a KV cache after a prompt of G tokens, 1 and N sequences.
Prints one JSON line: {"fp32": {...}, "bf16": {...}} with seconds per unit of work.

Run: /usr/bin/python3 bench/torch_gpt2_bench.py MODEL_DIR --batch 4 --seq 128 --virtual 10
       --answer 8 --steps 3 --gen-prompt 32 --gen-tokens 16 --concurrent 32 --threads 2
       [--precision fp32,bf16]
"""
import argparse, json, os, struct, time
import numpy as np
import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("model")
for name, default in [("batch", 4), ("seq", 128), ("virtual", 10), ("answer", 8), ("steps", 3),
                      ("gen-prompt", 32), ("gen-tokens", 16), ("concurrent", 32),
                      ("threads", os.cpu_count())]:
    ap.add_argument("--" + name, type=int, default=default)
ap.add_argument("--precision", default="fp32,bf16")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

cfg = json.load(open(os.path.join(a.model, "config.json")))
L, H, C, V = cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"]
D = C // H


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        arr = np.frombuffer(mm, dtype=np.float32, count=(e - s) // 4, offset=8 + n + s)
        out[k.replace("transformer.", "")] = torch.from_numpy(arr.copy()).reshape(v["shape"])
    return out


W = load(os.path.join(a.model, "model.safetensors"))


def ln(x, p):
    return F.layer_norm(x, (C,), W[p + ".weight"], W[p + ".bias"], 1e-5)


def gelu_new(x):
    return 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def forward(x, past=None):
    """x [B,T,C] embeddings; past: list of (k, v) [B,H,P,D]. Returns hidden [B,T,C], new past."""
    B, T, _ = x.shape
    P = 0 if past is None else past[0][0].shape[2]
    x = x + W["wpe.weight"][P:P + T]
    mask = torch.ones(T, P + T, dtype=torch.bool).tril(P)
    new = []
    for i in range(L):
        p = f"h.{i}."
        qkv = ln(x, p + "ln_1") @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        q, k, v = [t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(C, -1)]
        if past is not None:
            k = torch.cat([past[i][0], k], 2)
            v = torch.cat([past[i][1], v], 2)
        new.append((k, v))
        s = (q @ k.transpose(-1, -2)) / (D ** 0.5)
        s = s.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (s @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = gelu_new(ln(x, p + "ln_2") @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return ln(x, "ln_f"), new


wte = W["wte.weight"]
B, T, NV, A = a.batch, a.seq, a.virtual, a.answer
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, V, (B, T - NV), generator=g)
prompt0 = torch.randn(NV, C, generator=g) * 0.02
targets = torch.randint(0, V, (B, A), generator=g)


def train_step(ctx):
    prompt = prompt0.clone().requires_grad_(True)
    with ctx():
        x = torch.cat([prompt.expand(B, NV, C), wte[ids]], 1)
        h, _ = forward(x)
        rows = h[:, T - A - 1:T - 1]  # the row before each answer token
        logits = rows @ wte.t()
        loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))
    loss.backward()
    return loss.item()


def forward_step(ctx):
    with torch.no_grad(), ctx():
        x = torch.cat([prompt0.expand(B, NV, C), wte[ids]], 1)
        h, _ = forward(x)
        return (h[:, -1] @ wte.t()).float().sum().item()


def generate(ctx, n):
    start = torch.randint(0, V, (n, a.gen_prompt), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), ctx():
        h, past = forward(wte[start])
        tok = (h[:, -1] @ wte.t()).argmax(-1)
        t0 = time.perf_counter()
        for _ in range(a.gen_tokens):
            h, past = forward(wte[tok][:, None], past)
            tok = (h[:, -1] @ wte.t()).argmax(-1)
        return time.perf_counter() - t0


def timed(fn, reps):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


class Fp32:
    def __enter__(self): return self
    def __exit__(self, *e): return False


out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
for prec in a.precision.split(","):
    ctx = Fp32 if prec == "fp32" else (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    try:
        r = {
            "train_step_s": timed(lambda: train_step(ctx), a.steps),
            "forward_s": timed(lambda: forward_step(ctx), a.steps),
        }
        generate(ctx, 1)  # warm-up
        r["gen1_s_per_token"] = generate(ctx, 1) / a.gen_tokens
        r["genN_s_per_step"] = generate(ctx, a.concurrent) / a.gen_tokens
        out[prec] = r
    except Exception as e:  # e.g. no bf16 kernels on this CPU
        out[prec] = {"failed": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
