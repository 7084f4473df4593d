/**
 * Picks each sequence's next token from its logits row, following Hugging Face's processing order:
 * repetition penalty -> min_new_tokens (EOS suppressed) -> [sampling only: temperature -> top_k ->
 * top_p] -> argmax or a draw from the request's own PRNG. One `SequenceSampler` per request, so a
 * request's output depends on its own logits and seed only, never on its batch mates.
 *
 * A step is split in two so that the logits need not travel: the sampler (the request's state:
 * tokens seen, tokens generated, its PRNG) states the step as a `PickSpec`, a plain object that
 * draws the step's random number in advance; `pickToken` applies it to the logits row wherever
 * that row is (in the engine worker, which then sends back the token alone); the sampler then
 * records the token. `next` does the three in one place.
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

/**
 * One step's token choice without the logits: everything `pickToken` needs besides the row. A
 * plain object (it crosses to the engine worker).
 */
export interface PickSpec {
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  /** The ids the repetition penalty applies to (present when it is not 1). */
  seen?: Int32Array;
  /** EOS must not be picked yet (fewer than min_new_tokens so far). */
  suppressEos: boolean;
  eosId: number;
  /** The request's uniform draw in [0, 1) for this step (sampling only). */
  u?: number;
  logprobs: boolean;
  /** Constrained decoding: the only ids that may be picked this step. */
  allowed?: Int32Array;
}

/** Applies `spec` to `row` ([vocab] logits, overwritten as scratch) and returns the token. */
export function pickToken(row: Float32Array, spec: PickSpec): SampledToken {
  if (spec.allowed) row = maskLogits(row, spec.allowed);
  if (spec.seen) applyRepetitionPenalty(row, spec.seen, spec.repetitionPenalty);
  if (spec.suppressEos && spec.eosId < row.length) row[spec.eosId] = -Infinity;
  return spec.doSample ? draw(row, spec) : greedy(row, spec.logprobs);
}

/** Sets every logit of `row` but `allowed`'s to -Infinity (a copy; `row` is left as it was). */
export function maskLogits(row: Float32Array, allowed: ArrayLike<number>): Float32Array {
  const out = new Float32Array(row.length).fill(-Infinity);
  for (let i = 0; i < allowed.length; i++) out[allowed[i]] = row[allowed[i]];
  return out;
}

/** temperature -> top_k -> top_p -> a draw at `spec.u` of the kept mass. */
function draw(row: Float32Array, p: PickSpec): SampledToken {
  if (p.u === undefined) throw new RangeError("a sampling step needs its draw (spec.u)");
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
  let u = p.u * kept;
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

  /**
   * The next step as a `PickSpec` (drawing its random number: call once per step, then `record`
   * the token `pickToken` chose). `allowed`: constrained decoding's ids for this step.
   */
  spec(allowed?: ArrayLike<number>): PickSpec {
    const p = this.#params;
    const spec: PickSpec = {
      doSample: p.doSample,
      temperature: p.temperature,
      topK: p.topK,
      topP: p.topP,
      repetitionPenalty: p.repetitionPenalty,
      suppressEos: this.#generated < p.minNewTokens,
      eosId: this.#eosId,
      logprobs: p.logprobs,
    };
    if (p.repetitionPenalty !== 1) spec.seen = Int32Array.from(this.#seen);
    if (p.doSample) spec.u = this.#rng.next();
    if (allowed) spec.allowed = Int32Array.from(allowed);
    return spec;
  }

  /** Records the token picked for the last `spec()`. */
  record(tokenId: number): void {
    this.#generated++;
    if (this.#params.repetitionPenalty !== 1) this.#seen.add(tokenId);
  }

  /** Chooses the next token from `row` ([vocab] logits), which it overwrites as scratch. */
  next(row: Float32Array, allowed?: ArrayLike<number>): SampledToken {
    const picked = pickToken(row, this.spec(allowed));
    this.record(picked.tokenId);
    return picked;
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
