/**
 * The engines the GPU check runs: the cuda engine at each precision it offers, on the GPU or (the
 * dry run) on the CPU emulation of its device, and the fast CPU engine as the dry run's control.
 * Each engine gets a device of its own so its peak device memory can be read.
 */
import { CUDA_PRECISIONS, type CudaPrecision } from "../../server/model/cuda/cuda_engine.ts";
import { createCudaEngine } from "../../server/model/cuda/cuda_engine.ts";
import { openCudaDevice } from "../../server/model/cuda/cuda_device.ts";
import type { Device } from "../../server/model/cuda/device.ts";
import type { Engine } from "../../server/model/engine.ts";
import { loadBlas } from "../../server/model/fast/blas.ts";
import { createFastEngine } from "../../server/model/fast/fast_engine.ts";
import { emulatedDevice } from "../../server/model/testing/emulated_cuda_device.ts";
import { asGpt2, type LoadedModel } from "../../server/model/weights.ts";

export interface CheckedEngine {
  /** e.g. "cuda fp32", "fast fp32". */
  label: string;
  precision: CudaPrecision;
  engine: Engine;
  /** The cuda engine's device (null for the fast engine). */
  device: Device | null;
  dispose(): void;
}

export function cudaEngine(
  model: LoadedModel,
  precision: CudaPrecision,
  emulate: boolean,
): CheckedEngine {
  const device = emulate ? emulatedDevice(loadBlas() ?? undefined) : openCudaDevice();
  try {
    const engine = createCudaEngine(asGpt2(model), { precision, device });
    return {
      label: `cuda ${precision}`,
      precision,
      engine,
      device,
      dispose() {
        engine.dispose();
        device.dispose();
      },
    };
  } catch (e) {
    device.dispose();
    throw e;
  }
}

export function fastEngine(model: LoadedModel): CheckedEngine {
  const engine = createFastEngine(model);
  return {
    label: "fast fp32",
    precision: "fp32",
    engine,
    device: null,
    dispose: () => engine.dispose(),
  };
}

/**
 * The engines of the oracle step: every cuda precision; in the dry run also the fast engine, so
 * the CPU oracle is seen to pass an engine that runs no emulation.
 */
export function oracleEngines(emulate: boolean): {
  label: string;
  open: (m: LoadedModel) => CheckedEngine;
}[] {
  const cuda = CUDA_PRECISIONS.map((p) => ({
    label: `cuda ${p}`,
    open: (m: LoadedModel) => cudaEngine(m, p, emulate),
  }));
  return emulate ? [...cuda, { label: "fast fp32", open: fastEngine }] : cuda;
}
