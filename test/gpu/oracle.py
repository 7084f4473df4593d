#!/usr/bin/env python3
"""Independent oracle of the GPU check: float64 PyTorch references for the outputs an engine wrote.

  python3 test/gpu/oracle.py --model MODEL_DIR --case CASE.safetensors --json RESULT.json
      [--device auto|cpu|cuda] OUTPUTS.safetensors [OUTPUTS2.safetensors ...]

Exit status: 0 when every outputs file passes, 1 when any fails (or the two references disagree),
2 on a usage or input error (the message names the file and the field).

The reference is transformers' GPT2LMHeadModel when it imports (float64, eval, eager attention),
else the plain Gpt2 of bench/torch_gpt2.py (float64); never the project's TypeScript. With
transformers the plain model runs too and the two are compared ("cross_check"); an exception on the
transformers path is recorded ("hf_error") and the plain model becomes the oracle.

Case file (written by the TypeScript side):
  ids I32 [N]          packed rows of S sequences back to back; id < V (config vocab_size) is a
                       token (embedding wte[id]); id >= V a virtual row (embedding tables[id - V])
  tables F32 [K, C]    the tasks' prompt tables, concatenated
  seq_lengths I32 [S]  sequence lengths (sum N); each sequence alone, positions 0..len-1, causal
  loss_rows I32 [R], targets I32 [R]
Outputs file (one per engine and precision; __metadata__ label and precision):
  logits F32 [N, V], loss F32 [1] (mean cross-entropy over the loss rows), grad F32 [N, C] (of
  the loss w.r.t. every row's input embedding), decode_tokens I32 [S, Kd] (greedy decoding with a
  KV cache after a cached prefill), decode_logits F32 [S*Kd, V] (the logits each token was chosen
  from).
Decoding is checked with teacher forcing: the reference is fed the engine's own tokens, so one
early near-tie cannot cascade into a different continuation.
"""
import argparse
import dataclasses
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from torch_gpt2 import Gpt2, load_checkpoint, precision_context, read_safetensors  # noqa: E402

# Tolerances per precision (starting values). logits, decode_logits, grad: max|ours - ref| /
# max|ref| over the tensor; loss: |ours - ref| / |ref|; tie: a decode token that is not the
# reference's argmax passes as a near-tie when its reference logit is within tie * max|row| of the
# row's maximum.
TOLERANCES = {
    # float32 (cuBLAS with TF32 off, or CPU) against float64: rounding of float32 dot products of
    # length C and 4C through the layers. The gradient runs through the layers twice plus the
    # softmax and layer-norm backward passes, hence 10x the logits' bound; the loss is a mean of
    # many rows, so its rounding averages out.
    "fp32": {"logits": 1e-4, "decode_logits": 1e-4, "grad": 1e-3, "loss": 1e-5, "tie": 1e-4},
    # TF32 products: inputs rounded to a 10-bit mantissa (relative 2^-11, about 5e-4 each),
    # float32 accumulation; errors compound through the layers to about 1e-2 of the largest logit.
    "tf32": {"logits": 2e-2, "decode_logits": 2e-2, "grad": 5e-2, "loss": 1e-2, "tie": 2e-2},
    # bf16 weights and activations into the products (7-bit mantissa, relative 2^-8, about 4e-3
    # each), float32 accumulation: a few times TF32's error.
    "bf16": {"logits": 5e-2, "decode_logits": 5e-2, "grad": 1e-1, "loss": 2e-2, "tie": 5e-2},
    # fp16 inputs to the products (10-bit mantissa, as TF32), float32 accumulation.
    "fp16": {"logits": 2e-2, "decode_logits": 2e-2, "grad": 5e-2, "loss": 1e-2, "tie": 2e-2},
}
# Two float64 references of the same weights differ only by the order of their operations.
CROSS_CHECK_TOL = 1e-9


