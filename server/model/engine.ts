/**
 * The contract every GPT-2 engine implements (the TensorFlow.js engine and the fast CPU engine).
 *
 * Inputs are *packed*: the tokens of all sequences in a batch are concatenated row after row
 * ([N, C], no padding), and `seqs` says how many rows belong to each sequence. Packing means a
 * batch that mixes sequences of different lengths (and tasks with different virtual-token counts)
 * spends no compute on padding, and each sequence sees exactly what it would see alone.
 * Padded callers use `packPadded()` from `padding.ts`.
 */
import type { ModelConfig } from "./model_config.ts";
import { copyInto, type Matrix, matrixLength } from "./half.ts";
import { pickRows, type RowPick, type RowPicked } from "./decoding/pick.ts";

/** Keys and values a sequence has seen so far, one growing store per sequence. */
export interface KvCache {
  /** Tokens already stored (the next token's default position). */
  readonly length: number;
  /** Releases the memory held (tensors in the TF.js engine). Idempotent. */
  dispose(): void;
}

export interface SeqSpan {
  /** Rows of the packed input that belong to this sequence (they follow the previous span's). */
  length: number;
  /** Past keys/values to attend to; this call appends its rows to it. Omit for no cache. */
  cache?: KvCache;
}

export interface ForwardInput {
  /** [N, C] input embeddings (word embeddings or soft-prompt rows; positions are added inside). */
  embeds: Float32Array;
  seqs: SeqSpan[];
  /** [N] position ids; default: cache length + 0..len-1 within each sequence. */
  positions?: Int32Array;
  /** Rows (indices into N) whose logits are wanted; others are never projected to the vocabulary. */
  logitRows: Int32Array;
}

export interface ForwardOutput {
  /** [logitRows.length, vocab] */
  logits: Float32Array;
}

export interface LossInput extends Omit<ForwardInput, "logitRows"> {
  /** Rows whose next token is scored (answer-only loss): the row *before* each target token. */
  lossRows: Int32Array;
  /** [lossRows.length] target ids. */
  targets: Int32Array;
}

export interface LossOutput {
  /** Mean cross-entropy over the loss rows. */
  loss: number;
  /** [N, C] d(loss)/d(embeds). No weight gradient is ever computed. */
  gradEmbeds: Float32Array;
}

export interface Engine {
  readonly name: string;
  readonly config: ModelConfig;
  /**
   * true when the engine computes on another thread (the engine worker, a GPU): awaiting its calls
   * leaves this thread's event loop free, so callers need not yield between them for I/O to run.
   */
  readonly offThread?: boolean;
  /** [ids.length, C] rows of the frozen token-embedding table. */
  embed(ids: ArrayLike<number>): Float32Array;
  forward(input: ForwardInput): Promise<ForwardOutput>;
  /**
   * Optional: `forward`, then each logit row reduced by `pickRows` where the logits are (the
   * worker engine does it in the worker, so only tokens and log-probabilities cross back). Call
   * it through `forwardPicked()`, which falls back to `forward` for engines without it.
   */
  forwardPicked?(input: ForwardInput, picks: readonly RowPick[]): Promise<RowPicked[]>;
  lossAndGrad(input: LossInput): Promise<LossOutput>;
  newCache(): KvCache;
  /**
   * A new cache holding a copy of `cache`'s first `rows` rows (default: all): each copy then grows
   * on its own. Scoring forks a prompt's cache once per candidate answer, and serving keeps a task's
   * shared prompt prefix to fork for each of its requests, so shared rows are computed once.
   */
  forkCache(cache: KvCache, rows?: number): KvCache;
  dispose(): void;
}

/**
 * `engine.forward(input)` with each logit row (row r is `input.logitRows[r]`'s) reduced as
 * `picks[r]` says: the engine's own `forwardPicked` where it has one, else on the logits here.
 */
export async function forwardPicked(
  engine: Engine,
  input: ForwardInput,
  picks: readonly RowPick[],
): Promise<RowPicked[]> {
  if (picks.length !== input.logitRows.length) {
    throw new RangeError(
      `forwardPicked: ${picks.length} picks for ${input.logitRows.length} logit rows`,
    );
  }
  if (engine.forwardPicked) return await engine.forwardPicked(input, picks);
  const { logits } = await engine.forward(input);
  return pickRows(logits, engine.config.vocabSize, picks);
}

/** [ids.length, C] rows of `wte` [V, C]; every id must be an integer in [0, V). */
export function embedRows(wte: Matrix, C: number, ids: ArrayLike<number>): Float32Array {
  const V = matrixLength(wte) / C;
  const out = new Float32Array(ids.length * C); // [ids, C]
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= V) {
      throw new RangeError(`ids[${i}] must be an integer in [0, ${V}): found ${id}`);
    }
    copyInto(wte, id * C, C, out, i * C);
  }
  return out;
}

