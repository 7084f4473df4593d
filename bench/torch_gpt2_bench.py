#!/usr/bin/env python3
"""PyTorch side of bench/model_bench.ts: the same work on the same weights, in plain PyTorch
(bench/torch_gpt2.py) on the CPU (Debian's python3-torch) or a CUDA GPU, per precision; and, with
--peft, Hugging Face PEFT prompt tuning of the same checkpoint doing the same training work.

Input: a model directory in HF GPT-2 layout written by the bench (config.json + one
model.safetensors, bare or `transformer.` keys, tied head). Work (as model_bench.ts does it):
- train: prompt tuning step: a batch of B sequences of T rows (V virtual rows from a trainable
  prompt, then token embeddings), logits only at the A answer rows per sequence, mean
  cross-entropy, backward to the prompt only (weights frozen: no weight gradient);
- forward: the same batch without gradients, logits at each sequence's last row;
- gen1 / genN: greedy decoding with a KV cache after a prompt of G tokens, 1 and N sequences.
Prints one JSON line, last on stdout: {"torch", "threads", "fp32": {...}, "bf16": {...}, ...}
with seconds per unit of work; on CUDA also "device" and each precision's "peak_mib"; with --peft
also "peft". A precision the device cannot run gets {"failed": "..."}.

Precisions: fp32 (on CUDA with TF32 off: exact float32 products), bf16 (autocast), and on CUDA
only tf32 (float32 with TF32 tensor-core products) and fp16 (autocast).

Run: /usr/bin/python3 bench/torch_gpt2_bench.py MODEL_DIR --batch 4 --seq 128 --virtual 10
       --answer 8 --steps 3 --gen-prompt 32 --gen-tokens 16 --concurrent 32 --threads 2
       [--precision fp32,bf16] [--device cpu|cuda] [--peft]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt2 import Gpt2, load_checkpoint, precision_context  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    for name, default in [("batch", 4), ("seq", 128), ("virtual", 10), ("answer", 8), ("steps", 3),
                          ("gen-prompt", 32), ("gen-tokens", 16), ("concurrent", 32),
                          ("threads", os.cpu_count())]:
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--peft", action="store_true",
                    help="also time Hugging Face PEFT prompt tuning (needs transformers and peft)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    return a


def make_work(a, vocab, n_embd, device):
    """The batch both implementations work on, drawn on the CPU so every device gets the same."""
    g = torch.Generator().manual_seed(1)
    B, T, NV, A = a.batch, a.seq, a.virtual, a.answer
    ids = torch.randint(0, vocab, (B, T - NV), generator=g)
    prompt0 = torch.randn(NV, n_embd, generator=g) * 0.02
    targets = torch.randint(0, vocab, (B, A), generator=g)
    return ids.to(device), prompt0.to(device), targets.to(device)


def clock(device):
    """Wall time once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def timed(fn, reps, device):
    fn()  # warm-up
    t0 = clock(device)
    for _ in range(reps):
        fn()
    return (clock(device) - t0) / reps


def measure(device, run):
    """run() -> dict of timings, plus "peak_mib" (the most GPU memory allocated during it) on CUDA;
    {"failed": ...} when it raises (e.g. no bf16 kernels on this CPU, tf32 on a CPU)."""
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = run()
        if device.type == "cuda":
            r["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return r
    except Exception as e:
        return {"failed": f"{type(e).__name__}: {e}"}


def bench_plain(a, cfg, weights, device, precisions):
    return bench_model(a, Gpt2(cfg, weights, device), device, precisions)


def bench_model(a, gpt, device, precisions):
    """The timed work on a float32 model with vocab_size, n_embd, embed(ids), forward(x, past) ->
    (hidden after the final norm, new past) and logits(hidden): Gpt2 here, the Llama of
    bench/torch_llama_bench.py there, timed the same way."""
    V, C = gpt.vocab_size, gpt.n_embd
    B, T, NV, A = a.batch, a.seq, a.virtual, a.answer
    ids, prompt0, targets = make_work(a, V, C, device)

    def train_step(ctx):
        prompt = prompt0.clone().requires_grad_(True)
        with ctx():
            x = torch.cat([prompt.expand(B, NV, C), gpt.embed(ids)], 1)
            h, _ = gpt.forward(x)
            logits = gpt.logits(h[:, T - A - 1:T - 1])  # the row before each answer token
            loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))
        loss.backward()
        return loss.item()

    def forward_step(ctx):
        with torch.no_grad(), ctx():
            x = torch.cat([prompt0.expand(B, NV, C), gpt.embed(ids)], 1)
            h, _ = gpt.forward(x)
            return gpt.logits(h[:, -1]).float().sum().item()

    def generate(ctx, n):
        start = torch.randint(0, V, (n, a.gen_prompt), generator=torch.Generator().manual_seed(2))
        with torch.no_grad(), ctx():
            h, past = gpt.forward(gpt.embed(start.to(device)))
            tok = gpt.logits(h[:, -1]).argmax(-1)
            t0 = clock(device)
            for _ in range(a.gen_tokens):
                h, past = gpt.forward(gpt.embed(tok)[:, None], past)
                tok = gpt.logits(h[:, -1]).argmax(-1)
            return clock(device) - t0

    def run(ctx):
        r = {
            "train_step_s": timed(lambda: train_step(ctx), a.steps, device),
            "forward_s": timed(lambda: forward_step(ctx), a.steps, device),
        }
        generate(ctx, 1)  # warm-up
        r["gen1_s_per_token"] = generate(ctx, 1) / a.gen_tokens
        r["genN_s_per_step"] = generate(ctx, a.concurrent) / a.gen_tokens
        return r

    return {prec: measure(device, lambda: run(lambda: precision_context(prec, device)))
            for prec in precisions}