class InputError(Exception):
    """A missing, malformed or inconsistent input: exit status 2."""


# ---- Inputs -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    ids: np.ndarray  # int32 [N]
    tables: np.ndarray  # float32 [K, C]
    seq_lengths: np.ndarray  # int32 [S]
    loss_rows: np.ndarray  # int32 [R]
    targets: np.ndarray  # int32 [R]

    def spans(self):
        """(first row, end row) of each sequence in the packed rows."""
        ends = np.cumsum(self.seq_lengths)
        return [(int(e - n), int(e)) for n, e in zip(self.seq_lengths, ends)]


@dataclasses.dataclass
class Outputs:
    path: str
    label: str
    precision: str
    logits: np.ndarray  # float32 [N, V]
    loss: np.ndarray  # float32 [1]
    grad: np.ndarray  # float32 [N, C]
    decode_tokens: np.ndarray  # int32 [S, Kd]
    decode_logits: np.ndarray  # float32 [S*Kd, V]


def read_file(path):
    try:
        return read_safetensors(path)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise InputError(str(e)) from None


def field(path, tensors, name, dtype, shape):
    """tensors[name], checked against dtype and shape (None: any length along that axis)."""
    if name not in tensors:
        raise InputError(f"{path}: no tensor {name!r}")
    arr = tensors[name]
    if arr.dtype != dtype:
        raise InputError(f"{path}: {name} is {arr.dtype}, expected {np.dtype(dtype)}")
    fits = arr.ndim == len(shape) and all(w is None or g == w for g, w in zip(arr.shape, shape))
    if not fits:
        expected = ["*" if d is None else d for d in shape]
        raise InputError(f"{path}: {name} has shape {list(arr.shape)}, expected {expected}")
    return arr


def in_range(path, name, arr, low, high):
    if arr.size and (arr.min() < low or arr.max() >= high):
        raise InputError(f"{path}: {name} has values outside [{low}, {high})")


def read_case(path, cfg):
    V, C = cfg["vocab_size"], cfg["n_embd"]
    t, _ = read_file(path)
    ids = field(path, t, "ids", np.int32, (None,))
    tables = field(path, t, "tables", np.float32, (None, C))
    seq_lengths = field(path, t, "seq_lengths", np.int32, (None,))
    loss_rows = field(path, t, "loss_rows", np.int32, (None,))
    targets = field(path, t, "targets", np.int32, (len(loss_rows),))
    if len(seq_lengths) == 0 or len(loss_rows) == 0:
        raise InputError(f"{path}: seq_lengths and loss_rows must not be empty")
    in_range(path, "seq_lengths", seq_lengths, 1, cfg.get("n_positions", 1024) + 1)
    if int(seq_lengths.sum()) != len(ids):
        raise InputError(
            f"{path}: seq_lengths sum to {int(seq_lengths.sum())}, ids has {len(ids)} rows")
    in_range(path, "ids", ids, 0, V + len(tables))
    in_range(path, "loss_rows", loss_rows, 0, len(ids))
    in_range(path, "targets", targets, 0, V)
    return Case(ids, tables, seq_lengths, loss_rows, targets)


def read_outputs(path, case, cfg):
    V, C = cfg["vocab_size"], cfg["n_embd"]
    N, S = len(case.ids), len(case.seq_lengths)
    t, meta = read_file(path)
    label, precision = meta.get("label"), meta.get("precision")
    if not label:
        raise InputError(f"{path}: __metadata__ has no label")
    if precision not in TOLERANCES:
        raise InputError(f"{path}: __metadata__ precision {precision!r} is not one of "
                         f"{', '.join(TOLERANCES)}")
    tokens = field(path, t, "decode_tokens", np.int32, (S, None))
    Kd = tokens.shape[1]
    if Kd == 0:
        raise InputError(f"{path}: decode_tokens has no steps")
    in_range(path, "decode_tokens", tokens, 0, V)
    last = int(case.seq_lengths.max()) + Kd - 1
    if last > cfg.get("n_positions", 1024):
        raise InputError(f"{path}: decode_tokens reach position {last - 1}, past n_positions")
    return Outputs(
        path, label, precision,
        logits=field(path, t, "logits", np.float32, (N, V)),
        loss=field(path, t, "loss", np.float32, (1,)),
        grad=field(path, t, "grad", np.float32, (N, C)),
        decode_tokens=tokens,
        decode_logits=field(path, t, "decode_logits", np.float32, (S * Kd, V)),
    )


