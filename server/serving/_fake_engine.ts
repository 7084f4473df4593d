/**
 * A tiny deterministic Engine for unit tests: each sequence's logits depend only on the rows it
 * has been fed (through its cache) and their positions, never on batch mates, like a real GPT-2.
 */
import type { Gpt2Config } from "../model/gpt2_config.ts";
import type { Engine, ForwardInput, ForwardOutput, KvCache, LossOutput } from "../model/engine.ts";
import { defaultPositions, validatePacked } from "../model/engine.ts";

export const FAKE_CONFIG: Gpt2Config = {
  vocabSize: 48,
  nPositions: 64,
  nEmbd: 4,
  nLayer: 1,
  nHead: 1,
  nInner: 16,
  layerNormEpsilon: 1e-5,
  activation: "gelu_new",
  bosTokenId: 47,
  eosTokenId: 47,
  tieWordEmbeddings: true,
};

class FakeCache implements KvCache {
  length = 0;
  /** Running summary of everything the sequence has seen. */
  state = 0;
  /** The summary after each row (so a fork of fewer rows can start from one). */
  states: number[] = [];
  disposed = false;
  dispose(): void {
    this.disposed = true;
  }
}

export interface FakeEngineOptions {
  config?: Gpt2Config;
  /** Runs before each forward; may await (to hold a step open) or throw (to fail it). */
  beforeForward?: (input: ForwardInput) => Promise<void> | void;
  /** Claims to compute on another thread (as the engine worker does). Default false. */
  offThread?: boolean;
}

export class FakeEngine implements Engine {
  readonly name = "fake";
  readonly config: Gpt2Config;
  readonly offThread: boolean;
  readonly wte: Float32Array; // [V, C]
  readonly calls: ForwardInput[] = [];
  readonly caches: FakeCache[] = [];
  readonly #before?: (input: ForwardInput) => Promise<void> | void;

  constructor(opts: FakeEngineOptions = {}) {
    this.config = opts.config ?? FAKE_CONFIG;
    this.offThread = opts.offThread ?? false;
    this.#before = opts.beforeForward;
    const { vocabSize: V, nEmbd: C } = this.config;
    this.wte = new Float32Array(V * C);
    for (let v = 0; v < V; v++) {
      for (let c = 0; c < C; c++) this.wte[v * C + c] = (((v * 7 + c * 3) % 11) / 11) - 0.5;
    }
  }

  embed(ids: ArrayLike<number>): Float32Array {
    const C = this.config.nEmbd;
    const out = new Float32Array(ids.length * C);
    for (let i = 0; i < ids.length; i++) {
      out.set(this.wte.subarray(ids[i] * C, ids[i] * C + C), i * C);
    }
    return out;
  }

  newCache(): KvCache {
    const c = new FakeCache();
    this.caches.push(c);
    return c;
  }

  forkCache(cache: KvCache, rows = cache.length): KvCache {
    const from = cache as FakeCache;
    if (from.disposed) throw new Error("forkCache on a disposed cache");
    // The fake keeps a summary per row, so a fork of fewer rows picks up that row's summary.
    const c = new FakeCache();
    c.length = rows;
    c.states = from.states.slice(0, rows);
    c.state = rows > 0 ? c.states[rows - 1] : 0;
    this.caches.push(c);
    return c;
  }

  async forward(input: ForwardInput): Promise<ForwardOutput> {
    this.calls.push(input);
    await this.#before?.(input);
    const { nEmbd: C, vocabSize: V } = this.config;
    validatePacked(
      this.config,
      input.embeds,
      input.seqs,
      input.positions,
      input.logitRows,
      "logitRows",
    );
    const positions = input.positions ?? defaultPositions(input.seqs);
    // Per row: the summary of its sequence up to and including that row.
    const rowState = new Float64Array(positions.length);
    let at = 0;
    for (const s of input.seqs) {
      const cache = s.cache as FakeCache | undefined;
      if (cache?.disposed) throw new Error("forward on a disposed cache");
      let state = cache?.state ?? 0;
      for (let t = 0; t < s.length; t++, at++) {
        let sum = 0;
        for (let c = 0; c < C; c++) sum += input.embeds[at * C + c] * (c + 1);
        state = (state * 1.618 + sum + positions[at] * 0.137) % 97;
        rowState[at] = state;
        cache?.states.push(state);
      }
      if (cache) {
        cache.state = state;
        cache.length += s.length;
      }
    }
    const logits = new Float32Array(input.logitRows.length * V);
    for (let i = 0; i < input.logitRows.length; i++) {
      const h = rowState[input.logitRows[i]];
      for (let v = 0; v < V; v++) logits[i * V + v] = 4 * Math.sin(h * (v + 1) * 0.731 + v);
    }
    return { logits };
  }

  lossAndGrad(): Promise<LossOutput> {
    return Promise.reject(new Error("FakeEngine does not train"));
  }

  dispose(): void {}
}

/** Decodes fake ids as letters, so texts and stop strings are easy to write in tests. */
export function fakeDecode(ids: readonly number[]): string {
  return ids.map((id) => String.fromCharCode(97 + (id % 26)) + (id >= 26 ? "'" : "")).join("");
}
