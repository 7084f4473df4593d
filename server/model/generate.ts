/**
 * Batched greedy decoding with a KV cache: prompts of any lengths are prefilled in one packed
 * call, then every unfinished sequence advances one token per call. Used by validation and
 * evaluation (the serving scheduler has its own continuous-batching loop with sampling).
 */
import { createYielder } from "../util/event_loop.ts";
import type { Engine } from "./engine.ts";

export interface GreedyOptions {
  /** Most tokens generated per sequence. */
  maxNewTokens: number;
  /** Stop a sequence at this id (it is included in the output). */
  eosId: number;
  /** Sequences per engine call. Default 32. */
  batchSize?: number;
}

function argmaxRow(logits: Float32Array, row: number, V: number): number {
  let best = 0, bestV = -Infinity;
  const off = row * V;
  for (let v = 0; v < V; v++) {
    const x = logits[off + v];
    if (x > bestV) {
      bestV = x;
      best = v;
    }
  }
  return best;
}

/** `prompts[i]` is [n_i, C] input embeddings; returns each sequence's generated ids. */
export async function greedyGenerate(
  engine: Engine,
  prompts: Float32Array[],
  opts: GreedyOptions,
): Promise<number[][]> {
  const V = engine.config.vocabSize, C = engine.config.nEmbd;
  const batch = opts.batchSize ?? 32;
  const out: number[][] = prompts.map(() => []);
  const yieldNow = createYielder();
  for (let s = 0; s < prompts.length; s += batch) {
    const idx = Array.from({ length: Math.min(batch, prompts.length - s) }, (_, i) => s + i);
    const caches = idx.map(() => engine.newCache());
    try {
      // Prefill: all prompts packed in one call, logits only at each prompt's last row.
      const lens = idx.map((i) => prompts[i].length / C);
      const embeds = new Float32Array(lens.reduce((a, b) => a + b, 0) * C);
      const lastRows = new Int32Array(idx.length);
      let at = 0;
      idx.forEach((i, k) => {
        embeds.set(prompts[i], at * C);
        at += lens[k];
        lastRows[k] = at - 1;
      });
      let { logits } = await engine.forward({
        embeds,
        seqs: lens.map((length, k) => ({ length, cache: caches[k] })),
        logitRows: lastRows,
      });
      let live = idx.map((_, k) => k);
      let rowOf = live.map((k) => k);
      for (let step = 0; step < opts.maxNewTokens && live.length > 0; step++) {
        await yieldNow();
        const next: number[] = [];
        const still: number[] = [];
        for (let j = 0; j < live.length; j++) {
          const k = live[j];
          const tok = argmaxRow(logits, rowOf[j], V);
          out[idx[k]].push(tok);
          if (tok !== opts.eosId && out[idx[k]].length < opts.maxNewTokens) {
            still.push(k);
            next.push(tok);
          }
        }
        live = still;
        if (live.length === 0 || step + 1 >= opts.maxNewTokens) break;
        ({ logits } = await engine.forward({
          embeds: engine.embed(next),
          seqs: live.map((k) => ({ length: 1, cache: caches[k] })),
          logitRows: Int32Array.from(live, (_, j) => j),
        }));
        rowOf = live.map((_, j) => j);
      }
    } finally {
      for (const c of caches) c.dispose();
    }
  }
  return out;
}
