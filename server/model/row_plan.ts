/**
 * Row plans shared by the engines that skip work the caller will not read (fast, cuda): which
 * rows each block computes, and where an input row lands in a block's output.
 */
import type { SeqSpan } from "./engine.ts";

/**
 * Which rows a block computes. Every block needs keys and values of all rows, but the last one
 * only needs its output (queries, projection, MLP) at the rows the logits or the loss read: per
 * sequence the rows from the first wanted one to its end, gathered into M output rows.
 */
export interface RowPlan {
  /** Every row is an output row, in place (M = N). */
  full: boolean;
  /** [seqs] first row (relative to the sequence) whose output is computed. */
  qStart: Int32Array;
  /** [seqs] output row of that first computed row. */
  outRow0: Int32Array;
  /** [seqs] offset of the sequence's attention probabilities (H blocks of [Tq, S]). */
  probOff: Int32Array;
  probTotal: number;
  /** Output rows. */
  M: number;
  /** [M] input row of each output row (partial plans). */
  rows: Int32Array;
}

/** The plan computing every row, or, given `wanted` rows, only what reading those rows needs. */
export function makePlan(
  seqs: SeqSpan[],
  starts: Int32Array,
  N: number,
  H: number,
  wanted?: Int32Array,
): RowPlan {
  const n = seqs.length;
  const qStart = new Int32Array(n), outRow0 = new Int32Array(n), probOff = new Int32Array(n);
  if (wanted) {
    for (let s = 0; s < n; s++) qStart[s] = seqs[s].length;
    let s = 0;
    const sorted = Int32Array.from(wanted).sort();
    for (const r of sorted) {
      while (r >= starts[s] + seqs[s].length) s++;
      qStart[s] = Math.min(qStart[s], r - starts[s]);
    }
  }
  let M = 0, probTotal = 0;
  for (let s = 0; s < n; s++) {
    const T = seqs[s].length, Tq = T - qStart[s], S = (seqs[s].cache?.length ?? 0) + T;
    outRow0[s] = M;
    probOff[s] = probTotal;
    M += Tq;
    probTotal += H * Tq * S;
  }
  const full = M === N;
  const rows = new Int32Array(full ? 0 : M);
  if (!full) {
    for (let s = 0; s < n; s++) {
      for (let t = qStart[s]; t < seqs[s].length; t++) {
        rows[outRow0[s] + t - qStart[s]] = starts[s] + t;
      }
    }
  }
  return { full, qStart, outRow0, probOff, probTotal, M, rows };
}

/** Output row of input row r under a plan (r must be one of the plan's rows). */
export function outRowOf(plan: RowPlan, seqs: SeqSpan[], starts: Int32Array, r: number): number {
  if (plan.full) return r;
  let lo = 0, hi = seqs.length - 1;
  while (lo < hi) { // last sequence whose start <= r
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= r) lo = mid;
    else hi = mid - 1;
  }
  while (seqs[lo].length === 0 || r >= starts[lo] + seqs[lo].length) lo++;
  return plan.outRow0[lo] + r - starts[lo] - plan.qStart[lo];
}
