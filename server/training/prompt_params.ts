/**
 * What the optimiser trains, seen as prompt tables. Prompt tuning trains each task's table
 * directly; p-tuning trains one encoder shared by the tasks tuned together, whose output rows are
 * cut into the tasks' tables (task t owns rows [offset_t, offset_t + n_t)). Either way the trainer
 * asks for tables, hands back d(loss)/d(table), and gets parameter gradients by name.
 */
import type { EncoderKind, EncoderState, PromptEncoder } from "./prompt_encoder.ts";
import { createPromptEncoder, encoderGradFromOutputGrad, encoderOutput } from "./prompt_encoder.ts";

export interface TaskSlot {
  task: string;
  virtualTokens: number;
}

export interface PromptParams {
  readonly kind: "prompt_tuning" | "p_tuning";
  /** Trainable parameters by name (updated in place by the optimiser). */
  readonly params: Map<string, Float32Array>;
  /** Current table of each task, [n_t * C]. Valid until the next `sync()`. */
  tables(): Map<string, Float32Array>;
  /** Gradients of the parameters given d(loss)/d(table) of each task. */
  backward(gradTables: Map<string, Float32Array>): Map<string, Float32Array>;
  /** Call after the optimiser changed `params` (p-tuning re-runs the encoder). */
  sync(): void;
  /** Encoder state for resuming p-tuning later (undefined for prompt tuning). */
  encoderState():
    | { kind: EncoderKind; config: Record<string, unknown>; tensors: EncoderState }
    | undefined;
  dispose(): void;
}

/** Prompt tuning: the tables are the parameters, named `prompt.<task>`. */
export function directTables(initial: Map<string, Float32Array>): PromptParams {
  const params = new Map<string, Float32Array>();
  for (const [task, table] of initial) params.set(`prompt.${task}`, Float32Array.from(table));
  return {
    kind: "prompt_tuning",
    params,
    tables: () => new Map([...initial.keys()].map((t) => [t, params.get(`prompt.${t}`)!])),
    backward: (g) => new Map([...g].map(([t, grad]) => [`prompt.${t}`, grad])),
    sync() {},
    encoderState: () => undefined,
    dispose() {},
  };
}

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