# ---- Reference models ---------------------------------------------------------------------------
# Both give: wte [V, C]; logits(x [T, C]) -> [T, V] for one whole sequence without a cache;
# prefill(x [T, C]) -> (logits of the last row [V], cache);
# step(token, cache) -> (logits [V], cache).

class PlainModel:
    def __init__(self, gpt):
        self.gpt = gpt
        self.wte = gpt.wte

    def logits(self, x):
        h, _ = self.gpt.forward(x[None])
        return self.gpt.logits(h[0])

    def prefill(self, x):
        h, past = self.gpt.forward(x[None])
        return self.gpt.logits(h[0, -1]), past

    def step(self, token, past):
        ids = torch.tensor([[token]], device=self.wte.device)
        h, past = self.gpt.forward(self.gpt.embed(ids), past)
        return self.gpt.logits(h[0, -1]), past


class HfModel:
    def __init__(self, model):
        self.model = model
        self.wte = model.get_input_embeddings().weight

    def logits(self, x):
        return self.model(inputs_embeds=x[None], use_cache=False).logits[0]

    def prefill(self, x):
        out = self.model(inputs_embeds=x[None], use_cache=True)
        return out.logits[0, -1], out.past_key_values

    def step(self, token, past):
        # The position comes from the cache's length (transformers' cache_position).
        ids = torch.tensor([[token]], device=self.wte.device)
        out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
        return out.logits[0, -1], out.past_key_values


def load_transformers(model_dir, device):
    """(HfModel in float64 on device, description)."""
    import transformers
    from transformers import GPT2LMHeadModel

    try:  # eager: the plain softmax(QK^T)V, in the model's dtype (no fused kernel)
        model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager")
        attention = "eager attention"
    except Exception:  # a transformers without the option
        model = GPT2LMHeadModel.from_pretrained(model_dir)
        attention = "default attention"
    model = model.to(device=device, dtype=torch.float64).eval()  # eval: no dropout
    model.requires_grad_(False)  # gradients w.r.t. the input embeddings only
    return HfModel(model), f"transformers {transformers.__version__} GPT2LMHeadModel ({attention})"


# ---- References ---------------------------------------------------------------------------------

def input_embeddings(wte, case):
    """[N, C] input embedding of every packed row, in wte's dtype and device."""
    V = wte.shape[0]
    ids = torch.from_numpy(case.ids).long().to(wte.device)
    tables = torch.from_numpy(case.tables).to(device=wte.device, dtype=wte.dtype)
    token = ids < V
    with torch.no_grad():
        x = torch.empty(len(ids), wte.shape[1], dtype=wte.dtype, device=wte.device)
        x[token] = wte[ids[token]]
        x[~token] = tables[ids[~token] - V]
    return x


def forward_references(model, case):
    """Logits [N, V] at every row (each sequence alone), the mean cross-entropy over the loss rows,
    and its gradient w.r.t. every row's input embedding [N, C]."""
    x = input_embeddings(model.wte, case).requires_grad_(True)
    logits = torch.cat([model.logits(x[a:b]) for a, b in case.spans()])
    rows = torch.from_numpy(case.loss_rows).long().to(x.device)
    targets = torch.from_numpy(case.targets).long().to(x.device)
    loss = F.cross_entropy(logits[rows], targets)
    (grad,) = torch.autograd.grad(loss, x)
    return {"logits": logits.detach(), "loss": loss.detach(), "grad": grad}


