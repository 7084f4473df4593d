/**
 * Packs tokenized examples into one engine call: real ids become word embeddings, virtual ids
 * (vocabSize + k) become row k of their task's prompt table, and the answer tokens become
 * loss rows (each predicted from the row before it).
 */
import type { Engine, SeqSpan } from "../model/engine.ts";

/** The part of a tokenized example the trainer needs (see server/prompts/template.ts). */
export interface TrainExample {
  taskname: string;
  /** Token ids; virtual token k of the task is vocabSize + k. */
  ids: Int32Array;
  /** Index of the first answer token (ids.length when there is none). */
  answerStart: number;
  /**
   * true (default here): the loss covers the answer tokens; false (NeMo's answer_only_loss
   * false): every token but the virtual ones, each predicted from the row before it.
   */
  answerOnlyLoss?: boolean;
}

export interface PackedBatch {
  embeds: Float32Array; // [N, C]
  seqs: SeqSpan[];
  lossRows: Int32Array;
  targets: Int32Array;
  /** For each packed row holding a virtual token: its task and slot k. */
  virtualRows: { row: number; task: string; k: number }[];
  /** Real + virtual tokens in the batch (the throughput unit of the baseline). */
  tokens: number;
  /** Loss rows of each example, in order (its rows follow the previous example's). */
  rowsPerExample: number[];
}

/** Embeddings [n, C] of `ids` with virtual ids taken from `table`. */
export function embedWithPrompt(
  engine: Engine,
  ids: ArrayLike<number>,
  table: Float32Array | undefined,
  task: string,
): Float32Array {
  const V = engine.config.vocabSize, C = engine.config.nEmbd;
  const real = Array.from(ids, (id) => (id >= V ? 0 : id));
  const out = engine.embed(real);
  for (let t = 0; t < ids.length; t++) {
    const k = ids[t] - V;
    if (k < 0) continue;
    if (!table || (k + 1) * C > table.length) {
      throw new RangeError(`task "${task}": virtual token ${k} has no row in its prompt table`);
    }
    out.set(table.subarray(k * C, (k + 1) * C), t * C);
  }
  return out;
}

export function packBatch(
  engine: Engine,
  examples: TrainExample[],
  tables: Map<string, Float32Array>,
  opts: { prefixOnly?: boolean } = {},
): PackedBatch {
  const V = engine.config.vocabSize, C = engine.config.nEmbd;
  const lens = examples.map((e) => (opts.prefixOnly ? e.answerStart : e.ids.length));
  const N = lens.reduce((a, b) => a + b, 0);
  const embeds = new Float32Array(N * C);
  const lossRows: number[] = [], targets: number[] = [];
  const virtualRows: PackedBatch["virtualRows"] = [];
  const rowsPerExample: number[] = [];
  let at = 0;
  examples.forEach((e, i) => {
    const ids = e.ids.subarray(0, lens[i]);
    embeds.set(embedWithPrompt(engine, ids, tables.get(e.taskname), e.taskname), at * C);
    const before = lossRows.length;
    const answerOnly = e.answerOnlyLoss ?? true;
    for (let t = 0; t < ids.length; t++) {
      if (ids[t] >= V) virtualRows.push({ row: at + t, task: e.taskname, k: ids[t] - V });
      const target = answerOnly ? t >= e.answerStart : ids[t] < V;
      if (!opts.prefixOnly && target && t > 0) {
        lossRows.push(at + t - 1);
        targets.push(ids[t]);
      }
    }
    rowsPerExample.push(lossRows.length - before);
    at += ids.length;
  });
  return {
    embeds,
    seqs: lens.map((length) => ({ length })),
    lossRows: Int32Array.from(lossRows),
    targets: Int32Array.from(targets),
    virtualRows,
    tokens: N,
    rowsPerExample,
  };
}

/** Sums d(loss)/d(embeds) of the virtual rows into per-task table gradients. */
export function tableGradients(
  batch: PackedBatch,
  gradEmbeds: Float32Array,
  tables: Map<string, Float32Array>,
  C: number,
): Map<string, Float32Array> {
  const grads = new Map<string, Float32Array>();
  for (const [task, table] of tables) grads.set(task, new Float32Array(table.length));
  for (const { row, task, k } of batch.virtualRows) {
    const g = grads.get(task)!;
    for (let c = 0; c < C; c++) g[k * C + c] += gradEmbeds[row * C + c];
  }
  return grads;
}

/** Mean cross-entropy of `targets` under `logits` [R, V]. */
export function crossEntropy(logits: Float32Array, targets: Int32Array, V: number): number {
  let total = 0;
  for (let r = 0; r < targets.length; r++) {
    const off = r * V;
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[off + v]);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[off + v] - max);
    total += Math.log(sum) + max - logits[off + targets[r]];
  }
  return total / Math.max(1, targets.length);
}
