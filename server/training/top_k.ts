/**
 * Which validation checkpoints a run keeps, as Lightning's ModelCheckpoint decides it: the
 * `save_top_k` best by the monitored value (-1: all, 0: none), a new one kept only when strictly
 * better than the worst kept, and named by the `filename` pattern (`{val_loss:.3f}-{step}` ->
 * `val_loss=0.412-step=120`, Lightning's auto-inserted metric names).
 */
import { invalidArgument } from "../errors.ts";
import { better, type MonitorMode } from "./early_stopping.ts";

export interface TopKEntry {
  name: string;
  score: number;
  step: number;
}

/** Fills `pattern` from `values`; the result is one safe path segment. */
export function checkpointName(pattern: string, values: Record<string, number>): string {
  const filled = pattern.replace(
    /\{([A-Za-z_][A-Za-z0-9_]*)(?::\.(\d+)f)?\}/g,
    (_, key, digits) => {
      const v = values[key];
      if (v === undefined) {
        throw invalidArgument(
          `exp_manager.checkpoint_callback_params.filename: {${key}} is not one of ${
            Object.keys(values).map((k) => `{${k}}`).join(", ")
          }`,
        );
      }
      return `${key}=${digits === undefined ? String(v) : v.toFixed(Number(digits))}`;
    },
  );
  const safe = filled.replace(/[^A-Za-z0-9_.=-]/g, "_").replace(/^[._-]+/, "");
  if (safe === "" || safe === "latest" || safe === "best" || safe.includes("..")) {
    throw invalidArgument(
      `exp_manager.checkpoint_callback_params.filename: ${
        JSON.stringify(pattern)
      } does not make a usable checkpoint name (got ${JSON.stringify(safe)})`,
    );
  }
  return safe;
}

export class TopK {
  readonly #k: number;
  readonly #mode: MonitorMode;
  #kept: TopKEntry[];

  constructor(k: number, mode: MonitorMode, kept: readonly TopKEntry[] = []) {
    this.#k = k;
    this.#mode = mode;
    this.#kept = [...kept];
  }

  get kept(): readonly TopKEntry[] {
    return this.#kept;
  }

  /**
   * Whether a checkpoint with `score` is kept, and which kept ones it pushes out. NaN is never
   * kept (Lightning treats it as the worst value).
   */
  consider(entry: TopKEntry): { keep: boolean; evict: TopKEntry[] } {
    if (this.#k === 0 || Number.isNaN(entry.score)) return { keep: false, evict: [] };
    if (this.#k < 0 || this.#kept.length < this.#k) {
      this.#kept.push(entry);
      return { keep: true, evict: [] };
    }
    const worstKept = this.#kept.reduce((w, e) => (better(this.#mode, w.score, e.score) ? e : w));
    if (!better(this.#mode, entry.score, worstKept.score)) return { keep: false, evict: [] };
    this.#kept = this.#kept.filter((e) => e !== worstKept).concat(entry);
    return { keep: true, evict: [worstKept] };
  }
}
