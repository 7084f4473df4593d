/**
 * Training as a service: validates a submitted configuration, stores the job (its request, so
 * whichever runner claims it rebuilds the same run), and answers for its jobs (progress, events,
 * cancellation). The job store owns each job's progress, folded from the run's own events;
 * nothing keeps a second copy. Which store (memory, disk, PostgreSQL) is the composition's
 * choice; the runner (`job_runner.ts`) runs its jobs one at a time on this process's engine.
 */
import { join } from "node:path";
import type { Engine } from "../model/engine.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { invalidArgument, publicMessage, resourceExhausted } from "../errors.ts";
import { checkServableVirtualTokens, DEFAULT_MAX_VIRTUAL_TOKENS } from "../registry/limits.ts";
import type { ModelFingerprint, TaskStore } from "../registry/mod.ts";
import { type Page, pageAfter, type PageRequest } from "../util/paging.ts";
import {
  type LoadedConfig,
  parseTrainingConfig,
  type TrainingConfig,
  validateTrainingConfig,
} from "./config.ts";
import { parseRequestId, requestDigest } from "../registry/request_digest.ts";
import type { JobEvent, TrainingEvent } from "./events.ts";
import { isFinished, isJobId, type Job, type JobStore, watchEvents } from "./job_store.ts";
import { JobRunner } from "./job_runner.ts";
import { datasetPath, runTraining } from "./run.ts";

/** A configuration as submitted: NeMo's YAML text, or the object that YAML parses to. */
export type TrainConfigSource =
  | { kind: "yaml"; text: string }
  | { kind: "object"; config: Record<string, unknown> };

export interface TrainRequest {
  config: TrainConfigSource;
  /** Dataset records sent with the request, added to the files the configuration names. */
  inline?: { train?: readonly unknown[]; validation?: readonly unknown[] };
  /**
   * The caller's id for this request (AIP-155: a UUID): a retry with the same id gets the job
   * the first call made, on any replica, and never starts a second one.
   */
  requestId?: string;
}

/**
 * The largest run a caller may ask for. A configuration beyond one is refused at submission, the
 * message naming the key and the limit, instead of holding the model (and memory) for hours.
 */
export interface TrainingLimits {
  /** model.global_batch_size and micro_batch_size. */
  maxBatchSize: number;
  /** trainer.max_steps, and max_epochs x steps per epoch. */
  maxSteps: number;
  /** model.p_tuning.encoder_hidden. */
  maxEncoderHidden: number;
  /** model.p_tuning.num_layers. */
  maxEncoderLayers: number;
  /** model.inference.tokens_to_generate. */
  maxTokensToGenerate: number;
}

export const DEFAULT_TRAINING_LIMITS: TrainingLimits = {
  maxBatchSize: 256,
  maxSteps: 100_000,
  maxEncoderHidden: 8192,
  maxEncoderLayers: 8,
  maxTokensToGenerate: 256,
};

export interface TrainingServiceOptions {
  /** Where jobs are kept: memory, disk (`<runs>/.jobs`) or the replicas' database. */
  jobs: JobStore;
  engine: Engine;
  tokenizer: Tokenizer;
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** Dataset paths resolve here and must stay inside it. */
  dataDir: string;
  /** Where checkpoints go. Default "runs". */
  runsDir?: string;
  /** Jobs queued or running at once. Default DEFAULT_MAX_QUEUED_JOBS. */
  maxQueuedJobs?: number;
  /** Finished jobs answered for. Default DEFAULT_KEEP_FINISHED_JOBS. */
  keepFinishedJobs?: number;
  /** Characters of a YAML configuration. Default 1 MiB. */
  maxConfigChars?: number;
  /** Validation examples whose answers are generated for metrics. Default 256. */
  valGenerateLimit?: number;
  /** The most virtual tokens a served task may have: serving's limit. Default 128. */
  maxVirtualTokens?: number;
  /** Defaults: `DEFAULT_TRAINING_LIMITS`. */
  limits?: Partial<TrainingLimits>;
  /** Sees every job's events as they happen (telemetry hooks in here). */
  observe?: (jobId: string, e: TrainingEvent) => void;
  /** How long a runner's claim on a job lasts without a renewal. Default 15 s. */
  jobLeaseMs?: number;
  /** Log sink for claims, takeovers and lost leases. */
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export const JOB_PAGE = { defaultSize: 50, maxSize: 1000 } as const;
/** Jobs queued or running at once (every replica), unless told otherwise (MAX_QUEUED_JOBS). */
export const DEFAULT_MAX_QUEUED_JOBS = 16;
/** Finished jobs answered for (the newest), unless told otherwise. */
export const DEFAULT_KEEP_FINISHED_JOBS = 100;

export class TrainingService {
  readonly #opts: TrainingServiceOptions;
  readonly #jobs: JobStore;
  readonly #runner: JobRunner;

