/**
 * Engines by name for tests that run every engine over the same weights, and one probe of what
 * an engine computes: forward logits, cached decode logits, loss and input gradient.
 */
import { createCudaEngine } from "../cuda/cuda_engine.ts";
import { emulatedDevice } from "./emulated_cuda_device.ts";
import { loadBlas } from "../fast/blas.ts";
import { createFastEngine } from "../fast/fast_engine.ts";
import { createEngine, type Engine } from "../mod.ts";
import type { LoadedModel } from "../weights.ts";
import { createWorkerEngine } from "../worker_engine.ts";

/**
 * A backend name, or `fast-worker`, `cuda-emulated`, or `fast (typescript panels)` (the fast
 * engine without the native 16-bit kernels). One BLAS thread: the same summation order each run.
 */
export function createTestEngine(name: string, m: LoadedModel): Promise<Engine> {
  switch (name) {
    case "fast (typescript panels)":
      return Promise.resolve(createFastEngine(m, { half: null, threads: 1 }));
    case "fast-worker":
      return createWorkerEngine(m, { backend: "fast", threads: 1 });
    case "cuda-emulated":
      return Promise.resolve(
        createCudaEngine(m, { device: emulatedDevice(loadBlas() ?? undefined) }),
      );
    default:
      return createEngine(m, { backend: name, precision: "fp32", threads: 1 });
  }
}

export interface EngineOutputs {
  logits: Float32Array;
  decoded: Float32Array[];
  loss: number;
  grad: Float32Array;
}

/** 12 tokens forward (logits at 2 rows), 3 cached decode steps, then loss and gradient. */
export async function probeEngine(e: Engine): Promise<EngineOutputs> {
  const V = e.config.vocabSize;
  const ids = Int32Array.from({ length: 12 }, (_, i) => (i * 7919 + 3) % V);
  const cache = e.newCache();
  const { logits } = await e.forward({
    embeds: e.embed(ids),
    seqs: [{ length: ids.length, cache }],
    logitRows: Int32Array.of(0, ids.length - 1),
  });
  const decoded: Float32Array[] = [];
  for (const id of [5, 17, 256]) {
    decoded.push(
      (await e.forward({
        embeds: e.embed([id]),
        seqs: [{ length: 1, cache }],
        logitRows: Int32Array.of(0),
      })).logits,
    );
  }
  cache.dispose();
  const { loss, gradEmbeds } = await e.lossAndGrad({
    embeds: e.embed(ids),
    seqs: [{ length: ids.length }],
    lossRows: Int32Array.of(8, 9, 10),
    targets: Int32Array.of(1, 2, 3),
  });
  return { logits, decoded, loss, grad: gradEmbeds };
}
