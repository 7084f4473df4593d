/** Public surface of the model layer: load a checkpoint once, build an engine over it. */
import { initTfBackend, TF_BACKENDS, type TfBackendName } from "./backend.ts";
import type { Engine } from "./engine.ts";
import type { KernelRegistry } from "./tf_blas_kernels.ts";
import { TfEngine } from "./tf_engine.ts";
import { type Gpt2Model, isLlama, type LoadedModel } from "./weights.ts";

export type { Engine, ForwardInput, KvCache, LossInput, SeqSpan } from "./engine.ts";
export type { Gpt2Config } from "./gpt2_config.ts";
export type { LoadedModel } from "./weights.ts";
export { loadModel } from "./loader.ts";

/**
 * `auto` (the default): `onednn` where its shim loads, else `fast`. `fast`: Float32Array + BLAS
 * engine, the portable one; `onednn`: the same engine on oneDNN (fp32/bf16, needs libdnnl2 and
 * `deno task build-native`), 2x PyTorch and more at real sizes where `fast` is 1-2x (`deno task
 * bench --model gpt2,gpt2-medium`); `cuda`: the GPU engine (CUDA runtime, cuBLAS and the
 * project's kernels through FFI); the others are TensorFlow.js backends.
 */
export type BackendName = "auto" | "fast" | "onednn" | "cuda" | TfBackendName;
export const BACKENDS: readonly BackendName[] = [
  "auto",
  "fast",
  "onednn",
  "cuda",
  ...TF_BACKENDS,
];

/** The backend `auto` stands for in this process: onednn where the shim loads, else fast. */
export async function resolveAutoBackend(): Promise<"onednn" | "fast"> {
  try {
    const { loadOnednn } = await import("./onednn/lib.ts");
    loadOnednn();
    return "onednn";
  } catch {
    return "fast";
  }
}

export async function createEngine(
  model: LoadedModel,
  opts: {
    backend?: string;
    threads?: number;
    /** cpu backend: matrix products through OpenBLAS when it loads. Default true. */
    blasKernels?: boolean;
    /** onednn backend: auto | fp32 | bf16 | bf16-emulated. Default: PRECISION, else auto. */
    precision?: string;
  } = {},
): Promise<Engine> {
  let backend = opts.backend ?? "auto";
  if (!(BACKENDS as readonly string[]).includes(backend)) {
    throw new RangeError(
      `backend must be one of ${BACKENDS.join(", ")}: found ${JSON.stringify(backend)}`,
    );
  }
  if (backend === "auto") backend = await resolveAutoBackend();
  if (isLlama(model) && backend !== "fast" && backend !== "onednn" && backend !== "cuda") {
    throw new RangeError(
      `backend ${backend} runs GPT-2 checkpoints only: a ${model.config.modelType} checkpoint runs on fast, onednn or cuda (BACKEND)`,
    );
  }
  if (backend === "fast") {
    const { createFastEngine } = await import("./fast/fast_engine.ts");
    return createFastEngine(model, { threads: opts.threads });
  }
  if (backend === "onednn") {
    const { createOnednnEngine } = await import("./onednn/onednn_engine.ts");
    return createOnednnEngine(model, { threads: opts.threads, precision: opts.precision });
  }
  if (backend === "cuda") {
    // Fails here, at start, naming what is missing (libcudart, libcublas, a GPU, the kernels).
    const { createCudaEngine } = await import("./cuda/cuda_engine.ts");
    return createCudaEngine(model);
  }
  const tf = await initTfBackend(backend, { threads: opts.threads });
  if (backend === "cpu" && opts.blasKernels !== false) {
    const blas = await cpuBlasKernels(tf, opts.threads);
    if (blas) return new TfEngine(tf, model as Gpt2Model, blas);
  }
  return new TfEngine(tf, model as Gpt2Model);
}

/**
 * TF.js kernels are registered process-wide, so the BLAS matMul is swapped in once per process;
 * the name of the library used, or null when none loads (the pure cpu kernels stay).
 */
let cpuKernels: Promise<string | null> | undefined;
function cpuBlasKernels(tf: KernelRegistry, threads?: number): Promise<string | null> {
  cpuKernels ??= (async () => {
    const { loadBlas } = await import("./fast/blas.ts");
    const { registerBlasMatMul } = await import("./tf_blas_kernels.ts");
    const blas = loadBlas({ threads });
    if (!blas) return null;
    registerBlasMatMul(tf, blas);
    return "openblas";
  })();
  return cpuKernels;
}
