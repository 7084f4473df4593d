/**
 * Picks each sequence's next token from its logits row, following Hugging Face's processing order:
 * repetition penalty -> min_new_tokens (EOS suppressed) -> [sampling only: temperature -> top_k ->
 * top_p] -> argmax or a draw from the request's own PRNG. One `SequenceSampler` per request, so a
 * request's output depends on its own logits and seed only, never on its batch mates.
 */
import { Prng } from "./prng.ts";

/** The validated form the sampler and scheduler work from. */
export interface SamplingParams {
  maxNewTokens: number;
  minNewTokens: number;
  /** false: argmax (ties go to the lowest id). */
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  /** uint32 seed of this request's PRNG. */
  seed: number;
  repetitionPenalty: number;
  stop: string[];
  logprobs: boolean;
}

export interface SampledToken {
  tokenId: number;
  /** log-softmax of the processed distribution at `tokenId`; present when params.logprobs. */
  logprob?: number;
}

export class SequenceSampler {
  readonly #params: SamplingParams;
  readonly #eosId: number;
  readonly #rng: Prng;
  /** Real token ids of the prompt and of what was generated: the repetition-penalty set. */
  readonly #seen = new Set<number>();
  #generated = 0;

  /** `promptIds` may hold virtual ids (>= vocabSize); they are not tokens and are not penalised. */
  constructor(
    params: SamplingParams,
    promptIds: ArrayLike<number>,
    vocabSize: number,
    eosId: number,
  ) {
    this.#params = params;
    this.#eosId = eosId;
    this.#rng = new Prng(params.seed);
    if (params.repetitionPenalty !== 1) {
      for (let i = 0; i < promptIds.length; i++) {
        if (promptIds[i] < vocabSize) this.#seen.add(promptIds[i]);
      }
    }
  }

  /** Tokens chosen so far. */
  get generated(): number {
    return this.#generated;
  }

  /** Chooses the next token from `row` ([vocab] logits), which it overwrites as scratch. */
  next(row: Float32Array): SampledToken {
    const p = this.#params;
    applyRepetitionPenalty(row, this.#seen, p.repetitionPenalty);
    if (this.#generated < p.minNewTokens && this.#eosId < row.length) {
      row[this.#eosId] = -Infinity;
    }
    const picked = p.doSample ? this.#draw(row) : greedy(row, p.logprobs);
    this.#generated++;
    if (p.repetitionPenalty !== 1) this.#seen.add(picked.tokenId);
    return picked;
  }

  #draw(row: Float32Array): SampledToken {
    const p = this.#params;
    if (p.temperature !== 1) {
      const inv = 1 / p.temperature;
      for (let i = 0; i < row.length; i++) row[i] *= inv;
    }
    if (p.topK > 0 && p.topK < row.length) maskBelow(row, kthLargest(row, p.topK));
    // From here `row` holds unnormalised probabilities exp(l - max); masked tokens hold 0.
    const total = expInPlace(row);
    let kept = total;
    let order: Int32Array | undefined;
    if (p.topP < 1) {
      order = nucleus(row, total, p.topP);
      kept = 0;
      for (let j = 0; j < order.length; j++) kept += row[order[j]];
    }
    let u = this.#rng.next() * kept;
    let tokenId = -1;
    if (order) {
      for (let j = 0; j < order.length && tokenId < 0; j++) {
        u -= row[order[j]];
        if (u < 0) tokenId = order[j];
      }
      if (tokenId < 0) tokenId = order[order.length - 1];
    } else {
      let last = -1;
      for (let i = 0; i < row.length && tokenId < 0; i++) {
        if (row[i] === 0) continue;
        last = i;
        u -= row[i];
        if (u < 0) tokenId = i;
      }
      // Rounding can leave u a hair above 0 after the last token: it is the last kept one.
      if (tokenId < 0) tokenId = last;
    }
    const out: SampledToken = { tokenId };
    if (p.logprobs) out.logprob = Math.log(row[tokenId] / kept);
    return out;
  }
}

/** HF/CTRL: positive logits are divided by the penalty, negative ones multiplied. */
export function applyRepetitionPenalty(
  row: Float32Array,
  seen: Iterable<number>,
  penalty: number,
): void {
  if (penalty === 1) return;
  for (const id of seen) {
    const l = row[id];
    row[id] = l > 0 ? l / penalty : l * penalty;
  }
}

/** log(sum(exp(row))): the normaliser of log-softmax, stable for any logits. */
export function logSumExp(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return max + Math.log(sum);
}

/** log softmax(row)[id]: the log-probability of `id` under the unprocessed logits `row`. */
export function logprobOf(row: Float32Array, id: number): number {
  return row[id] - logSumExp(row);
}

/** Argmax (the lowest id wins ties) and, if asked, its log-softmax. */
export function greedy(row: Float32Array, withLogprob: boolean): SampledToken {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  const out: SampledToken = { tokenId: best };
  if (withLogprob) {
    const max = row[best];
    let sum = 0;
    for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
    out.logprob = -Math.log(sum);
  }
  return out;
}

/** The k-th largest value of `row` (a size-k min-heap: O(V log k), no full sort). */
export function kthLargest(row: Float32Array, k: number): number {
  const heap = new Float64Array(k);
  let n = 0;
  for (let i = 0; i < row.length; i++) {
    const v = row[i];
    if (n < k) {
      let c = n++;
      heap[c] = v;
      while (c > 0) {
        const parent = (c - 1) >> 1;
        if (heap[parent] <= heap[c]) break;
        [heap[parent], heap[c]] = [heap[c], heap[parent]];
        c = parent;
      }
    } else if (v > heap[0]) {
      heap[0] = v;
      let c = 0;
      for (;;) {
        const l = 2 * c + 1, r = l + 1;
        let m = c;
        if (l < k && heap[l] < heap[m]) m = l;
        if (r < k && heap[r] < heap[m]) m = r;
        if (m === c) break;
        [heap[m], heap[c]] = [heap[c], heap[m]];
        c = m;
      }
    }
  }
  return heap[0];
}

/** Masks every value below `threshold` (ties with the k-th value are kept, as in HF). */
function maskBelow(row: Float32Array, threshold: number): void {
  for (let i = 0; i < row.length; i++) if (row[i] < threshold) row[i] = -Infinity;
}

/** row[i] = exp(row[i] - max); returns the sum. */
function expInPlace(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    const e = Math.exp(row[i] - max);
    row[i] = e;
    sum += e;
  }
  return sum;
}

/**
 * The smallest set of most likely tokens whose mass reaches `topP`, most likely first (ties: lower
 * id first). Only tokens above a probability threshold are sorted; the threshold drops until the
 * candidates hold at least `topP` of the mass, which guarantees the nucleus is among them.
 */
export function nucleus(probs: Float32Array, total: number, topP: number): Int32Array {
  const target = topP * total;
  let max = 0;
  for (let i = 0; i < probs.length; i++) if (probs[i] > max) max = probs[i];
  let candidates: number[] = [];
  for (const frac of [1e-2, 1e-4, 1e-6, 0]) {
    const threshold = max * frac;
    candidates = [];
    let mass = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i] > 0 && probs[i] >= threshold) {
        candidates.push(i);
        mass += probs[i];
      }
    }
    if (mass >= target) break;
  }
  candidates.sort((a, b) => probs[b] - probs[a] || a - b);
  let cum = 0;
  let n = 0;
  // Keep a token while the mass before it is below topP (HF: remove cumulative <= 1 - top_p).
  while (n < candidates.length && cum < target) cum += probs[candidates[n++]];
  return Int32Array.from(candidates.slice(0, Math.max(1, n)));
}
