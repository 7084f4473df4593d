/**
 * The "run" of schedule -> run -> update: turns a scheduled batch (plain objects) into ONE packed
 * engine call. Every row of the step -- prompts being prefilled and single decode tokens alike --
 * is embedded by one gather over [wte; prompt slots], and only each sequence's last row is
 * projected to the vocabulary (every row of an entry with a pick per row: scored answers). Each projected
 * row is reduced where the engine holds it (`forwardPicked`): a sampled token or the
 * log-probabilities of given ids come back, never the row itself.
 */
import { type Engine, forwardPicked, type KvCache, type SeqSpan } from "../model/engine.ts";
import type { RowPick, RowPicked } from "../model/decoding/pick.ts";

export interface BatchEntry {
  /** Global ids (real tokens and prompt-slot rows) this step feeds for the sequence. */
  ids: Int32Array;
  /** The sequence's cache; the engine appends these rows to it. */
  cache: KvCache;
  /**
   * What is needed from its logit rows: one pick for its last row, or one per id for every row
   * (scored answers).
   */
  picks: RowPick[];
}

/** Turns global ids into input rows; `PromptSlots` is one. */
export interface TokenEmbedder {
  /** One past the largest id `embedTokens` accepts. */
  readonly idLimit: number;
  /** [ids.length, C] input embeddings. */
  embedTokens(ids: Int32Array): Float32Array;
}

export interface RunnerOptions {
  engine: Engine;
  embedder: TokenEmbedder;
}

export interface RunOutput {
  /** One per logit row: entry i's rows start at `firstRow[i]` (one row unless it asked for all). */
  picked: RowPicked[];
  firstRow: Int32Array;
  rows: number;
}

export class ModelRunner {
  readonly #engine: Engine;
  readonly #embedder: TokenEmbedder;

  constructor(opts: RunnerOptions) {
    this.#engine = opts.engine;
    this.#embedder = opts.embedder;
  }

  async run(entries: readonly BatchEntry[]): Promise<RunOutput> {
    let rows = 0;
    for (const e of entries) rows += e.ids.length;
    const ids = new Int32Array(rows); // [N]
    const seqs: SeqSpan[] = [];
    const firstRow = new Int32Array(entries.length);
    const logitRows: number[] = [];
    const picks: RowPick[] = [];
    let at = 0;
    for (const [i, e] of entries.entries()) {
      if (e.ids.length === 0) throw new RangeError(`entries[${i}].ids must not be empty`);
      const every = e.picks.length === e.ids.length;
      if (!every && e.picks.length !== 1) {
        throw new RangeError(
          `entries[${i}].picks must hold 1 or ${e.ids.length}: found ${e.picks.length}`,
        );
      }
      ids.set(e.ids, at);
      firstRow[i] = logitRows.length;
      if (every) { for (let t = 0; t < e.ids.length; t++) logitRows.push(at + t); }
      else logitRows.push(at + e.ids.length - 1);
      picks.push(...e.picks);
      at += e.ids.length;
      seqs.push({ length: e.ids.length, cache: e.cache });
    }
    const embeds = this.#embedder.embedTokens(ids); // [N, C]
    const picked = await forwardPicked(this.#engine, {
      embeds,
      seqs,
      logitRows: Int32Array.from(logitRows),
    }, picks);
    if (picked.length !== picks.length) {
      throw new RangeError(
        `engine ${this.#engine.name} returned ${picked.length} rows: expected ${picks.length}`,
      );
    }
    return { picked, firstRow, rows };
  }
}
