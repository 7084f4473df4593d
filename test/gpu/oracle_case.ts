/**
 * The oracle step's mixed batch: three tasks with 3, 10 and 15 virtual tokens (one before its
 * text, one split 5 + 5 around it, one in the middle of it), packed into one batch, and what an
 * engine computes on it, written for test/gpu/oracle.py to check against PyTorch:
 * - logits at every row (no cache);
 * - the prompt-tuning loss on each sequence's last answer rows and its gradient with respect to
 *   every input embedding;
 * - greedy decoding of the three sequences together with KV caches, and the logits of each step.
 * File formats: see oracle.py.
 */
import type { Engine, KvCache } from "../../server/model/engine.ts";
import { copyInto, type Matrix } from "../../server/model/half.ts";
import { encodeSafetensors, type TensorToWrite } from "../../server/model/safetensors.ts";
import { Prng } from "../../server/model/decoding/prng.ts";

export interface OracleCase {
  /** [N] packed rows: a token id, or V + k for row k of `tables` (a virtual token). */
  ids: Int32Array;
  /** [K, C] the three tasks' prompt tables, concatenated. */
  tables: Float32Array;
  seqLengths: number[];
  /** Rows whose next token is scored, and the scored tokens. */
  lossRows: Int32Array;
  targets: Int32Array;
}

/** Greedy tokens decoded per sequence (the first from the prefill's last row). */
export const DECODE_STEPS = 8;
const ANSWER_ROWS = 6;

/**
 * The case for a model of vocabulary V and width C: prompt tables at the scale of real prompts
 * (rows of wte plus noise), random token ids, the last ANSWER_ROWS predictions of each sequence
 * scored against its own next tokens.
 */
export function makeCase(wte: Matrix, V: number, C: number, seed = 5): OracleCase {
  const rng = new Prng(seed);
  const token = () => Math.floor(rng.next() * (V - 1));
  const virtualCounts = [3, 10, 15];
  const K = virtualCounts.reduce((a, b) => a + b, 0);
  const tables = new Float32Array(K * C);
  const row = new Float32Array(C);
  for (let k = 0; k < K; k++) {
    copyInto(wte, token() * C, C, row);
    for (let c = 0; c < C; c++) tables[k * C + c] = row[c] + (rng.next() - 0.5) * 0.05;
  }
  // Segments: [virtual rows of the task's table from `from`] or [text tokens].
  const v = (from: number, n: number) => Array.from({ length: n }, (_, i) => V + from + i);
  const t = (n: number) => Array.from({ length: n }, token);
  const seqs = [
    [...v(0, 3), ...t(13)],
    [...v(3, 5), ...t(6), ...v(8, 5), ...t(8)],
    [...t(7), ...v(13, 15), ...t(10)],
  ];
  const ids = Int32Array.from(seqs.flat());
  const lossRows: number[] = [], targets: number[] = [];
  let start = 0;
  for (const s of seqs) {
    for (let r = s.length - ANSWER_ROWS - 1; r < s.length - 1; r++) {
      lossRows.push(start + r);
      targets.push(s[r + 1]);
    }
    start += s.length;
  }
  return {
    ids,
    tables,
    seqLengths: seqs.map((s) => s.length),
    lossRows: Int32Array.from(lossRows),
    targets: Int32Array.from(targets),
  };
}

export function encodeCase(c: OracleCase, C: number, metadata: Record<string, string>): Uint8Array {
  const i32 = (data: Int32Array): TensorToWrite => ({ dtype: "I32", shape: [data.length], data });
  return encodeSafetensors({
    ids: i32(c.ids),
    tables: { dtype: "F32", shape: [c.tables.length / C, C], data: c.tables },
    seq_lengths: i32(Int32Array.from(c.seqLengths)),
    loss_rows: i32(c.lossRows),
    targets: i32(c.targets),
  }, metadata);
}

/** The packed input rows of the case: wte rows for tokens, table rows for virtual tokens. */
export function caseEmbeds(engine: Engine, c: OracleCase): Float32Array {
  const { vocabSize: V, nEmbd: C } = engine.config;
  const out = new Float32Array(c.ids.length * C);
  for (let i = 0; i < c.ids.length; i++) {
    const id = c.ids[i];
    if (id >= V) out.set(c.tables.subarray((id - V) * C, (id - V + 1) * C), i * C);
    else out.set(engine.embed([id]), i * C);
  }
  return out;
}

function argmax(logits: Float32Array, row: number, V: number): number {
  let best = 0;
  for (let v = 1; v < V; v++) if (logits[row * V + v] > logits[row * V + best]) best = v;
  return best;
}

/** What `engine` computes on the case, as the outputs file's tensors. */
export async function engineOutputs(
  engine: Engine,
  c: OracleCase,
): Promise<Record<string, TensorToWrite>> {
  const { vocabSize: V, nEmbd: C } = engine.config;
  const N = c.ids.length, S = c.seqLengths.length;
  const embeds = caseEmbeds(engine, c);
  const seqs = c.seqLengths.map((length) => ({ length }));
  const { logits } = await engine.forward({
    embeds,
    seqs,
    logitRows: Int32Array.from({ length: N }, (_, i) => i),
  });
  const { loss, gradEmbeds } = await engine.lossAndGrad({
    embeds,
    seqs,
    lossRows: c.lossRows,
    targets: c.targets,
  });

  // Decoding: a cached prefill of all three sequences, then one row per sequence per step.
  const caches: KvCache[] = c.seqLengths.map(() => engine.newCache());
  const tokens = new Int32Array(S * DECODE_STEPS);
  const stepLogits = new Float32Array(S * DECODE_STEPS * V);
  let end = 0;
  const lastRows = Int32Array.from(c.seqLengths, (length) => (end += length) - 1);
  let out = await engine.forward({
    embeds,
    seqs: c.seqLengths.map((length, s) => ({ length, cache: caches[s] })),
    logitRows: lastRows,
  });
  for (let k = 0; k < DECODE_STEPS; k++) {
    for (let s = 0; s < S; s++) {
      tokens[s * DECODE_STEPS + k] = argmax(out.logits, s, V);
      stepLogits.set(out.logits.subarray(s * V, (s + 1) * V), (s * DECODE_STEPS + k) * V);
    }
    if (k === DECODE_STEPS - 1) break;
    const next = Array.from({ length: S }, (_, s) => tokens[s * DECODE_STEPS + k]);
    out = await engine.forward({
      embeds: engine.embed(next),
      seqs: caches.map((cache) => ({ length: 1, cache })),
      logitRows: Int32Array.from({ length: S }, (_, s) => s),
    });
  }
  for (const cache of caches) cache.dispose();
  return {
    logits: { dtype: "F32", shape: [N, V], data: logits },
    loss: { dtype: "F32", shape: [1], data: Float32Array.of(loss) },
    grad: { dtype: "F32", shape: [N, C], data: gradEmbeds },
    decode_tokens: { dtype: "I32", shape: [S, DECODE_STEPS], data: tokens },
    decode_logits: { dtype: "F32", shape: [S * DECODE_STEPS, V], data: stepLogits },
  };
}