def decode_reference(model, case, tokens):
    """[S*Kd, V]: per sequence the logits after a cached prefill, then after feeding each of the
    engine's tokens but the last (teacher forcing)."""
    x = input_embeddings(model.wte, case)
    rows = []
    with torch.no_grad():
        for s, (a, b) in enumerate(case.spans()):
            row, cache = model.prefill(x[a:b])
            rows.append(row)
            for k in range(1, tokens.shape[1]):
                row, cache = model.step(int(tokens[s, k - 1]), cache)
                rows.append(row)
    return torch.stack(rows)


def references(model, case, outputs):
    """The forward references, and the decode reference of each outputs file (files that decoded
    the same tokens share one)."""
    ref = forward_references(model, case)
    decoded = {}
    ref["decode"] = {}
    for o in outputs:
        key = (o.decode_tokens.shape, o.decode_tokens.tobytes())
        if key not in decoded:
            decoded[key] = decode_reference(model, case, o.decode_tokens)
        ref["decode"][o.path] = decoded[key]
    return ref


def rel_err(ours, ref):
    """max|ours - ref| / max|ref| in float64; NaN in ours gives NaN (which fails every bound)."""
    ours = ours.to(device=ref.device, dtype=torch.float64)
    return float((ours - ref).abs().max() / ref.abs().max())


def cross_check(hf, plain):
    errs = {k: rel_err(plain[k], hf[k]) for k in ("logits", "grad")}
    errs["decode_logits"] = max(rel_err(plain["decode"][p], hf["decode"][p]) for p in hf["decode"])
    ok = all(e <= CROSS_CHECK_TOL for e in errs.values())
    return {**errs, "tol": CROSS_CHECK_TOL, "pass": ok}


# ---- Comparison ---------------------------------------------------------------------------------

def bounded(err, tol):
    return {"err": err, "tol": tol, "pass": err <= tol}


def check_tokens(tokens, ref, tie):
    """A step passes when the engine's token is the reference argmax, or a near-tie: its reference
    logit within tie * max|row| of the row's maximum (the two rank differently at its precision)."""
    ours = torch.from_numpy(tokens.reshape(-1)).long().to(ref.device)
    agree = ours == ref.argmax(-1)
    gap = ref.max(-1).values - ref.gather(1, ours[:, None])[:, 0]
    near = ~agree & (gap <= tie * ref.abs().max(-1).values)
    n_agree, n_near = int(agree.sum()), int(near.sum())
    return {"agree": n_agree, "near_ties": n_near, "of": len(ours),
            "pass": n_agree + n_near == len(ours)}


def compare(o, ref):
    tol = TOLERANCES[o.precision]
    r = {"file": o.path, "label": o.label, "precision": o.precision}
    for name in ("logits", "grad"):
        r[name] = bounded(rel_err(torch.from_numpy(getattr(o, name)), ref[name]), tol[name])
    loss = float(o.loss[0])
    r["loss"] = bounded(abs(loss - float(ref["loss"])) / abs(float(ref["loss"])), tol["loss"])
    decode = ref["decode"][o.path]
    r["decode_logits"] = bounded(rel_err(torch.from_numpy(o.decode_logits), decode),
                                 tol["decode_logits"])
    r["decode_tokens"] = check_tokens(o.decode_tokens, decode, tol["tie"])
    r["pass"] = all(r[k]["pass"]
                    for k in ("logits", "grad", "loss", "decode_logits", "decode_tokens"))
    return r


def torch_own_error(model, case, ref):
    """For context (never pass/fail): PyTorch's own error against the reference on this case, at
    each precision (model: the plain model with float32 weights on CUDA)."""
    out = {}
    for precision in TOLERANCES:
        try:
            with precision_context(precision, "cuda"):
                r = forward_references(model, case)
            out[precision] = {k: rel_err(r[k], ref[k]) for k in ("logits", "grad", "loss")}
        except Exception as e:  # context only: never stops the check
            out[precision] = {"failed": f"{type(e).__name__}: {e}"}
    return out