/** Refuses a fork of more rows than the cache holds (or a non-integer count). */
export function checkForkRows(rows: number, length: number): void {
  if (!Number.isInteger(rows) || rows < 0 || rows > length) {
    throw new RangeError(`forkCache: rows must be an integer in [0, ${length}]: found ${rows}`);
  }
}

/** Offsets of each sequence's first row in the packed input. */
export function spanStarts(seqs: SeqSpan[]): Int32Array {
  const starts = new Int32Array(seqs.length);
  let at = 0;
  for (let i = 0; i < seqs.length; i++) {
    starts[i] = at;
    at += seqs[i].length;
  }
  return starts;
}

/** Default positions: each sequence continues from its cache length. */
export function defaultPositions(seqs: SeqSpan[]): Int32Array {
  const total = seqs.reduce((n, s) => n + s.length, 0);
  const pos = new Int32Array(total);
  let at = 0;
  for (const s of seqs) {
    const base = s.cache?.length ?? 0;
    for (let t = 0; t < s.length; t++) pos[at++] = base + t;
  }
  return pos;
}

/** Checks the shapes of a packed input; throws RangeError naming the field. */
export function validatePacked(
  config: ModelConfig,
  embeds: Float32Array,
  seqs: SeqSpan[],
  positions: Int32Array | undefined,
  rows: Int32Array,
  rowsField: string,
): number {
  const C = config.nEmbd;
  const total = seqs.reduce((n, s) => n + s.length, 0);
  if (embeds.length !== total * C) {
    throw new RangeError(
      `embeds must hold ${total} x ${C} = ${
        total * C
      } values for the given seqs: found ${embeds.length}`,
    );
  }
  for (const [i, s] of seqs.entries()) {
    if (!Number.isInteger(s.length) || s.length < 0) {
      throw new RangeError(`seqs[${i}].length must be a non-negative integer: found ${s.length}`);
    }
    if ((s.cache?.length ?? 0) + s.length > config.nPositions) {
      throw new RangeError(
        `seqs[${i}] would reach ${
          (s.cache?.length ?? 0) + s.length
        } tokens: the model's n_positions is ${config.nPositions}`,
      );
    }
  }
  if (positions && positions.length !== total) {
    throw new RangeError(`positions must have ${total} entries: found ${positions.length}`);
  }
  if (positions) {
    for (let i = 0; i < positions.length; i++) {
      if (positions[i] < 0 || positions[i] >= config.nPositions) {
        throw new RangeError(
          `positions[${i}] must be in [0, ${config.nPositions}): found ${positions[i]}`,
        );
      }
    }
  }
  for (let i = 0; i < rows.length; i++) {
    if (rows[i] < 0 || rows[i] >= total) {
      throw new RangeError(`${rowsField}[${i}] must be in [0, ${total}): found ${rows[i]}`);
    }
  }
  return total;
}

/**
 * Checks a loss input beyond its packing (`validatePacked`): one target id in [0, vocab) per loss
 * row, at least one row, and no KV cache. Returns the packed row count.
 */
export function validateLoss(config: ModelConfig, input: LossInput): number {
  const { embeds, seqs, lossRows, targets } = input;
  const N = validatePacked(config, embeds, seqs, input.positions, lossRows, "lossRows");
  const V = config.vocabSize;
  if (targets.length !== lossRows.length) {
    throw new RangeError(
      `targets must have one id per lossRows entry (${lossRows.length}): found ${targets.length}`,
    );
  }
  for (let i = 0; i < targets.length; i++) {
    if (targets[i] < 0 || targets[i] >= V) {
      throw new RangeError(`targets[${i}] must be in [0, ${V}): found ${targets[i]}`);
    }
  }
  if (lossRows.length === 0) throw new RangeError("lossRows must not be empty");
  for (let i = 0; i < seqs.length; i++) {
    if (seqs[i].cache) {
      throw new TypeError(`seqs[${i}].cache must be omitted: lossAndGrad takes no KV cache`);
    }
  }
  return N;
}

/** `fn()`'s result as a promise, a throw as a rejection (engines that compute synchronously). */
export function settled<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * Each span's cache, checked to be a live one of class `kind` that `owner` (an engine) made; null
 * where a span has none.
 */
export function ownCaches<C extends { readonly owner: object; readonly disposed: boolean }>(
  owner: object,
  seqs: SeqSpan[],
  // deno-lint-ignore no-explicit-any
  kind: abstract new (...args: any[]) => C,
): (C | null)[] {
  return seqs.map((s, i) => {
    if (!s.cache) return null;
    if (!(s.cache instanceof kind) || s.cache.owner !== owner) {
      throw new TypeError(`seqs[${i}].cache must come from this engine's newCache()`);
    }
    if (s.cache.disposed) throw new Error(`seqs[${i}].cache was disposed`);
    return s.cache;
  });
}
