/**
 * The prompt-tuning and generation work that bench/model_bench.ts (CPU engines) and the GPU check
 * (test/gpu/) time for an engine, and that bench/torch_gpt2_bench.py does in PyTorch on the same
 * weights:
 * - train: one prompt-tuning step: `batch` sequences of `seq` rows (`virtual` prompt rows, then
 *   token embeddings), answer-only loss on the last `answer` predictions of each sequence, the
 *   input gradient only (no weight gradient);
 * - forward: the same batch, logits at each sequence's last row;
 * - gen1 / genN: greedy decoding with a KV cache after `genPrompt` tokens, `genTokens` steps, for
 *   1 sequence and for `concurrent` sequences together.
 * FLOPs counted: 2 per multiply-add of every block product (GPT-2: 24 C^2 per token per layer;
 * Llama: q, k, v, o and the three SwiGLU products at their own widths), the attention products
 * over the causal context, and the LM head at the rows where logits are taken; training adds the
 * input-gradient products (same count again; attention 2x again). The work is the same for both
 * families: the Engine contract does not depend on the blocks.
 */
import type { Gpt2Config } from "../server/model/gpt2_config.ts";
import type { LlamaConfig } from "../server/model/llama_config.ts";
import type { Engine, KvCache } from "../server/model/engine.ts";

export interface Workload {
  batch: number;
  seq: number;
  virtual: number;
  answer: number;
  /** Timed repetitions of train and forward (after one warm-up). */
  steps: number;
  genPrompt: number;
  genTokens: number;
  concurrent: number;
}

/** Seconds per unit of work, as bench/torch_gpt2_bench.py reports them. */
export interface Timings {
  train_step_s: number;
  forward_s: number;
  gen1_s_per_token: number;
  genN_s_per_step: number;
}

/** The flags bench/torch_gpt2_bench.py takes for the same work. */
export function torchWorkloadArgs(w: Workload): string[] {
  return [
    ...["--batch", `${w.batch}`, "--seq", `${w.seq}`, "--virtual", `${w.virtual}`],
    ...["--answer", `${w.answer}`, "--steps", `${w.steps}`, "--gen-prompt", `${w.genPrompt}`],
    ...["--gen-tokens", `${w.genTokens}`, "--concurrent", `${w.concurrent}`],
  ];
}

export const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/** Seconds per call of fn, averaged over `reps` calls after one warm-up. */
export async function time(fn: () => unknown, reps: number): Promise<number> {
  await fn();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) await fn();
  return (performance.now() - t0) / 1000 / reps;
}

function rng(seed: number) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** Times the workload on `engine` (random prompt, ids and targets). */
export async function timeEngine(engine: Engine, w: Workload): Promise<Timings> {
  const { nEmbd: C, vocabSize: V } = engine.config;
  const { batch: B, seq: T, virtual: NV, answer: A } = w;
  if (T <= NV + A) throw new RangeError("seq must exceed virtual + answer");
  const r = rng(3);
  const ids = Int32Array.from({ length: B * (T - NV) }, () => Math.floor(r() * V));
  const prompt = Float32Array.from({ length: NV * C }, () => (r() - 0.5) * 0.04);
  const embeds = new Float32Array(B * T * C);
  for (let b = 0; b < B; b++) {
    embeds.set(prompt, b * T * C);
    embeds.set(engine.embed(ids.subarray(b * (T - NV), (b + 1) * (T - NV))), (b * T + NV) * C);
  }
  const seqs = Array.from({ length: B }, () => ({ length: T }));
  const lossRows = new Int32Array(B * A), targets = new Int32Array(B * A);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < A; i++) {
      lossRows[b * A + i] = b * T + T - A - 1 + i;
      targets[b * A + i] = Math.floor(r() * V);
    }
  }
  const train = await time(() => engine.lossAndGrad({ embeds, seqs, lossRows, targets }), w.steps);
  const lastRows = Int32Array.from({ length: B }, (_, b) => b * T + T - 1);
  const fwd = await time(() => engine.forward({ embeds, seqs, logitRows: lastRows }), w.steps);

  const argmax = (logits: Float32Array, row: number) => {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[row * V + v] > logits[row * V + best]) best = v;
    return best;
  };
  const G = w.genPrompt;
  const generate = async (n: number) => {
    const caches: KvCache[] = Array.from({ length: n }, () => engine.newCache());
    const start = Int32Array.from({ length: n * G }, () => Math.floor(r() * V));
    let { logits } = await engine.forward({
      embeds: engine.embed(start),
      seqs: caches.map((cache) => ({ length: G, cache })),
      logitRows: Int32Array.from({ length: n }, (_, i) => i * G + G - 1),
    });
    const t0 = performance.now();
    for (let s = 0; s < w.genTokens; s++) {
      const next = Int32Array.from({ length: n }, (_, i) => argmax(logits, i));
      ({ logits } = await engine.forward({
        embeds: engine.embed(next),
        seqs: caches.map((cache) => ({ length: 1, cache })),
        logitRows: Int32Array.from({ length: n }, (_, i) => i),
      }));
    }
    const s = (performance.now() - t0) / 1000 / w.genTokens;
    for (const c of caches) c.dispose();
    return s;
  };
  await generate(1); // warm-ups: first calls at each row count create the engine's primitives
  const gen1 = await generate(1);
  await generate(w.concurrent);
  const genN = await generate(w.concurrent);
  return { train_step_s: train, forward_s: fwd, gen1_s_per_token: gen1, genN_s_per_step: genN };
}

