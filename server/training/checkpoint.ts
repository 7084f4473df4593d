/**
 * Training checkpoints ("latest" and "best"): parameters, optimiser moments and the tables at
 * that point, so a run killed with SIGKILL resumes at the step it last saved. Each checkpoint is
 * a directory written under a temporary name, fsynced, then renamed over the old one, so a kill
 * mid-write leaves the previous checkpoint whole.
 */
import { join } from "node:path";
import {
  encodeSafetensors,
  parseSafetensors,
  readFloat32,
  type TensorToWrite,
} from "../model/safetensors.ts";
import { syncDir, writeFileDurable } from "../util/durable_fs.ts";
import { diskFull } from "../errors.ts";
import type { AdamWState } from "./optimizer.ts";
import type { TopKEntry } from "./top_k.ts";

/** "latest" (what a run resumes from), "best", or a top-k checkpoint's name (see top_k.ts). */
export type CheckpointName = string;

export interface CheckpointState {
  step: number;
  params: Record<string, Float32Array>;
  optimizer?: AdamWState;
  /** The best monitored value so far (val_loss unless the checkpoint monitor names another). */
  bestValLoss: number | null;
  badValidations: number;
  /**
   * Early stopping's own reference: the last loss that improved on the one before by min_delta
   * (Lightning's best_score). Absent in older checkpoints: bestValLoss then stands for it.
   */
  stoppingBestLoss?: number | null;
  bestMetrics: Record<string, Record<string, number>>;
  /** The validation loss of the best tables (bestValLoss is the monitored value). */
  bestLoss?: number | null;
  tables: Map<string, Float32Array>;
  /** The top-k checkpoints kept so far (save_top_k). */
  topK?: TopKEntry[];
  /**
   * The latest validation (loss, per-task metrics, accuracy; null: not measured), so a finished
   * run resumed reports what it ended with. Absent in older checkpoints.
   */
  lastValidation?: {
    loss: number | null;
    metrics: Record<string, Record<string, number>>;
    accuracy: number | null;
  } | null;
}

/** How a full checkpoint disk is named to the user: the settings, never the path. */
export const CHECKPOINT_STORAGE =
  "the checkpoint directory (RUNS_DIR; for deno task train --runs or exp_manager.exp_dir)";

/**
 * Writes a checkpoint aside and renames it over the previous one, which stays whole until then;
 * a full disk is resource_exhausted naming CHECKPOINT_STORAGE, its partial files removed.
 */
export async function saveCheckpoint(
  dir: string,
  name: CheckpointName,
  s: CheckpointState,
): Promise<string> {
  const tmp = join(dir, `.${name}.${crypto.randomUUID()}.tmp`);
  try {
    return await writeCheckpoint(dir, name, tmp, s);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw diskFull(e, CHECKPOINT_STORAGE);
  }
}

async function writeCheckpoint(
  dir: string,
  name: CheckpointName,
  tmp: string,
  s: CheckpointState,
): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const final = join(dir, name);
  await Deno.mkdir(tmp);
  const tensors: Record<string, TensorToWrite> = {};
  const moments: Record<string, { step: number }> = {};
  for (const [k, v] of Object.entries(s.params)) {
    tensors[`param/${k}`] = { dtype: "F32", shape: [v.length], data: v };
  }
  for (const [k, v] of s.tables) {
    tensors[`table/${k}`] = { dtype: "F32", shape: [v.length], data: v };
  }
  for (const [k, m] of Object.entries(s.optimizer?.params ?? {})) {
    tensors[`adam_m/${k}`] = { dtype: "F32", shape: [m.expAvg.length], data: m.expAvg };
    tensors[`adam_v/${k}`] = { dtype: "F32", shape: [m.expAvgSq.length], data: m.expAvgSq };
    moments[k] = { step: m.step };
  }
  const meta = {
    step: s.step,
    bestValLoss: s.bestValLoss,
    badValidations: s.badValidations,
    stoppingBestLoss: s.stoppingBestLoss ?? null,
    bestMetrics: s.bestMetrics,
    topK: s.topK ?? [],
    bestLoss: s.bestLoss ?? null,
    lastValidation: s.lastValidation ?? null,
    optimizerOptions: s.optimizer?.options ?? null,
    moments,
  };
  await writeFileDurable(join(tmp, "tensors.safetensors"), encodeSafetensors(tensors));
  await writeFileDurable(join(tmp, "meta.json"), new TextEncoder().encode(JSON.stringify(meta)));
  await syncDir(tmp);
  // rename() cannot replace a non-empty directory: move the old one aside first.
  const old = join(dir, `.${name}.${crypto.randomUUID()}.old`);
  try {
    await Deno.rename(final, old);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  await Deno.rename(tmp, final);
  await syncDir(dir);
  await Deno.remove(old, { recursive: true }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  return final;
}

/** Reads a checkpoint; undefined when none exists. A half-moved "latest" falls back to ".old". */
export async function loadCheckpoint(
  dir: string,
  name: CheckpointName,
): Promise<CheckpointState | undefined> {
  let path = join(dir, name);
  try {
    await Deno.stat(join(path, "meta.json"));
  } catch {
    // Killed between the two renames: the previous checkpoint is still whole under .old.
    const olds: string[] = [];
    try {
      for await (const e of Deno.readDir(dir)) {
        if (e.name.startsWith(`.${name}.`) && e.name.endsWith(".old")) olds.push(e.name);
      }
    } catch {
      return undefined;
    }
    if (olds.length === 0) return undefined;
    path = join(dir, olds[0]);
  }
  const meta = JSON.parse(await Deno.readTextFile(join(path, "meta.json")));
  const file = parseSafetensors(
    await Deno.readFile(join(path, "tensors.safetensors")),
    join(path, "tensors.safetensors"),
  );
  const params: Record<string, Float32Array> = {};
  const tables = new Map<string, Float32Array>();
  const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
  for (const key of file.tensors.keys()) {
    const [kind, ...rest] = key.split("/");
    const n = rest.join("/");
    const data = readFloat32(file, key);
    if (kind === "param") params[n] = data;
    else if (kind === "table") tables.set(n, data);
    else if (kind === "adam_m") m.set(n, data);
    else if (kind === "adam_v") v.set(n, data);
  }
  const optimizer: AdamWState | undefined = meta.optimizerOptions
    ? {
      options: meta.optimizerOptions,
      params: Object.fromEntries(
        Object.entries(meta.moments as Record<string, { step: number }>).map(([k, x]) => [
          k,
          { step: x.step, expAvg: m.get(k)!, expAvgSq: v.get(k)! },
        ]),
      ),
    }
    : undefined;
  return {
    step: meta.step,
    params,
    optimizer,
    bestValLoss: meta.bestValLoss,
    badValidations: meta.badValidations,
    stoppingBestLoss: meta.stoppingBestLoss ?? meta.bestValLoss,
    bestMetrics: meta.bestMetrics,
    tables,
    topK: Array.isArray(meta.topK) ? meta.topK : [],
    bestLoss: meta.bestLoss ?? meta.bestValLoss ?? null,
    lastValidation: meta.lastValidation ?? null,
  };
}

/** Removes a checkpoint (and leftovers of interrupted saves); absent is fine. */
export async function removeCheckpoint(dir: string, name: CheckpointName): Promise<void> {
  const gone = (e: unknown) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  };
  await Deno.remove(join(dir, name), { recursive: true }).catch(gone);
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.name.startsWith(`.${name}.`)) {
        await Deno.remove(join(dir, e.name), { recursive: true }).catch(gone);
      }
    }
  } catch (e) {
    gone(e);
  }
}
