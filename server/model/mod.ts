/** Public surface of the model layer: load a checkpoint once, build an engine over it. */
import { initTfBackend, TF_BACKENDS, type TfBackendName } from "./backend.ts";
import type { Engine } from "./engine.ts";
import { TfEngine } from "./tf_engine.ts";
import type { LoadedModel } from "./weights.ts";

export type { Engine, ForwardInput, KvCache, LossInput, SeqSpan } from "./engine.ts";
export type { Gpt2Config } from "./config.ts";
export type { LoadedModel } from "./weights.ts";
export { loadModel } from "./loader.ts";

/** `fast`: Float32Array + BLAS engine; the others are TensorFlow.js backends. */
export type BackendName = "fast" | TfBackendName;
export const BACKENDS: readonly BackendName[] = ["fast", ...TF_BACKENDS];

export async function createEngine(
  model: LoadedModel,
  opts: { backend?: string; threads?: number } = {},
): Promise<Engine> {
  const backend = opts.backend ?? "wasm";
  if (!(BACKENDS as readonly string[]).includes(backend)) {
    throw new RangeError(
      `backend must be one of ${BACKENDS.join(", ")}: found ${JSON.stringify(backend)}`,
    );
  }
  if (backend === "fast") {
    const { createFastEngine } = await import("./fast/fast_engine.ts");
    return createFastEngine(model, { threads: opts.threads });
  }
  const tf = await initTfBackend(backend, { threads: opts.threads });
  return new TfEngine(tf, model);
}
