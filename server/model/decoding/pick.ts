/**
 * What a caller needs from each logit row, computed where the logits are: a token choice
 * (`pickToken`), the log-probabilities of given ids (scoring candidate answers), or nothing. With
 * the engine in a worker, only these cross back to the event loop: a few numbers per row instead
 * of a row of the vocabulary's size.
 */
import { logSumExp, type PickSpec, pickToken, type SampledToken } from "./sampler.ts";

export type RowPick =
  /** The next token, chosen as `spec` says. */
  | { token: PickSpec }
  /** log softmax(row) at each of these ids (no temperature or penalty). */
  | { targets: Int32Array }
  /** Nothing (the row's logits were not needed). */
  | null;

export type RowPicked = SampledToken | { logprobs: number[] } | null;

/** Applies `picks[r]` to row r of `logits` ([picks.length, vocab]; rows used as scratch). */
export function pickRows(
  logits: Float32Array,
  vocab: number,
  picks: readonly RowPick[],
): RowPicked[] {
  if (logits.length !== picks.length * vocab) {
    throw new RangeError(
      `pickRows: ${logits.length} logits are not ${picks.length} rows of ${vocab}`,
    );
  }
  return picks.map((p, r) => {
    if (p === null) return null;
    const row = logits.subarray(r * vocab, (r + 1) * vocab);
    if ("token" in p) return pickToken(row, p.token);
    const lse = logSumExp(row); // one normaliser for every id of the row
    return { logprobs: Array.from(p.targets, (id) => row[id] - lse) };
  });
}