def load_peft_model(model_dir, num_virtual, device):
    """GPT2LMHeadModel of model_dir, frozen, wrapped for PEFT prompt tuning of num_virtual rows."""
    from transformers import GPT2LMHeadModel
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    try:  # the eager attention does the products the plain model does
        base = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager")
    except Exception:  # a transformers without the option (or without that implementation)
        base = GPT2LMHeadModel.from_pretrained(model_dir)
    # float32 whatever dtype the checkpoint or transformers' default picked; eval: no dropout, as
    # the plain model has none.
    base = base.float().to(device).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual,
                             prompt_tuning_init=PromptTuningInit.RANDOM)
    return get_peft_model(base, cfg).to(device).eval()


def bench_peft(a, cfg, device, precisions):
    try:
        model = load_peft_model(a.model, a.virtual, device)
    except Exception as e:  # ImportError where transformers or peft is missing
        return f"not available: {type(e).__name__}: {e}"
    B, T, NV, A = a.batch, a.seq, a.virtual, a.answer
    ids, _, targets = make_work(a, cfg["vocab_size"], cfg["n_embd"], device)
    # The loss covers the plain train step's predictions. There, row T-A-1+i of the full sequence
    # (NV virtual rows, then ids) predicts targets[:, i]. PEFT prepends NV labels of -100 for its
    # virtual rows, so label j of `labels` becomes label NV+j of the full sequence; transformers
    # shifts by one, so full row r is scored against full label r+1. Row T-A-1+i is therefore
    # scored against labels[:, T-A+i-NV], i.e. the last A labels: labels[:, -A:] = targets.
    labels = torch.full((B, T - NV), -100, dtype=torch.long, device=device)
    labels[:, -A:] = targets

    def train_step(ctx):
        model.zero_grad(set_to_none=True)
        with ctx():
            # transformers computes the logits of all T rows here (its loss shifts over them),
            # the plain step only the A answer rows: that is part of what PEFT costs.
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()  # reaches the prompt embedding only: the rest is frozen
        return loss.item()

    def forward_step(ctx):
        with torch.no_grad(), ctx():
            # logits at the last row only, as the plain forward (transformers >= 4.50 / 5.x).
            logits = model(input_ids=ids, logits_to_keep=1).logits
            return logits[:, -1].float().sum().item()

    def run(ctx):
        return {
            "train_step_s": timed(lambda: train_step(ctx), a.steps, device),
            "forward_s": timed(lambda: forward_step(ctx), a.steps, device),
        }

    return {prec: measure(device, lambda: run(lambda: precision_context(prec, device)))
            for prec in precisions}


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    precisions = a.precision.split(",")
    cfg, weights = load_checkpoint(a.model)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
    out.update(bench_plain(a, cfg, weights, device, precisions))
    # The plain model (and its GPU copy) went with bench_plain: PEFT's peak_mib is its own, and
    # transformers loads its own copy of the weights.
    del weights
    if a.peft:
        out["peft"] = bench_peft(a, cfg, device, precisions)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