def summary_line(r):
    def e(name):
        return f"{name} {r[name]['err']:.1e}/{r[name]['tol']:.0e}"
    t = r["decode_tokens"]
    return (f"{'PASS' if r['pass'] else 'FAIL'} {r['label']} [{r['precision']}] {r['file']}: "
            f"{e('logits')} {e('grad')} {e('loss')} {e('decode_logits')} "
            f"tokens {t['agree']}+{t['near_ties']} near-ties of {t['of']}")


def json_safe(v):
    """NaN and infinities as strings: JSON has no such numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return v


# ---- Main ---------------------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory in HF GPT-2 layout")
    ap.add_argument("--case", required=True)
    ap.add_argument("--json", required=True, help="where to write the result")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("outputs", nargs="+")
    a = ap.parse_args()
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    return a


def load_model_dir(model_dir):
    try:
        cfg, weights = load_checkpoint(model_dir)
    except (OSError, KeyError) as e:
        raise InputError(f"{model_dir}: {e}") from None
    except ValueError as e:
        raise InputError(str(e)) from None
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in cfg]
    if missing:
        raise InputError(f"{model_dir}/config.json: no {', '.join(missing)}")
    return cfg, weights


def plain_model(model_dir, cfg, weights, device, dtype):
    try:
        return PlainModel(Gpt2(cfg, weights, device, dtype))
    except (KeyError, ValueError) as e:  # a weight missing, a setting the plain model lacks
        raise InputError(f"{model_dir}: {e}") from None


def run(a):
    cfg, weights = load_model_dir(a.model)
    case = read_case(a.case, cfg)
    outputs = [read_outputs(p, case, cfg) for p in a.outputs]
    device = torch.device(a.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    plain = references(plain_model(a.model, cfg, weights, device, torch.float64), case, outputs)
    oracle, ref, check, hf_error = "plain Gpt2 (bench/torch_gpt2.py)", plain, None, None
    try:
        import transformers  # noqa: F401  (whether it imports at all)
    except ImportError as e:
        oracle += f"; transformers not importable ({e})"
    else:
        try:
            hf_model, description = load_transformers(a.model, device)
            hf = references(hf_model, case, outputs)
            oracle, ref, check = description, hf, cross_check(hf, plain)
        except Exception as e:  # the plain model stays the oracle
            hf_error = f"{type(e).__name__}: {e}"
    oracle += f", float64 on {device_name}, torch {torch.__version__}"

    results = [compare(o, ref) for o in outputs]
    own = None
    if device.type == "cuda":
        own = torch_own_error(plain_model(a.model, cfg, weights, device, torch.float32), case, ref)
    ok = all(r["pass"] for r in results) and (check is None or check["pass"])
    report = {"oracle": oracle, "device": device_name, "cross_check": check, "hf_error": hf_error,
              "tolerances": TOLERANCES, "results": results, "torch_own_error": own, "pass": ok}
    with open(a.json, "w") as f:
        json.dump(json_safe(report), f, indent=2, allow_nan=False)

    print(f"oracle: {oracle}")
    if hf_error:
        print(f"transformers failed, plain model used: {hf_error}")
    if check is not None:
        print(f"{'PASS' if check['pass'] else 'FAIL'} cross-check transformers vs plain: logits "
              f"{check['logits']:.1e} grad {check['grad']:.1e} decode {check['decode_logits']:.1e} "
              f"(tol {CROSS_CHECK_TOL:.0e})")
    for r in results:
        print(summary_line(r))
    return 0 if ok else 1


def main():
    a = parse_args()
    try:
        sys.exit(run(a))
    except InputError as e:
        print(f"oracle: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
