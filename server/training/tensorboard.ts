/**
 * A training run's TensorBoard log (NeMo's exp_manager.create_tensorboard_logger): its events, as
 * the job streams them, written as event files in `<run dir>/tensorboard/`. Scalars carry NeMo's
 * names: train_loss, lr, global_step, epoch, grad_norm (when clipping measures it) at each step
 * event; val_loss and val_<metric>/<task> at each validation; test_<metric>/<task> at the end.
 * The configuration is the `hparams` text summary.
 */
import { join } from "node:path";
import * as YAML from "yaml";
import type { TrainingEvent } from "./events.ts";
import {
  encodeEvent,
  eventFileName,
  FILE_VERSION,
  frameRecord,
  isEventFileName,
  type SummaryValue,
  type TfEvent,
} from "./tfevents.ts";

/** The run directory's entry that holds its event files. */
export const TENSORBOARD_DIR = "tensorboard";

export interface TensorBoardLogOptions {
  /** Where the event files go (created when the run starts). */
  dir: string;
  /** The run's configuration, written once per file as the `hparams` text summary. */
  hparams: unknown;
  /** Says once that writing stopped, and why. */
  log?: (message: string) => void;
  /** Milliseconds since the epoch. Default Date.now. */
  now?: () => number;
}

export class TensorBoardLog {
  readonly dir: string;
  readonly #o: TensorBoardLogOptions;
  #file: Deno.FsFile | undefined;
  #failed = false;

  constructor(opts: TensorBoardLogOptions) {
    this.dir = opts.dir;
    this.#o = opts;
  }

  /** Writes what `e` says of the run; never throws. */
  observe(e: TrainingEvent): void {
    if (this.#failed) return;
    // An event file is a view of the run, not the run: a disk error here must not fail the
    // training job (nor stall it retrying), so it is logged once and the run carries on without.
    try {
      this.#observe(e);
    } catch (err) {
      this.#failed = true;
      this.close();
      this.#o.log?.(
        `TensorBoard event files in ${this.dir} stopped: ${(err as Error).message ?? err}`,
      );
    }
  }

  close(): void {
    try {
      this.#file?.close();
    } catch { /* already closed */ }
    this.#file = undefined;
  }

  #observe(e: TrainingEvent): void {
    switch (e.type) {
      case "started":
        this.#open(e.resumedFromStep);
        return;
      case "step": {
        const values: SummaryValue[] = [
          { tag: "train_loss", simpleValue: e.loss },
          { tag: "lr", simpleValue: e.learningRate },
          { tag: "global_step", simpleValue: e.step },
          { tag: "epoch", simpleValue: e.epoch },
        ];
        if (Number.isFinite(e.gradNorm)) values.push({ tag: "grad_norm", simpleValue: e.gradNorm });
        this.#write(e.step, { summary: values });
        return;
      }
      case "validation":
        this.#write(e.step, {
          summary: [{ tag: "val_loss", simpleValue: e.loss }, ...perTask("val_", e.metrics)],
        });
        return;
      case "completed": {
        // The test split's metrics (test_loss, test_accuracy...), measured after training.
        const test = Object.fromEntries(
          Object.entries(e.metrics).map(([task, m]) => [
            task,
            Object.fromEntries(Object.entries(m).filter(([k]) => k.startsWith("test_"))),
          ]),
        );
        const values = perTask("", test);
        if (values.length > 0) this.#write(e.steps, { summary: values });
        return;
      }
      default:
        return;
    }
  }

  /**
   * A new file. A fresh run replaces the event files of the one before it in this directory (as
   * it replaces its checkpoints); a resumed one keeps them and marks where it continues.
   */
  #open(resumedFromStep: number): void {
    this.close();
    Deno.mkdirSync(this.dir, { recursive: true });
    if (resumedFromStep === 0) {
      for (const f of Deno.readDirSync(this.dir)) {
        if (f.isFile && isEventFileName(f.name)) Deno.removeSync(join(this.dir, f.name));
      }
    }
    const seconds = this.#now() / 1000;
    const host = hostname();
    // n: the first free name (two runs of one process can start within the same second).
    for (let n = 0;; n++) {
      try {
        this.#file = Deno.openSync(join(this.dir, eventFileName(seconds, host, Deno.pid, n)), {
          write: true,
          createNew: true,
        });
        break;
      } catch (err) {
        if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
      }
    }
    this.#write(0, { fileVersion: FILE_VERSION });
    // TensorBoard drops the earlier files' points from here on: the steps run again.
    if (resumedFromStep > 0) this.#write(resumedFromStep + 1, { sessionStart: true });
    const text = "```yaml\n" + YAML.stringify(this.#o.hparams) + "```\n";
    this.#write(resumedFromStep, { summary: [{ tag: "hparams", text }] });
  }

  /**
   * One event, written through at once so a running job's curves are visible. Synchronous: a few
   * hundred bytes per logged step, and the records land in the order the events happened.
   */
  #write(step: number, what: TfEvent["what"]): void {
    const file = this.#file;
    if (!file) return;
    const record = frameRecord(encodeEvent({ wallTime: this.#now() / 1000, step, what }));
    for (let at = 0; at < record.length;) at += file.writeSync(record.subarray(at));
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }
}

/** `<prefix><metric>/<task>` for every task's metrics. */
function perTask(prefix: string, metrics: Record<string, Record<string, number>>): SummaryValue[] {
  return Object.entries(metrics).flatMap(([task, m]) =>
    Object.entries(m).map(([k, v]) => ({ tag: `${prefix}${k}/${task}`, simpleValue: v }))
  );
}

/** This machine's name as a file-name part ("localhost" when it cannot be read). */
function hostname(): string {
  try {
    return Deno.hostname().replace(/[^A-Za-z0-9._-]/g, "_") || "localhost";
  } catch {
    return "localhost";
  }
}