/**
 * Per token and layer: the block's product FLOPs and the width attention runs at (query heads x
 * head size). GPT-2: qkv 6 C^2, projection 2 C^2, MLP 16 C^2. Llama: q and o 2 C QW each, k and
 * v 2 C KW each (grouped-query heads), gate, up and down 2 C F each.
 */
function blockShape(config: Gpt2Config | LlamaConfig): { block: number; attnWidth: number } {
  const { nEmbd: C } = config;
  if (config.arch !== "llama") return { block: 24 * C * C, attnWidth: C };
  const QW = config.nHead * config.headDim, KW = config.nKvHead * config.headDim;
  return { block: 2 * (2 * C * QW + 2 * C * KW + 3 * C * config.nInner), attnWidth: QW };
}

export function flops(config: Gpt2Config | LlamaConfig, w: Workload) {
  const { nEmbd: C, nLayer: L, vocabSize: V } = config;
  const { batch: B, seq: T, answer: A } = w;
  const shape = blockShape(config);
  const block = shape.block * L; // per token
  const attn = (ctx: number) => 4 * ctx * shape.attnWidth * L; // per token attending to ctx keys
  const causal = (t: number) => attn((t + 1) / 2);
  return {
    forward: B * T * (block + causal(T)) + B * 2 * C * V,
    train: B * T * (2 * block + 3 * causal(T)) + 2 * B * A * 2 * C * V,
    decode: (ctx: number) => block + attn(ctx) + 2 * C * V,
  };
}

/** The figures reported for one engine's (or PyTorch's) timings. */
export function figures(t: Timings, f: ReturnType<typeof flops>, w: Workload) {
  const tokens = w.batch * w.seq;
  return {
    train_tokens_per_s: round(tokens / t.train_step_s),
    train_gflops: round(f.train / t.train_step_s / 1e9),
    forward_tokens_per_s: round(tokens / t.forward_s),
    forward_gflops: round(f.forward / t.forward_s / 1e9),
    gen1_ms_per_token: round(t.gen1_s_per_token * 1000, 2),
    genN_ms_per_step: round(t.genN_s_per_step * 1000, 2),
    genN_tokens_per_s: round(w.concurrent / t.genN_s_per_step),
    gen1_gflops: round(f.decode(w.genPrompt + w.genTokens / 2) / t.gen1_s_per_token / 1e9),
  };
}

export type Figures = ReturnType<typeof figures>;

/** Ours over PyTorch (> 1: ours faster) for each figure. */
export function ratios(ours: Figures, torch: Figures) {
  return {
    train: round(ours.train_tokens_per_s / torch.train_tokens_per_s, 2),
    forward: round(ours.forward_tokens_per_s / torch.forward_tokens_per_s, 2),
    gen1: round(torch.gen1_ms_per_token / ours.gen1_ms_per_token, 2),
    genN: round(torch.genN_ms_per_step / ours.genN_ms_per_step, 2),
  };
}
