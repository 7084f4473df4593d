/**
 * Batched decoding with a KV cache for validation and evaluation: prompts of any lengths are
 * prefilled in one packed call, then every unfinished sequence advances one token per call. Each
 * sequence picks its tokens with its own `SequenceSampler` (greedy, or NeMo's `inference.*`
 * sampling), so its output does not depend on its batch mates. (The serving scheduler has its own
 * continuous-batching loop over the same sampler.)
 */
import { createYielder } from "../util/event_loop.ts";
import { type Engine, forwardPicked } from "./engine.ts";
import { type SampledToken, type SamplingParams, SequenceSampler } from "./decoding/sampler.ts";
import { type Decode, StopStringTracker } from "./decoding/stop_strings.ts";

export interface GreedyOptions {
  /** Most tokens generated per sequence. */
  maxNewTokens: number;
  /** Stop a sequence at this id (it is included in the output). */
  eosId: number;
  /** Sequences per engine call. Default 32. */
  batchSize?: number;
}

export interface GenerateOptions extends GreedyOptions {
  /**
   * How tokens are chosen; `maxNewTokens` above wins over the one here. Sequence i draws from a
   * PRNG seeded `seed + i`. Default: greedy.
   */
  sampling?: Omit<SamplingParams, "maxNewTokens">;
  /** Prompt token ids per sequence: the repetition penalty's starting set. Default: none. */
  promptIds?: readonly ArrayLike<number>[];
  /** Needed when `sampling.stop` is not empty: the text is what stop strings are found in. */
  decode?: Decode;
}

export interface GeneratedSequence {
  /** The chosen ids, EOS included when it ended the sequence. */
  ids: number[];
  /** Log-probability of each chosen id, when `sampling.logprobs`. */
  logprobs?: number[];
  /** Decoded text up to (not including) the first stop string; only with stop strings. */
  text?: string;
}

const GREEDY: Omit<SamplingParams, "maxNewTokens"> = {
  minNewTokens: 0,
  doSample: false,
  temperature: 1,
  topK: 0,
  topP: 1,
  seed: 0,
  repetitionPenalty: 1,
  stop: [],
  logprobs: false,
};

/** `prompts[i]` is [n_i, C] input embeddings; returns each sequence's generated ids. */
export async function greedyGenerate(
  engine: Engine,
  prompts: Float32Array[],
  opts: GreedyOptions,
): Promise<number[][]> {
  return (await generate(engine, prompts, opts)).map((s) => s.ids);
}

/** `prompts[i]` is [n_i, C] input embeddings; returns each sequence's tokens. */
export async function generate(
  engine: Engine,
  prompts: Float32Array[],
  opts: GenerateOptions,
): Promise<GeneratedSequence[]> {
  const V = engine.config.vocabSize, C = engine.config.nEmbd;
  const batch = opts.batchSize ?? 32;
  const base = opts.sampling ?? GREEDY;
  if (base.stop.length > 0 && !opts.decode) {
    throw new TypeError("generate(): stop strings need a decode function");
  }
  const out: GeneratedSequence[] = prompts.map(() => ({ ids: [] }));
  const yieldNow = createYielder();
  for (let s = 0; s < prompts.length; s += batch) {
    const idx = Array.from({ length: Math.min(batch, prompts.length - s) }, (_, i) => s + i);
    const samplers = idx.map((i) =>
      new SequenceSampler(
        { ...base, maxNewTokens: opts.maxNewTokens, seed: (base.seed + i) >>> 0 },
        opts.promptIds?.[i] ?? [],
        V,
        opts.eosId,
      )
    );
    const trackers = idx.map(() =>
      base.stop.length > 0 ? new StopStringTracker(opts.decode!, base.stop) : undefined
    );
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
      // Each row is reduced to its token where the logits are (`forwardPicked`: in the worker,
      // with the engine in one).
      let picked = await forwardPicked(engine, {
        embeds,
        seqs: lens.map((length, k) => ({ length, cache: caches[k] })),
        logitRows: lastRows,
      }, samplers.map((s) => ({ token: s.spec() })));
      let live = idx.map((_, k) => k);
      for (let step = 0; step < opts.maxNewTokens && live.length > 0; step++) {
        await yieldNow();
        const next: number[] = [];
        const still: number[] = [];
        for (let j = 0; j < live.length; j++) {
          const k = live[j];
          const token = picked[j] as SampledToken;
          samplers[k].record(token.tokenId);
          const seq = out[idx[k]];
          seq.ids.push(token.tokenId);
          if (base.logprobs) (seq.logprobs ??= []).push(token.logprob ?? NaN);
          const eos = token.tokenId === opts.eosId;
          const stopped = !eos && trackers[k] ? trackers[k]!.push(token.tokenId) : false;
          if (!eos && !stopped && seq.ids.length < opts.maxNewTokens) {
            still.push(k);
            next.push(token.tokenId);
          }
        }
        live = still;
        if (live.length === 0 || step + 1 >= opts.maxNewTokens) break;
        picked = await forwardPicked(engine, {
          embeds: engine.embed(next),
          seqs: live.map((k) => ({ length: 1, cache: caches[k] })),
          logitRows: Int32Array.from(live, (_, j) => j),
        }, live.map((k) => ({ token: samplers[k].spec() })));
      }
      idx.forEach((i, k) => {
        if (trackers[k]) out[i].text = trackers[k]!.text;
      });
    } finally {
      for (const c of caches) c.dispose();
    }
  }
  return out;
}
