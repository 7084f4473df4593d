/**
 * P-tuning's PromptParams (prompt_params.ts): one encoder shared by the tasks tuned together,
 * whose output rows are cut into the tasks' tables. Its own module because the encoders run on
 * TF.js: the trainer imports it only for a p-tuning run.
 */
import type { PromptParams, TaskSlot, TrainingPass } from "./prompt_params.ts";
import type { DropoutMasks, EncoderKind, EncoderState, PromptEncoder } from "./prompt_encoder.ts";
import {
  createPromptEncoder,
  dropoutMasks,
  encoderGradFromOutputGrad,
  encoderOutput,
} from "./prompt_encoder.ts";

export interface EncoderParamsOptions {
  kind: EncoderKind;
  hiddenSize: number;
  numLayers: number;
  /** tpmlp only (default 0.023). */
  initStd?: number;
  /** lstm only: dropout between LSTM layers in training passes (default 0). */
  dropout?: number;
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
    dropout: opts.dropout,
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
  const cut = (out: Float32Array) =>
    new Map(slots.map((s) => {
      const o = offsets.get(s.task)! * C;
      return [s.task, out.subarray(o, o + s.virtualTokens * C)];
    }));
  const passOf = (out: Float32Array, masks?: DropoutMasks): TrainingPass => ({
    tables: cut(out),
    backward(gradTables) {
      const gradOut = new Float32Array(total * C);
      for (const [task, g] of gradTables) gradOut.set(g, offsets.get(task)! * C);
      const grads = encoderGradFromOutputGrad(encoder, gradOut, masks);
      return new Map([...grads].map(([n, g]) => [`encoder.${n}`, g]));
    },
  });
  // Without dropout a training pass is the eval forward: one pass per sync().
  let evalPass: TrainingPass | undefined;
  return {
    kind: "p_tuning",
    params,
    tables: () => cut(output),
    trainingPass(seed) {
      const masks = dropoutMasks(encoder, seed);
      if (masks) return passOf(encoderOutput(encoder, masks), masks);
      return evalPass ??= passOf(output);
    },
    sync() {
      const state: Record<string, { shape: readonly number[]; data: Float32Array }> = {};
      const shapes = encoder.state();
      for (const [name, s] of Object.entries(shapes)) {
        state[name] = { shape: s.shape, data: params.get(`encoder.${name}`)! };
      }
      encoder.loadState(state);
      output = encoderOutput(encoder);
      evalPass = undefined;
    },
    encoderState: () => ({
      kind: opts.kind,
      config: {
        hidden_size: opts.hiddenSize,
        num_layers: opts.numLayers,
        // Only how the encoder started; kept so a stored tpmlp says how it was made.
        ...(opts.kind === "tpmlp" ? { init_std: encoder.options.initStd } : {}),
        ...(encoder.options.dropout ? { dropout: encoder.options.dropout } : {}),
        tasks: slots.map((s) => ({ task: s.task, virtual_tokens: s.virtualTokens })),
      },
      tensors: encoder.state(),
    }),
    dispose: () => encoder.dispose(),
  };
}
