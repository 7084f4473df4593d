/** Builders shared by the registry's tests. */
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { ModelFingerprint, TaskDraft } from "./types.ts";

export const FP: ModelFingerprint = { hiddenSize: 8, vocabSize: 100, weightsHash: "a".repeat(64) };
export const OTHER_FP: ModelFingerprint = { ...FP, weightsHash: "b".repeat(64) };

export function template(name: string, splits: number[]): TaskTemplate {
  const total = splits.reduce((a, b) => a + b, 0);
  return {
    taskname: name,
    prompt_template: splits.map((_, i) => `<|VIRTUAL_PROMPT_${i}|>`).join(" {sentence} ") +
      " sentiment: {label}",
    prompt_template_fields: splits.length > 1 ? ["sentence", "label"] : ["label"],
    total_virtual_tokens: total,
    virtual_token_splits: splits,
    truncate_field: null,
    answer_field: "label",
    answer_only_loss: true,
    add_bos: false,
    add_eos: true,
    max_seq_length: 1024,
    min_seq_length: 1,
  };
}

/** A draft whose table values are `seed + i / 1000`, so versions are told apart by content. */
export function draft(
  name: string,
  seed = 0,
  options: { tokens?: number; fingerprint?: ModelFingerprint } = {},
): TaskDraft {
  const fingerprint = options.fingerprint ?? FP;
  const tokens = options.tokens ?? 4;
  const table = new Float32Array(tokens * fingerprint.hiddenSize);
  for (let i = 0; i < table.length; i++) table[i] = seed + i / 1000;
  return {
    template: template(name, [tokens]),
    totalVirtualTokens: tokens,
    hiddenSize: fingerprint.hiddenSize,
    table,
    fingerprint,
    metrics: { accuracy: 0.5 + seed / 1000 },
    source: "prompt_tuning",
  };
}

export function withEncoder(d: TaskDraft): TaskDraft {
  return {
    ...d,
    source: "p_tuning",
    encoderState: {
      kind: "mlp",
      config: { encoder_hidden_size: 3, encoder_num_layers: 2 },
      tensors: {
        "mlp.0.weight": { shape: [3, 8], data: Float32Array.from({ length: 24 }, (_, i) => i) },
        "mlp.0.bias": { shape: [3], data: new Float32Array([1, 2, 3]) },
      },
    },
  };
}
