/**
 * What the GPU check runs on: the published GPT-2 shapes it measures (124M and 345M), and the
 * tiny shape of its CPU dry run (the emulated device), all with GPT-2's vocabulary.
 */
import { GPT2_SHAPES, type Gpt2Shape } from "../../server/model/testing/gpt2_checkpoint.ts";

export const CHECK_SHAPES: Record<string, Gpt2Shape> = {
  "gpt2": GPT2_SHAPES["gpt2"],
  "gpt2-medium": GPT2_SHAPES["gpt2-medium"],
  tiny: { nEmbd: 64, nHead: 4, nLayer: 2, vocabSize: 50257, nPositions: 1024 },
};

export function checkShape(name: string): Gpt2Shape {
  const s = CHECK_SHAPES[name];
  if (!s) {
    throw new RangeError(
      `shape must be one of ${Object.keys(CHECK_SHAPES).join(", ")}: found ${JSON.stringify(name)}`,
    );
  }
  return s;
}

/** Where the generate step writes a shape's checkpoint (Hugging Face layout). */
export function modelDir(work: string, shape: string): string {
  return `${work}/models/${shape}`;
}
