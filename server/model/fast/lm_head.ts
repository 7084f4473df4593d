/**
 * The end both block families share: the final norm of the rows whose logits are read, the
 * (tied or separate) head's product, and for training the cross-entropy and its gradient back to
 * the last block's output rows. Only the norm differs (GPT-2's LayerNorm, Llama's RMSNorm).
 */
import type { Arena } from "./arena.ts";
import { crossEntropyGrad } from "./kernels.ts";
import type { FrozenLinear } from "./ops.ts";

/** A row norm over [rows, C] with its training form and input gradient. */
export interface FinalNorm {
  /** out = norm(x); with xhat and rstd, keeps them for `backward`. */
  forward(
    x: Float32Array,
    rows: number,
    out: Float32Array,
    xhat?: Float32Array,
    rstd?: Float32Array,
  ): void;
  /** dx += d(norm)/dx applied to dy. */
  backward(
    dy: Float32Array,
    xhat: Float32Array,
    rstd: Float32Array,
    rows: number,
    dx: Float32Array,
  ): void;
}

/** x's rows `outRows` (indices into x [*, C]) gathered into a [R, C] buffer of the arena. */
function gather(a: Arena, x: Float32Array, outRows: Int32Array, C: number): Float32Array {
  const R = outRows.length;
  const rows = a.f32("final", R * C); // [R, C]
  for (let i = 0; i < R; i++) rows.set(x.subarray(outRows[i] * C, (outRows[i] + 1) * C), i * C);
  return rows;
}

/** Logits [R, V] at x's rows `outRows`: head(norm(rows)). */
export function logitsAt(
  a: Arena,
  norm: FinalNorm,
  head: FrozenLinear,
  x: Float32Array,
  outRows: Int32Array,
  C: number,
  V: number,
): Float32Array {
  const R = outRows.length;
  const hf = a.f32("finalNorm", R * C); // [R, C]
  norm.forward(gather(a, x, outRows, C), R, hf);
  const logits = new Float32Array(R * V); // [R, V]
  head.forward(R, hf, logits, {});
  return logits;
}

/**
 * Mean cross-entropy of `targets` at x's rows `outRows`, and its gradient with respect to the
 * last block's M output rows (x), summed where rows repeat. `lap` marks the phases (profiling).
 */
export function lossAt(
  a: Arena,
  norm: FinalNorm,
  head: FrozenLinear,
  x: Float32Array,
  outRows: Int32Array,
  targets: Int32Array,
  dims: { C: number; V: number; M: number },
  lap: (phase: string) => void = () => {},
): { loss: number; dOut: Float32Array } {
  const { C, V, M } = dims;
  const R = outRows.length;
  const hf = a.f32("finalNorm", R * C); // [R, C]
  const fx = a.f32("finalXhat", R * C); // [R, C]
  const fr = a.f32("finalRstd", R); // [R]
  norm.forward(gather(a, x, outRows, C), R, hf, fx, fr);
  const logits = a.f32("logits", R * V); // [R, V]
  head.forward(R, hf, logits, {});
  lap("logits");
  const loss = crossEntropyGrad(logits, R, V, targets); // logits now hold dlogits
  lap("loss");

  const dhf = a.f32("dFinalNorm", R * C); // [R, C]
  head.backward(R, logits, dhf);
  const drows = a.f32("dFinal", R * C).fill(0, 0, R * C); // [R, C]
  norm.backward(dhf, fx, fr, R, drows);
  const dOut = a.f32("dLastOut", M * C).fill(0, 0, M * C); // [M, C]
  for (let i = 0; i < R; i++) {
    const src = i * C, dst = outRows[i] * C;
    for (let c = 0; c < C; c++) dOut[dst + c] += drows[src + c];
  }
  lap("back.logits");
  return { loss, dOut };
}
