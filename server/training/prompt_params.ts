/**
 * What the optimiser trains, seen as prompt tables. Prompt tuning trains each task's table
 * directly; p-tuning trains one encoder shared by the tasks tuned together, whose output rows are
 * cut into the tasks' tables (task t owns rows [offset_t, offset_t + n_t)). Either way the trainer
 * asks for tables, hands back d(loss)/d(table), and gets parameter gradients by name.
 * P-tuning's encoders (TF.js) are in encoder_params.ts, loaded only by a run that p-tunes.
 */
import type { EncoderKind, EncoderState } from "./prompt_encoder.ts";

export interface TaskSlot {
  task: string;
  virtualTokens: number;
}

/** The tables of one training forward pass, and that pass's backward. */
export interface TrainingPass {
  /** Each task's table in this pass, [n_t * C]. */
  readonly tables: Map<string, Float32Array>;
  /** Gradients of the parameters given d(loss)/d(table) of each task in this pass. */
  backward(gradTables: Map<string, Float32Array>): Map<string, Float32Array>;
}

export interface PromptParams {
  readonly kind: "prompt_tuning" | "p_tuning";
  /** Trainable parameters by name (updated in place by the optimiser). */
  readonly params: Map<string, Float32Array>;
  /**
   * Current table of each task, [n_t * C], as validation and serving see it (an encoder in eval
   * mode). Valid until the next `sync()`.
   */
  tables(): Map<string, Float32Array>;
  /**
   * One training forward pass; `seed` draws its dropout. Without dropout every pass until the
   * next `sync()` is the same object, over `tables()`, so a step's micro-batches share one
   * backward; with it (an LSTM encoder's dropout) each seed is a pass of its own, as each
   * micro-batch's forward in NeMo runs the encoder again.
   */
  trainingPass(seed: number): TrainingPass;
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
  const tables = () => new Map([...initial.keys()].map((t) => [t, params.get(`prompt.${t}`)!]));
  // The tables are the parameters' own arrays, so one pass stays current across steps.
  const pass: TrainingPass = {
    tables: tables(),
    backward: (g) => new Map([...g].map(([t, grad]) => [`prompt.${t}`, grad])),
  };
  return {
    kind: "prompt_tuning",
    params,
    tables,
    trainingPass: () => pass,
    sync() {},
    encoderState: () => undefined,
    dispose() {},
  };
}
