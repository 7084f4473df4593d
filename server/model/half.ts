/**
 * Frozen matrices kept narrow in memory: in the checkpoint's 16-bit dtype (issue 12: weights stay
 * in their stored dtype in memory), or quantised to int8 with a float32 scale per stored row
 * (`WEIGHTS=int8`, see int8.ts). A packed matrix is widened to float32 only where it is computed
 * on: in panels that fit in cache, or not at all by the native products (`PackedKernels`).
 * Widening 16-bit is exact (every f16 and bf16 value is a float32), so an engine computes the
 * same numbers as on a widened copy, up to summation order; int8 widens to q * scale.
 *
 * Plain objects rather than classes: they cross to the engine worker by structured clone.
 */
import { f16Table } from "./safetensors.ts";

export type HalfDtype = "f16" | "bf16";

export interface HalfMatrix {
  readonly dtype: HalfDtype;
  /** The stored bits, row-major as in the checkpoint. */
  readonly bits: Uint16Array;
}

/**
 * Symmetric int8 with one scale per stored row: element i of row r is `bits[i] * scales[r]`.
 * Rows are the checkpoint's (Conv1D [in, out] rows are input features; an embedding's are tokens).
 */
export interface Int8Matrix {
  readonly dtype: "int8";
  /** The quantised values, row-major, `scales.length` rows. */
  readonly bits: Int8Array;
  /** One per stored row: the row's largest magnitude / 127. */
  readonly scales: Float32Array;
}

/** A matrix kept narrower than float32. */
export type PackedMatrix = HalfMatrix | Int8Matrix;
export type PackedDtype = PackedMatrix["dtype"];

/** A frozen matrix: float32, 16-bit as stored, or int8. */
export type Matrix = Float32Array | PackedMatrix;

export function isPacked(m: Matrix): m is PackedMatrix {
  return !(m instanceof Float32Array);
}

/** Number of elements. */
export function matrixLength(m: Matrix): number {
  return isPacked(m) ? m.bits.length : m.length;
}

/** Bytes the matrix occupies (as stored; an int8 matrix's scales included). */
export function matrixBytes(m: Matrix): number {
  if (!isPacked(m)) return m.byteLength;
  return m.bits.byteLength + (m.dtype === "int8" ? m.scales.byteLength : 0);
}

/**
 * out[outAt .. outAt+n) = float32 of elements [from, from+n) of `m` (exact for 16-bit; int8 as
 * `q * scale`, rounded to float32).
 */
export function widenInto(
  m: PackedMatrix,
  from: number,
  n: number,
  out: Float32Array,
  outAt = 0,
): void {
  if (from < 0 || n < 0 || from + n > m.bits.length || outAt + n > out.length) {
    throw new RangeError(
      `widen: elements [${from}, ${from + n}) of ${m.bits.length} into ${out.length} at ${outAt}`,
    );
  }
  if (m.dtype === "int8") {
    const q = m.bits, s = m.scales, width = q.length / s.length;
    for (let i = 0; i < n; i++) {
      const at = from + i;
      out[outAt + i] = Math.fround(q[at] * s[Math.floor(at / width)]);
    }
    return;
  }
  const h = m.bits;
  if (m.dtype === "bf16") {
    // bf16 is the top half of a float32: shift the bits into place.
    const u = new Uint32Array(out.buffer, out.byteOffset + outAt * 4, n);
    for (let i = 0; i < n; i++) u[i] = h[from + i] << 16;
  } else {
    const table = f16Table();
    for (let i = 0; i < n; i++) out[outAt + i] = table[h[from + i]];
  }
}

/** The matrix as float32: `m` itself, or a widened copy. */
export function toFloat32(m: Matrix): Float32Array {
  if (!isPacked(m)) return m;
  const out = new Float32Array(m.bits.length);
  widenInto(m, 0, m.bits.length, out);
  return out;
}

/** out[outAt .. outAt+n) = elements [from, from+n) of `m` as float32 (copied or widened). */
export function copyInto(m: Matrix, from: number, n: number, out: Float32Array, outAt = 0): void {
  if (isPacked(m)) widenInto(m, from, n, out, outAt);
  else out.set(m.subarray(from, from + n), outAt);
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** float32 -> bf16 bits, rounding to nearest even (NaN stays NaN). */
export function toBf16Bits(x: number): number {
  F32[0] = x;
  const u = U32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40; // quiet NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 -> f16 bits, rounding to nearest even (overflow to infinity, subnormals kept). */
export function toF16Bits(x: number): number {
  F32[0] = x;
  const u = U32[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let v = mant >>> shift;
    if (rest > half || (rest === half && (v & 1))) v++;
    return sign | v;
  }
  let v = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (v & 1))) {
    v++;
    if (v === 0x400) {
      v = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | v;
}

/** x rounded to the nearest `dtype` value (ties to even), as a float32 number (exact). */
export function roundToHalf(dtype: HalfDtype, x: number): number {
  if (dtype === "f16") return f16Table()[toF16Bits(x)];
  U32[0] = toBf16Bits(x) << 16;
  return F32[0];
}

/** A 16-bit copy of float32 values (rounded to nearest even): for tests and benchmarks. */
export function halfFromFloat32(dtype: HalfDtype, a: Float32Array): HalfMatrix {
  const bits = new Uint16Array(a.length);
  const round = dtype === "bf16" ? toBf16Bits : toF16Bits;
  for (let i = 0; i < a.length; i++) bits[i] = round(a[i]);
  return { dtype, bits };
}

/**
 * Products on packed weights in native code (the oneDNN shim): each weight is read once, in its
 * stored width, and widened in registers. Used for the few-row products of decoding, where
 * reading the weights is the whole cost.
 */
export interface PackedKernels {
  /**
   * out[0..n) = float32 of elements [from, from+n) of `w` (as `widenInto`; every core). For
   * int8, `from` and `n` must cover whole rows.
   */
  widen(w: PackedMatrix, from: number, n: number, out: Float32Array): void;
  /**
   * y [m, N] = x [m, K] @ W (+ y when `accumulate`), W logical [K, N], stored [K, N], or
   * [N, K] when `transposed`. Every core; any m, fastest for a few rows. W may be float32 too:
   * the same streaming of each weight once, which a few rows need (a GEMM library's matmul
   * reads float32 weights at 1.5-2.4x the time of reading them once at one row; this at 0.8-1.0x).
   */
  product(
    m: number,
    K: number,
    N: number,
    x: Float32Array,
    w: Matrix,
    transposed: boolean,
    accumulate: boolean,
    y: Float32Array,
  ): void;
}
