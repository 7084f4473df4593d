/**
 * The service's domain, wired once: the resident runtime (model, engine, tokenizer, registry),
 * the training job queue, and the serving path (prompt slots -> scheduler -> inference service).
 * RPC handlers reach it through `server/rpc/ports.ts`; nothing here knows about gRPC.
 */
import type { Runtime } from "./bootstrap.ts";
import { InferenceService } from "./serving/inference_service.ts";
import { PromptSlots } from "./serving/prompt_slots.ts";
import { Scheduler, type SchedulerLimits, type StepStats } from "./serving/scheduler.ts";
import type { TrainingConfig } from "./training/config.ts";
import { JobQueue } from "./training/jobs.ts";
import { type RunDeps, type RunEvent, runTraining } from "./training/run.ts";

/** Lifecycle events the queue adds around a run's own events. */
export type JobPayload =
  | RunEvent
  | { type: "queued"; position: number }
  | { type: "job_started" }
  | { type: "failed"; reason: string }
  | { type: "cancelled" };

export interface AppOptions {
  /** Directory that relative dataset paths in training configs resolve against. Default: cwd. */
  dataDir?: string;
  /** Where training checkpoints go. Default: "runs". */
  runsDir?: string;
  maxQueuedJobs?: number;
  servingLimits?: Partial<SchedulerLimits>;
  /** Resident prompt tables (slots) and rows per slot. */
  maxSlots?: number;
  maxVirtualTokens?: number;
  onStep?: (s: StepStats) => void;
  /** Sees every training job's events (telemetry hooks in here). */
  onTrainingEvent?: (jobId: string, e: RunEvent) => void;
}

export class App {
  readonly runtime: Runtime;
  readonly jobs: JobQueue<JobPayload>;
  readonly slots: PromptSlots;
  readonly scheduler: Scheduler;
  readonly inference: InferenceService;
  readonly #opts: AppOptions;

  constructor(runtime: Runtime, opts: AppOptions = {}) {
    this.runtime = runtime;
    this.#opts = opts;
    const { model, tokenizer, engine } = runtime;
    this.jobs = new JobQueue<JobPayload>({
      maxQueued: opts.maxQueuedJobs,
      lifecycle: {
        queued: (position) => ({ type: "queued", position }),
        started: () => ({ type: "job_started" }),
        failed: (reason) => ({ type: "failed", reason }),
        cancelled: () => ({ type: "cancelled" }),
      },
    });
    this.slots = new PromptSlots({
      vocabSize: model.config.vocabSize,
      hidden: model.config.nEmbd,
      wte: model.weights.wte,
      maxSlots: opts.maxSlots ?? 64,
      maxVirtualTokens: opts.maxVirtualTokens ?? 128,
    });
    this.scheduler = new Scheduler({
      engine,
      embedder: this.slots,
      decode: (ids) => tokenizer.decode(ids),
      eosId: tokenizer.eosId,
      limits: opts.servingLimits,
      onStep: opts.onStep,
    });
    this.inference = new InferenceService({
      getTask: (name, version) => runtime.store.get(name, version),
      tokenizer,
      slots: this.slots,
      scheduler: this.scheduler,
    });
  }

  /**
   * Queues a training run; its events stream through `jobs.watch()`. `inline` records are added
   * to the configured datasets; `observe` sees each event as it is emitted.
   */
  startTraining(
    config: TrainingConfig,
    extra: { inline?: RunDeps["inline"]; observe?: (e: RunEvent) => void } = {},
  ) {
    const rt = this.runtime;
    let jobId = "";
    const info = this.jobs.submit(config.name, (emit, signal) =>
      runTraining(config, {
        engine: rt.engine,
        tokenizer: rt.tokenizer,
        store: rt.store,
        fingerprint: rt.fingerprint,
        baseDir: this.#opts.dataDir ?? Deno.cwd(),
        confineToBaseDir: true,
        runsDir: this.#opts.runsDir ?? "runs",
        inline: extra.inline,
      }, (e) => {
        extra.observe?.(e);
        this.#opts.onTrainingEvent?.(jobId, e);
        emit(e);
      }, signal).then(() => {}));
    jobId = info.id;
    return info;
  }

  /** Stops accepting work, cancels training, drains inference. */
  async close(): Promise<void> {
    this.jobs.cancelAll();
    await this.scheduler.close();
    await this.jobs.drained();
  }
}
