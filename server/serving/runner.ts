/**
 * The "run" of schedule -> run -> update: turns a scheduled batch (plain objects) into ONE packed
 * engine call. Every row of the step -- prompts being prefilled and single decode tokens alike --
 * is embedded by one gather over [wte; prompt slots], and only each sequence's last row is
 * projected to the vocabulary.
 */
import type { Engine, KvCache, SeqSpan } from "../model/engine.ts";

export interface BatchEntry {
  /** Global ids (real tokens and prompt-slot rows) this step feeds for the sequence. */
  ids: Int32Array;
  /** The sequence's cache; the engine appends these rows to it. */
  cache: KvCache;
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
  /** [entries.length, vocab]: row i is the next-token logits of entries[i]. */
  logits: Float32Array;
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
    const logitRows = new Int32Array(entries.length);
    let at = 0;
    for (const [i, e] of entries.entries()) {
      if (e.ids.length === 0) throw new RangeError(`entries[${i}].ids must not be empty`);
      ids.set(e.ids, at);
      at += e.ids.length;
      logitRows[i] = at - 1;
      seqs.push({ length: e.ids.length, cache: e.cache });
    }
    const embeds = this.#embedder.embedTokens(ids); // [N, C]
    const out = await this.#engine.forward({ embeds, seqs, logitRows });
    const vocab = this.#engine.config.vocabSize;
    if (out.logits.length !== entries.length * vocab) {
      throw new RangeError(
        `engine ${this.#engine.name} returned ${out.logits.length} logits: expected ${entries.length} x ${vocab}`,
      );
    }
    return { logits: out.logits, vocab, rows };
  }
}