  constructor(opts: TrainingServiceOptions) {
    this.#opts = opts;
    this.#jobs = opts.jobs;
    this.#runner = new JobRunner({
      store: opts.jobs,
      work: (request, job, emit, signal) => this.#run(request as TrainRequest, job, emit, signal),
      workDir: (jobId) => this.#checkpointDir(jobId),
      leaseMs: opts.jobLeaseMs,
      keepFinished: opts.keepFinishedJobs ?? DEFAULT_KEEP_FINISHED_JOBS,
      // A job's failure is read by anyone who can list jobs: a bug's details stay in the log.
      failureReason: (e) => publicMessage(e),
      log: opts.log,
    });
  }

  /**
   * Starts running jobs: those submitted from now on, and those a previous process (or a replica
   * that is gone) left unfinished, each resumed from its stored checkpoint. Call after
   * `removeStaleJobDirs()`.
   */
  start(): void {
    this.#runner.start();
  }

  /**
   * Validates the configuration (invalid_argument naming the key) and stores the job. A request
   * id already used returns its job (the retry of a call whose answer was lost). `signal`: the
   * caller gave up (deadline, cancel) before the job was stored, and nothing is.
   */
  async submit(req: TrainRequest, signal?: AbortSignal): Promise<Job> {
    const requestId = parseRequestId(req.requestId);
    const { config } = this.#config(req);
    const request: TrainRequest = {
      config: req.config,
      ...(req.inline ? { inline: req.inline } : {}),
    };
    const { job } = await this.#jobs.create({
      name: config.name,
      tasks: config.model.new_tasks,
      request,
      requestId,
      requestDigest: requestId ? requestDigest(request) : undefined,
      maxActive: this.#opts.maxQueuedJobs ?? DEFAULT_MAX_QUEUED_JOBS,
      signal,
    });
    return job;
  }

  /** Each job checkpoints under its own id: no caller text becomes a path, no two jobs share. */
  #checkpointDir(jobId: string): string {
    return join(this.#opts.runsDir ?? "runs", jobId);
  }

  /** A stored request's run (the runner restored its checkpoint into the job's directory). */
  async #run(
    req: TrainRequest,
    job: Job,
    emit: (e: TrainingEvent) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const o = this.#opts;
    // Validated again: a job resumed after a restart meets this process's limits.
    const { config, notes } = this.#config(req);
    await runTraining(config, {
      engine: o.engine,
      tokenizer: o.tokenizer,
      store: o.store,
      fingerprint: o.fingerprint,
      baseDir: o.dataDir,
      confineToBaseDir: true,
      checkpointDir: this.#checkpointDir(job.id),
      valGenerateLimit: o.valGenerateLimit,
      maxTotalSteps: { ...DEFAULT_TRAINING_LIMITS, ...o.limits }.maxSteps,
      inline: req.inline,
      notes,
    }, (e) => {
      o.observe?.(job.id, e);
      emit(e);
    }, signal);
  }

  async get(id: string): Promise<Job> {
    return await this.#jobs.get(id);
  }

  /** Newest first. */
  async list(page: PageRequest = {}): Promise<Page<Job>> {
    const { keepFinishedJobs = DEFAULT_KEEP_FINISHED_JOBS } = this.#opts;
    const all = await this.#jobs.list(
      keepFinishedJobs + (this.#opts.maxQueuedJobs ?? DEFAULT_MAX_QUEUED_JOBS),
    );
    return pageAfter(all, (j) => j.id, page, JOB_PAGE);
  }

  /** The job as it is after the request: cancelled, cancelling, or already finished. */
  async cancel(id: string): Promise<Job> {
    return await this.#jobs.requestCancel(id);
  }

  /** Events after `afterSequence`, then live ones until the job ends or `signal` aborts. */
  events(id: string, afterSequence: number, signal?: AbortSignal): AsyncGenerator<JobEvent> {
    return watchEvents(this.#jobs, id, afterSequence, signal);
  }

  /**
   * Removes job directories (named by job id) that no job of this runner uses: what an earlier
   * process left. A job resumed later gets its checkpoint back from the store. Other entries of
   * the runs directory (named runs of `deno task train`) are left alone.
   */
  async removeStaleJobDirs(): Promise<string[]> {
    const runsDir = this.#opts.runsDir ?? "runs";
    const removed: string[] = [];
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(runsDir)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return removed;
      throw e;
    }
    for (const e of entries) {
      if (!e.isDirectory || !isJobId(e.name) || this.#runner.isRunning(e.name)) continue;
      await Deno.remove(join(runsDir, e.name), { recursive: true });
      removed.push(e.name);
    }
    return removed;
  }

  /**
   * Stops running jobs. A durable store keeps the running job unfinished, released with its
   * checkpoint for the next runner (this service after a restart, or another replica); a memory
   * store ends with the process, so its unfinished jobs are cancelled (watchers get a final
   * event).
   */
  async close(): Promise<void> {
    if (!this.#jobs.durable) {
      for (const j of await this.#jobs.list(Number.MAX_SAFE_INTEGER)) {
        if (!isFinished(j.state)) await this.#jobs.requestCancel(j.id);
      }
    }
    await this.#runner.close();
  }

  #config(req: TrainRequest): { config: TrainingConfig; notes: string[] } {
    const { config, notes } = this.#parse(req);
    refuseServerPaths(config);
    checkSizes(config, { ...DEFAULT_TRAINING_LIMITS, ...this.#opts.limits }, this.#opts.engine);
    // A run whose task serving would refuse is refused before it trains for nothing.
    for (const t of config.model.task_templates) {
      if (!config.model.new_tasks.includes(t.taskname)) continue;
      checkServableVirtualTokens(
        `model.task_templates: task ${t.taskname}`,
        t.total_virtual_tokens,
        this.#opts.maxVirtualTokens ?? DEFAULT_MAX_VIRTUAL_TOKENS,
      );
    }
    // Refused now, not when the job reaches the front of the queue.
    const data = config.model.data;
    for (
      const [field, files] of [
        ["train_ds", data.train_ds],
        ["validation_ds", data.validation_ds],
        ["test_ds", data.test_ds],
      ] as const
    ) {
      files.forEach((f, i) =>
        datasetPath(this.#opts.dataDir, f, `model.data.${field}[${i}]`, true)
      );
    }
    return { config, notes };
  }

  #parse(req: TrainRequest): LoadedConfig {
    const inlineTrainData = (req.inline?.train?.length ?? 0) > 0;
    const src = req.config;
    if (src.kind === "yaml") {
      const max = this.#opts.maxConfigChars ?? 1 << 20;
      if (src.text.length > max) {
        throw resourceExhausted(
          `config_yaml must be at most ${max} characters: found ${src.text.length}`,
          "max_config_chars",
        );
      }
      if (!src.text.trim()) throw invalidArgument("config_yaml must not be empty");
      return parseTrainingConfig(src.text, { file: "config_yaml", inlineTrainData });
    }
    return validateTrainingConfig(src.config, { inlineTrainData });
  }
}

/**
 * Keys that name server-side paths are the service's to choose, never a caller's: it trains on
 * the model it serves, adds tasks to its own registry, and keeps each job's checkpoints in the
 * job's own directory.
 */
function refuseServerPaths(c: TrainingConfig): void {
  const keys: [string, string | null, string][] = [
    [
      "model.language_model_path",
      c.model.language_model_path,
      "the service trains on the model it serves",
    ],
    ["model.restore_path", c.model.restore_path, "the service adds tasks to its own registry"],
    [
      "model.nemo_path",
      c.model.nemo_path,
      "the service keeps the run's tasks in its registry (export one with deno task peft export)",
    ],
    [
      "exp_manager.exp_dir",
      c.exp_manager.exp_dir,
      "each job keeps its checkpoints in its own directory",
    ],
    [
      "exp_manager.explicit_log_dir",
      c.exp_manager.explicit_log_dir,
      "each job keeps its checkpoints in its own directory",
    ],
  ];
  for (const [key, value, why] of keys) {
    if (value !== null) {
      throw invalidArgument(
        `${key} must be null for the service (${why}): found ${JSON.stringify(value)}`,
      );
    }
  }
}

function checkSizes(c: TrainingConfig, l: TrainingLimits, engine: Engine): void {
  const atMost = (key: string, v: number | null, max: number, setting: string) => {
    if (v !== null && v > max) {
      throw resourceExhausted(
        `${key} must be at most ${max} (the server's ${setting}): found ${v}`,
        setting,
      );
    }
  };
  const m = c.model;
  atMost("model.global_batch_size", m.global_batch_size, l.maxBatchSize, "max_train_batch_size");
  atMost("model.micro_batch_size", m.micro_batch_size, l.maxBatchSize, "max_train_batch_size");
  atMost("trainer.max_steps", c.trainer.max_steps, l.maxSteps, "max_train_steps");
  atMost(
    "model.p_tuning.encoder_hidden",
    m.p_tuning.encoder_hidden,
    l.maxEncoderHidden,
    "max_encoder_hidden",
  );
  atMost(
    "model.p_tuning.num_layers",
    m.p_tuning.num_layers,
    l.maxEncoderLayers,
    "max_encoder_layers",
  );
  atMost(
    "model.inference.tokens_to_generate",
    m.inference.tokens_to_generate,
    l.maxTokensToGenerate,
    "max_tokens_to_generate",
  );
  const positions = engine.config.nPositions;
  for (const t of m.task_templates) {
    if (t.max_seq_length > positions) {
      throw invalidArgument(
        `model.task_templates: task ${t.taskname}: max_seq_length must be at most the model's n_positions (${positions}): found ${t.max_seq_length}`,
      );
    }
  }
}
