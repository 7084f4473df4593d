/**
 * P-tuning's PromptParams (prompt_params.ts): one encoder shared by the tasks tuned together,
 * whose output rows are cut into the tasks' tables. Its own module because the encoders run on
 * TF.js: the trainer imports it only for a p-tuning run.
 */
import type { PromptParams, TaskSlot } from "./prompt_params.ts";
import type { EncoderKind, EncoderState, PromptEncoder } from "./prompt_encoder.ts";
import { createPromptEncoder, encoderGradFromOutputGrad, encoderOutput } from "./prompt_encoder.ts";

export interface EncoderParamsOptions {
  kind: EncoderKind;
  hiddenSize: number;
  numLayers: number;
  /** tpmlp only (default 0.023). */
  initStd?: number;
  seed: number;
  hidden: number; // model width C
  /** Resume from a stored encoder (names and shapes must match). */
  state?: EncoderState;
}

/** P-tuning: one encoder over all tasks' virtual tokens, parameters named `encoder.<torch name>`. */
export function encoderTables(slots: TaskSlot[], opts: EncoderParamsOptions): PromptParams {
  const total = slots.reduce((n, s) => n + s.virtualTokens, 0);
  const C = opts.hidden;
  const encoder: PromptEncoder = createPromptEncoder({
    kind: opts.kind,
    numVirtualTokens: total,
    tokenDim: C,
    hiddenSize: opts.hiddenSize,
    numLayers: opts.numLayers,
    initStd: opts.initStd,
    seed: opts.seed,
    // Each task is its own sequence through the shared LSTM.
    segments: opts.kind === "lstm" ? slots.map((s) => s.virtualTokens) : undefined,
  });
  if (opts.state) encoder.loadState(opts.state);
  const params = new Map<string, Float32Array>();
  const pull = () => {
    for (const [name, s] of Object.entries(encoder.state())) params.set(`encoder.${name}`, s.data);
  };
  pull();
  let output = encoderOutput(encoder); // [total, C]
  const offsets = new Map<string, number>();
  let at = 0;
  for (const s of slots) {
    offsets.set(s.task, at);
    at += s.virtualTokens;
  }
  return {
    kind: "p_tuning",
    params,
    tables: () =>
      new Map(slots.map((s) => {
        const o = offsets.get(s.task)! * C;
        return [s.task, output.subarray(o, o + s.virtualTokens * C)];
      })),
    backward(gradTables) {
      const gradOut = new Float32Array(total * C);
      for (const [task, g] of gradTables) gradOut.set(g, offsets.get(task)! * C);
      const grads = encoderGradFromOutputGrad(encoder, gradOut);
      return new Map([...grads].map(([n, g]) => [`encoder.${n}`, g]));
    },
    sync() {
      const state: Record<string, { shape: readonly number[]; data: Float32Array }> = {};
      const shapes = encoder.state();
      for (const [name, s] of Object.entries(shapes)) {
        state[name] = { shape: s.shape, data: params.get(`encoder.${name}`)! };
      }
      encoder.loadState(state);
      output = encoderOutput(encoder);
    },
    encoderState: () => ({
      kind: opts.kind,
      config: {
        hidden_size: opts.hiddenSize,
        num_layers: opts.numLayers,
        // Only how the encoder started; kept so a stored tpmlp says how it was made.
        ...(opts.kind === "tpmlp" ? { init_std: encoder.options.initStd } : {}),
        tasks: slots.map((s) => ({ task: s.task, virtual_tokens: s.virtualTokens })),
      },
      tensors: encoder.state(),
    }),
    dispose: () => encoder.dispose(),
  };
}
