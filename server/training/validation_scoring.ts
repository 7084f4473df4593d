/**
 * Answers generated at validation (and for the test split after training), and their scores.
 *
 * - "sequence", NeMo 1.20's way (megatron_gpt_prompt_learning_model.py v1.20.0:367-412): the
 *   context given to generation ends one token before the answer start (`input_lenghts =
 *   torch.argmax(loss_mask, 1)` of the shifted loss mask, :378), so the last prompt token is
 *   generated again; the prediction is the whole decoded sequence, context and generated tokens
 *   (`ids_to_text`, which drops special tokens: virtual tokens, BOS, EOS), and it counts when it
 *   equals the decoded example exactly (AccuracyScore, prompt_learning_metrics.py v1.20.0:29-37).
 * - "answer", this project's: generation continues the whole prompt, and the generated answer,
 *   trimmed, must equal the record's answer.
 *
 * Either way the per-task metrics (exact_match, squad, intent_slot) score the generated answer
 * text: in "sequence", the tokens after the regenerated one.
 */
import type { Engine } from "../model/engine.ts";
import type { SamplingParams } from "../model/decoding/sampler.ts";
import { generate } from "../model/generate.ts";
import { embedWithPrompt } from "./batch.ts";

/** How a generated answer is compared with the example: NeMo's whole sequence, or the answer. */
export type ValidationMatch = "sequence" | "answer";

export const VALIDATION_MATCHES: readonly ValidationMatch[] = ["sequence", "answer"];

export interface ValidationGeneration {
  /** Examples whose answer is generated, at most (Infinity: all, as NeMo). */
  limit: number;
  maxNewTokens: number;
  /** Greedy or sampled, with stop strings (end_strings); the seed is the run's. */
  sampling: Omit<SamplingParams, "maxNewTokens">;
  /** Sequences per generation call. */
  batchSize: number;
  /** Default "sequence" (NeMo's). */
  match?: ValidationMatch;
}

/** What generation needs of an example: its ids and where the answer starts. */
export interface GeneratedExample {
  taskname: string;
  ids: Int32Array;
  answerStart: number;
  /** A prompt cut to leave room for the tokens to generate; null: not generated at all. */
  generationPrompt?: Int32Array | null;
}

/** Scores generated answers per task; the metrics module plugs in here. */
export interface MetricSink<E> {
  add(task: string, predicted: string, example: E): void;
  result(): Record<string, Record<string, number>>;
}

export interface ScoringDeps<E> {
  decode(ids: readonly number[]): string;
  eosId: number;
  /** Default eosId (GPT-2's BOS and EOS are one token). */
  bosId?: number;
  newMetrics(): MetricSink<E>;
}

export interface GenerationScores {
  /** Per task: the sink's metrics, and in "sequence" mode `accuracy` (NeMo's). */
  metrics: Record<string, Record<string, number>>;
  /** Matches over every generated example; NaN when none was generated. */
  accuracy: number;
}

/** Round-robin over tasks, so that a limit on generated examples samples every task. */
export function interleaveByTask<T extends { taskname: string }>(xs: readonly T[]): T[] {
  const byTask = new Map<string, T[]>();
  for (const x of xs) byTask.set(x.taskname, [...(byTask.get(x.taskname) ?? []), x]);
  const lists = [...byTask.values()];
  const out: T[] = [];
  for (let i = 0; out.length < xs.length; i++) {
    for (const l of lists) if (i < l.length) out.push(l[i]);
  }
  return out;
}

/** `text` up to the first of `stops` (the generator stops there). */
function cutAtStop(text: string, stops: readonly string[]): string {
  let end = text.length;
  for (const s of stops) {
    const at = s ? text.indexOf(s) : -1;
    if (at >= 0 && at < end) end = at;
  }
  return text.slice(0, end);
}

/**
 * Generates an answer for each example (`g.limit` of them at most, interleaved across tasks)
 * with each task's table, and scores them.
 */
export async function generateAndScore<E extends GeneratedExample>(
  engine: Engine,
  tables: ReadonlyMap<string, Float32Array>,
  examples: readonly E[],
  g: ValidationGeneration,
  deps: ScoringDeps<E>,
): Promise<GenerationScores> {
  const V = engine.config.vocabSize, eos = deps.eosId, bos = deps.bosId ?? eos;
  const match = g.match ?? "sequence";
  const eligible = examples.filter((e) => e.generationPrompt !== null);
  const chosen = eligible.length > g.limit
    ? interleaveByTask(eligible).slice(0, g.limit)
    : eligible;
  if (chosen.length === 0) return { metrics: {}, accuracy: NaN };
  const contexts = chosen.map((e) => {
    const prompt = e.generationPrompt ?? e.ids.subarray(0, e.answerStart);
    return match === "sequence" && prompt.length > 1
      ? prompt.subarray(0, prompt.length - 1)
      : prompt;
  });
  const outs = await generate(
    engine,
    chosen.map((e, i) => embedWithPrompt(engine, contexts[i], tables.get(e.taskname), e.taskname)),
    {
      maxNewTokens: g.maxNewTokens,
      eosId: eos,
      batchSize: g.batchSize,
      sampling: g.sampling,
      promptIds: contexts,
      decode: deps.decode,
    },
  );
  // What NeMo's ids_to_text shows: no virtual token, BOS or EOS.
  const visible = (ids: ArrayLike<number>) =>
    Array.from(ids).filter((t) => t < V && t !== eos && t !== bos);
  const sink = deps.newMetrics();
  const counts = new Map<string, { n: number; hits: number }>();
  chosen.forEach((e, i) => {
    const ids = outs[i].ids;
    const end = ids.indexOf(eos);
    const generated = end < 0 ? ids : ids.slice(0, end);
    const prompt = e.generationPrompt ?? e.ids.subarray(0, e.answerStart);
    const regenerated = prompt.length - contexts[i].length;
    sink.add(e.taskname, cutAtStop(deps.decode(generated.slice(regenerated)), g.sampling.stop), e);
    const c = counts.get(e.taskname) ?? { n: 0, hits: 0 };
    c.n++;
    if (match === "sequence") {
      const pred = deps.decode(visible([...contexts[i], ...generated]));
      if (pred === deps.decode(visible(e.ids))) c.hits++;
    }
    counts.set(e.taskname, c);
  });
  const metrics = sink.result();
  let hits = 0;
  for (const [task, c] of counts) {
    if (match === "sequence") {
      metrics[task] = { ...metrics[task], accuracy: c.hits / c.n };
      hits += c.hits;
    } else {
      hits += (metrics[task]?.exact_match ?? 0) * c.n;
    }
  }
  return { metrics, accuracy: hits / chosen.length };
}
