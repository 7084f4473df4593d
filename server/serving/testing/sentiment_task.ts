/**
 * Served tasks for tests and checks: the tutorial's sentiment template over a given prompt
 * table, and prompt tables at the scale of real prompts.
 */
import { Prng } from "../../model/decoding/prng.ts";
import { copyInto, type Matrix } from "../../model/half.ts";
import { validateTemplate } from "../../prompts/template.ts";
import type { ServedTask } from "../inference_service.ts";

/** A task with NeMo's sentiment template, `table.length / C` virtual tokens before the text. */
export function sentimentTask(
  name: string,
  table: Float32Array,
  C: number,
  opts: { version?: number; maxSeqLength?: number } = {},
): ServedTask {
  const virtual = table.length / C;
  return {
    name,
    version: opts.version ?? 1,
    totalVirtualTokens: virtual,
    table,
    template: validateTemplate({
      taskname: name,
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      prompt_template_fields: ["sentence", "label"],
      total_virtual_tokens: virtual,
      virtual_token_splits: [virtual],
      truncate_field: null,
      answer_only_loss: true,
      answer_field: "label",
      ...(opts.maxSeqLength ? { max_seq_length: opts.maxSeqLength } : {}),
    }, "test"),
  };
}

/** `virtual` rows of wte plus noise: a prompt table at real prompts' scale, one per seed. */
export function tableFromVocab(wte: Matrix, V: number, C: number, virtual: number, seed: number) {
  const rng = new Prng(seed);
  const table = new Float32Array(virtual * C);
  for (let k = 0; k < virtual; k++) {
    copyInto(wte, Math.floor(rng.next() * V) * C, C, table, k * C);
    for (let c = 0; c < C; c++) table[k * C + c] += (rng.next() - 0.5) * 0.05;
  }
  return table;
}
