/**
 * The "run" of schedule -> run -> update: turns a scheduled batch (plain objects) into ONE packed
 * engine call. Every row of the step -- prompts being prefilled and single decode tokens alike --
 * is embedded by one gather over [wte; prompt slots], and only each sequence's last row is
 * projected to the vocabulary (every row of an entry that asks: scored answers).
 */
import type { Engine, KvCache, SeqSpan } from "../model/engine.ts";

export interface BatchEntry {
  /** Global ids (real tokens and prompt-slot rows) this step feeds for the sequence. */
  ids: Int32Array;
  /** The sequence's cache; the engine appends these rows to it. */
  cache: KvCache;
  /** Logits at every row of this entry, not only its last. */
  allRows?: boolean;
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
  /**
   * [logit rows, vocab]: entry i's rows start at `firstRow[i]` (one row, its last, unless it
   * asked for all).
   */
  logits: Float32Array;
  firstRow: Int32Array;
  vocab: number;
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
    let at = 0;
    for (const [i, e] of entries.entries()) {
      if (e.ids.length === 0) throw new RangeError(`entries[${i}].ids must not be empty`);
      ids.set(e.ids, at);
      firstRow[i] = logitRows.length;
      if (e.allRows) { for (let t = 0; t < e.ids.length; t++) logitRows.push(at + t); }
      else logitRows.push(at + e.ids.length - 1);
      at += e.ids.length;
      seqs.push({ length: e.ids.length, cache: e.cache });
    }
    const embeds = this.#embedder.embedTokens(ids); // [N, C]
    const out = await this.#engine.forward({
      embeds,
      seqs,
      logitRows: Int32Array.from(logitRows),
    });
    const vocab = this.#engine.config.vocabSize;
    if (out.logits.length !== logitRows.length * vocab) {
      throw new RangeError(
        `engine ${this.#engine.name} returned ${out.logits.length} logits: expected ${logitRows.length} x ${vocab}`,
      );
    }
    return { logits: out.logits, firstRow, vocab, rows };
  }
}
