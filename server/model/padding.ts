/**
 * The padded-batch view of an engine, as Hugging Face callers know it: [B, T, C] embeddings with
 * an attention mask (1 = real token) and optional position ids. Masked positions are dropped and
 * the real tokens packed, so padding costs nothing and every row sees exactly what it would see
 * alone; logits come back on the padded grid (zeros at masked positions).
 */
import type { Engine } from "./engine.ts";

export interface PaddedInput {
  /** [B, T, C] */
  embeds: Float32Array;
  batch: number;
  length: number;
  /** [B, T]: 1 for a real token, 0 for padding (left, right or anywhere). */
  attentionMask: ArrayLike<number>;
  /** [B, T]; default: cumsum(mask) - 1 per row, as transformers derives them. */
  positionIds?: ArrayLike<number>;
  /** Only these (b, t) positions get logits; default: every real position. */
  logitPositions?: { b: number; t: number }[];
}

export interface PaddedOutput {
  /** [B, T, V] when logitPositions was omitted, else [logitPositions.length, V]. */
  logits: Float32Array;
}

export async function forwardPadded(engine: Engine, input: PaddedInput): Promise<PaddedOutput> {
  const { batch: B, length: T } = input;
  const C = engine.config.nEmbd, V = engine.config.vocabSize;
  if (input.embeds.length !== B * T * C) {
    throw new RangeError(
      `embeds must hold B x T x C = ${B * T * C} values: found ${input.embeds.length}`,
    );
  }
  if (input.attentionMask.length !== B * T) {
    throw new RangeError(
      `attentionMask must hold B x T = ${B * T} values: found ${input.attentionMask.length}`,
    );
  }
  if (input.positionIds && input.positionIds.length !== B * T) {
    throw new RangeError(
      `positionIds must hold B x T = ${B * T} values: found ${input.positionIds.length}`,
    );
  }
  const packedRow = new Int32Array(B * T).fill(-1);
  const lengths: number[] = [];
  const positions: number[] = [];
  let n = 0;
  for (let b = 0; b < B; b++) {
    let len = 0;
    for (let t = 0; t < T; t++) {
      if (!input.attentionMask[b * T + t]) continue;
      packedRow[b * T + t] = n++;
      positions.push(input.positionIds ? input.positionIds[b * T + t] : len);
      len++;
    }
    lengths.push(len);
  }
  const embeds = new Float32Array(n * C);
  for (let i = 0; i < B * T; i++) {
    const r = packedRow[i];
    if (r >= 0) embeds.set(input.embeds.subarray(i * C, (i + 1) * C), r * C);
  }
  const wanted = input.logitPositions ?? [];
  for (const [i, p] of wanted.entries()) {
    if (!(p.b >= 0 && p.b < B && p.t >= 0 && p.t < T) || packedRow[p.b * T + p.t] < 0) {
      throw new RangeError(
        `logitPositions[${i}] (${p.b}, ${p.t}) must be a real (unmasked) position`,
      );
    }
  }
  const rows = input.logitPositions
    ? Int32Array.from(wanted, (p) => packedRow[p.b * T + p.t])
    : Int32Array.from({ length: n }, (_, i) => i);
  const { logits } = await engine.forward({
    embeds,
    seqs: lengths.map((length) => ({ length })),
    positions: Int32Array.from(positions),
    logitRows: rows,
  });
  if (input.logitPositions) return { logits };
  const grid = new Float32Array(B * T * V);
  for (let i = 0; i < B * T; i++) {
    const r = packedRow[i];
    if (r >= 0) grid.set(logits.subarray(r * V, (r + 1) * V), i * V);
  }
  return { logits: grid };
}
