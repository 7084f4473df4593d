/**
 * int8 weight-only quantisation (`WEIGHTS=int8`, issue 25): decoding reads every frozen weight
 * once per step, so its floor is the weights' bytes; int8 halves bf16's and quarters float32's.
 *
 * Symmetric, one scale per stored row: `scale = max |row| / 127` (the absmax convention of
 * weight-only int8, e.g. bitsandbytes' row-wise quantisation), `q = round(w / scale)` rounded to
 * nearest even and clamped to [-127, 127], computed as PyTorch quantises (aten/src/ATen/native/
 * quantized/AffineQuantizerBase.cpp, `quantize_val`: `Round(value * inv_scale)` with
 * `inv_scale = 1.0f / scale`, Round = nearbyint); the test checks the values against
 * `torch.quantize_per_channel` with these scales and zero points. Only the frozen matrices are quantised:
 * biases, layer norms and positions stay float32, activations stay float32, and prompt tables are
 * tuned and served in float32 as ever. The model's fingerprint stays the checkpoint's: tasks tuned
 * on the full-precision weights are served as they are (the README states the difference).
 */
import { copyInto, type Int8Matrix, type Matrix, matrixLength } from "./half.ts";
import { release } from "./mmap.ts";
import {
  type Gpt2Model,
  type Gpt2Weights,
  isLlama,
  type LlamaWeights,
  type LoadedModel,
} from "./weights.ts";

/** How the service keeps the frozen matrices: as the checkpoint stores them, or int8. */
export const WEIGHT_MODES = ["stored", "int8"] as const;
export type WeightMode = (typeof WEIGHT_MODES)[number];

export function parseWeightMode(raw: string, what: string): WeightMode {
  if ((WEIGHT_MODES as readonly string[]).includes(raw)) return raw as WeightMode;
  throw new RangeError(`${what} must be one of ${WEIGHT_MODES.join(", ")}: found "${raw}"`);
}

/** The largest |a[at + i]| for i < n (NaN and infinities make it non-finite). */
function absMax(a: Float32Array, at: number, n: number): number {
  let m = 0;
  for (let i = 0; i < n; i++) {
    const v = Math.abs(a[at + i]);
    if (!(v <= m)) m = v;
  }
  return m;
}

/**
 * q[out + i] = fround(a[at + i] * inv) rounded to the nearest integer, ties to even (C's
 * nearbyint), clamped to [-127, 127]. floor(x + 0.5) is exact for these x (float32, |x| < 2^23)
 * and, unlike Math.round, fast on values near zero (measured: 0.9 against 8.8 ns a value).
 */
function quantizeRow(
  a: Float32Array,
  at: number,
  n: number,
  inv: number,
  q: Int8Array,
  out: number,
): void {
  for (let i = 0; i < n; i++) {
    const x = Math.fround(a[at + i] * inv);
    let v = Math.floor(x + 0.5); // ties toward +infinity: made even below
    if (v - x === 0.5 && (v & 1) !== 0) v--;
    q[out + i] = v > 127 ? 127 : v < -127 ? -127 : v;
  }
}

/** `m` ([rows, length / rows] row-major, any dtype) quantised to int8 with one scale per row. */
export function quantizeInt8(m: Matrix, rows: number): Int8Matrix {
  const n = matrixLength(m);
  if (!Number.isInteger(rows) || rows < 1 || n % rows !== 0) {
    throw new RangeError(`quantizeInt8: ${n} values do not make ${rows} rows`);
  }
  const width = n / rows;
  const bits = new Int8Array(n), scales = new Float32Array(rows);
  // A float32 source is read in place; a 16-bit one is widened a row at a time.
  const src = m instanceof Float32Array ? m : new Float32Array(width);
  for (let r = 0; r < rows; r++) {
    let at = r * width;
    if (src !== m) {
      copyInto(m, at, width, src);
      at = 0;
    }
    const amax = absMax(src, at, width);
    if (!Number.isFinite(amax)) {
      throw new RangeError(`quantizeInt8: row ${r} holds a non-finite value`);
    }
    const s = Math.fround(amax / 127);
    scales[r] = s;
    if (s !== 0) quantizeRow(src, at, width, Math.fround(1 / s), bits, r * width); // else zeros
  }
  return { dtype: "int8", bits, scales };
}

/**
 * The model with every frozen matrix quantised to int8 (vectors and positions kept). A mapped
 * source's pages are released once read, so the process keeps the int8 copy alone.
 */
export function quantizeModel<M extends LoadedModel>(model: M): M {
  const { nEmbd: C, nInner: F, vocabSize: V } = model.config;
  const q = (m: Matrix, rows: number): Int8Matrix => {
    const out = quantizeInt8(m, rows);
    release(m instanceof Float32Array ? m : m.bits);
    return out;
  };
  if (isLlama(model)) {
    // nn.Linear weights are [out, in]: a stored row is an output feature.
    const { nHead: H, nKvHead: KVH, headDim: D } = model.config;
    const w = model.weights;
    const weights: LlamaWeights = {
      ...w,
      wte: q(w.wte, V),
      layers: w.layers.map((l) => ({
        ...l,
        q: q(l.q, H * D),
        k: q(l.k, KVH * D),
        v: q(l.v, KVH * D),
        o: q(l.o, C),
        gate: q(l.gate, F),
        up: q(l.up, F),
        down: q(l.down, C),
      })),
      lmHead: w.lmHead ? q(w.lmHead, V) : undefined,
    };
    return { ...model, weights };
  }
  const w = (model as Gpt2Model).weights;
  const weights: Gpt2Weights = {
    ...w,
    wte: q(w.wte, V),
    layers: w.layers.map((l) => ({
      ...l,
      attnW: q(l.attnW, C),
      attnProjW: q(l.attnProjW, C),
      fcW: q(l.fcW, C),
      fcProjW: q(l.fcProjW, F),
    })),
    lmHead: w.lmHead ? q(w.lmHead, V) : undefined,
  };
  return { ...model, weights };
}
