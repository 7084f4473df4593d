/**
 * TensorFlow.js backend selection. `wasm` is the default; `cpu` is the portable pure-JS one;
 * `tensorflow` is tfjs-node(-gpu) where that package can be imported. A backend that cannot load
 * fails here, at start, saying which and why.
 *
 * TF.js itself is imported on first use: a service on the fast, oneDNN or cuda engine that never
 * p-tunes never loads it (nor needs it installed, as on the GPU check's bundle).
 */
import type * as TF from "@tensorflow/tfjs-core";
import { createRequire } from "node:module";

export type TfBackendName = "wasm" | "cpu" | "tensorflow";
export const TF_BACKENDS: readonly TfBackendName[] = ["wasm", "cpu", "tensorflow"];

const require = createRequire(import.meta.url);
let gradientsRegistered = false;

/**
 * Gradient registrations live in @tensorflow/tfjs's bundle; tfjs-core's own ESM
 * `register_all_gradients` has extensionless imports that Deno cannot resolve.
 */
export function registerGradients(): void {
  if (gradientsRegistered) return;
  require("@tensorflow/tfjs");
  gradientsRegistered = true;
}

export async function initTfBackend(
  name: string,
  opts: { threads?: number } = {},
): Promise<typeof TF> {
  if (!(TF_BACKENDS as readonly string[]).includes(name)) {
    throw new RangeError(
      `backend must be one of ${TF_BACKENDS.join(", ")}: found ${JSON.stringify(name)}`,
    );
  }
  const tf = await import("@tensorflow/tfjs-core");
  registerGradients();
  if (tf.getBackend() === name) return tf;
  try {
    if (name === "wasm") {
      const wasm = await import("@tensorflow/tfjs-backend-wasm");
      const dir = new URL(
        "../../node_modules/@tensorflow/tfjs-backend-wasm/dist/",
        import.meta.url,
      );
      wasm.setWasmPaths(dir.href);
      if (opts.threads) wasm.setThreadsCount(opts.threads);
    } else if (name === "cpu") {
      await import("@tensorflow/tfjs-backend-cpu");
    } else {
      // Optional dependency: present only where libtensorflow could be installed.
      try {
        require("@tensorflow/tfjs-node-gpu");
      } catch {
        require("@tensorflow/tfjs-node");
      }
    }
  } catch (e) {
    throw new Error(`backend "${name}" cannot be loaded: ${(e as Error).message}`);
  }
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`backend "${name}" failed to initialise (tf.setBackend returned false)`);
  await tf.ready();
  return tf;
}

/**
 * Small TF.js work outside the engine (the p-tuning encoders) needs some backend even when the
 * engine is the fast one: keep the current one, else wasm, else cpu.
 */
export async function ensureTfBackend(): Promise<void> {
  const tf = await import("@tensorflow/tfjs-core");
  registerGradients();
  if (tf.engine().backendName) return;
  try {
    await initTfBackend("wasm");
  } catch {
    await initTfBackend("cpu");
  }
}
