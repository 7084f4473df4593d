/**
 * Training as a service: validates a submitted configuration, queues the run, and answers for
 * its jobs (progress, events, cancellation). The job queue owns each job's progress, folded from
 * the run's own events; nothing keeps a second copy. The queue is this process's (`JobQueue`) or,
 * with a database, the one every replica shares (`PgJobQueue`): there a job is stored as its
 * request, so whichever replica claims it rebuilds the same run.
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
import type { JobEvent, TrainingEvent } from "./events.ts";
import { type Job, JobQueue, JobSuspended, type JobWork } from "./jobs.ts";
import { JobJournal } from "./job_journal.ts";
import { PgJobQueue } from "./pg_jobs.ts";
import { datasetPath, runTraining } from "./run.ts";
import type { Database } from "../util/db.ts";

/** A configuration as submitted: NeMo's YAML text, or the object that YAML parses to. */
export type TrainConfigSource =
  | { kind: "yaml"; text: string }
  | { kind: "object"; config: Record<string, unknown> };

export interface TrainRequest {
  config: TrainConfigSource;
  /** Dataset records sent with the request, added to the files the configuration names. */
  inline?: { train?: readonly unknown[]; validation?: readonly unknown[] };
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
  engine: Engine;
  tokenizer: Tokenizer;
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** Dataset paths resolve here and must stay inside it. */
  dataDir: string;
  /** Where checkpoints go. Default "runs". */
  runsDir?: string;
  /** Jobs queued or running at once. Default 16. */
  maxQueuedJobs?: number;
  /** Finished jobs remembered. Default 100. */
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
  /**
   * In process: record jobs in this directory, so a restart resumes them (`recover()`). Default:
   * none, jobs live as long as the process.
   */
  journalDir?: string;
  /** The shared database: jobs, events and checkpoints go there, for every replica. */
  database?: Database;
  /** With a database: how long a replica's claim on a job lasts without a heartbeat. */
  jobLeaseMs?: number;
  /** With a database: log sink for takeovers and lost leases. */
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export const JOB_PAGE = { defaultSize: 50, maxSize: 1000 } as const;

export class TrainingService {
  readonly #opts: TrainingServiceOptions;
  readonly #jobs: JobQueue | PgJobQueue;
  readonly #journal?: JobJournal;

  constructor(opts: TrainingServiceOptions) {
    this.#opts = opts;
    // A job's failure is read by anyone who can list jobs: a bug's details stay in the log.
    const failureReason = (e: unknown) => publicMessage(e);
    if (!opts.database && opts.journalDir) {
      this.#journal = new JobJournal(opts.journalDir, opts.log);
    }
    this.#jobs = opts.database
      ? new PgJobQueue(opts.database, {
        run: (request, emit, signal, jobId) => {
          const req = request as TrainRequest;
          return this.#work(this.#config(req), req)(emit, signal, jobId);
        },
        checkpointDir: (jobId) => this.#checkpointDir(jobId),
        leaseMs: opts.jobLeaseMs,
        maxQueued: opts.maxQueuedJobs,
        keepFinished: opts.keepFinishedJobs,
        failureReason,
        log: opts.log,
      })
      : new JobQueue({
        maxQueued: opts.maxQueuedJobs,
        keepFinished: opts.keepFinishedJobs,
        failureReason,
        journal: this.#journal,
      });
  }

  /**
   * In process with a journal: takes back the jobs of the previous process. Finished ones are
   * answered for again; queued and interrupted ones are queued again and resume from their
   * checkpoints. Call before `removeStaleJobDirs()`, which then keeps their directories. Returns
   * the ids queued again.
   */
  async recover(): Promise<string[]> {
    if (!this.#journal || !(this.#jobs instanceof JobQueue)) return [];
    const resumed: string[] = [];
    for (const { job, request, events } of await this.#journal.load()) {
      if (["succeeded", "failed", "cancelled"].includes(job.state)) {
        this.#jobs.restore(job, events, null);
        continue;
      }
      let work: JobWork | null = null;
      let reason = "";
      try {
        const req = request as TrainRequest;
        work = this.#work(this.#config(req), req);
      } catch (e) {
        // The configuration no longer passes (limits changed): it fails, saying why.
        reason = `the job could not be resumed after a restart: ${publicMessage(e)}`;
      }
      this.#jobs.restore(job, events, work, reason);
      if (work) resumed.push(job.id);
    }
    return resumed;
  }

  /**
   * Starts taking jobs from the shared queue (a no-op in process, where a submit starts them);
   * called after `removeStaleJobDirs()`, so a job claimed at once keeps its restored checkpoint.
   */
  async start(): Promise<void> {
    if (this.#jobs instanceof PgJobQueue) await this.#jobs.start();
  }

  /** Validates the configuration (invalid_argument naming the key) and queues the run. */
  async submit(req: TrainRequest): Promise<Job> {
    const loaded = this.#config(req);
    const { config } = loaded;
    if (this.#jobs instanceof PgJobQueue) {
      return await this.#jobs.submit(config.name, config.model.new_tasks, req);
    }
    const job = this.#jobs.submit(
      config.name,
      config.model.new_tasks,
      this.#work(loaded, req),
      req,
    );
    // The caller hears of the job once a restart would find it.
    await this.#journal?.flushed();
    return job;
  }

  /** Each job checkpoints under its own id: no caller text becomes a path, no two jobs share. */
  #checkpointDir(jobId: string): string {
    return join(this.#opts.runsDir ?? "runs", jobId);
  }

  #work(
    { config, notes }: { config: TrainingConfig; notes: string[] },
    req: TrainRequest,
  ): JobWork {
    const o = this.#opts;
    return async (emit, signal, jobId) => {
      const checkpointDir = this.#checkpointDir(jobId);
      try {
        await runTraining(config, {
          engine: o.engine,
          tokenizer: o.tokenizer,
          store: o.store,
          fingerprint: o.fingerprint,
          baseDir: o.dataDir,
          confineToBaseDir: true,
          checkpointDir,
          valGenerateLimit: o.valGenerateLimit,
          maxTotalSteps: { ...DEFAULT_TRAINING_LIMITS, ...o.limits }.maxSteps,
          inline: req.inline,
          notes,
        }, (e) => {
          o.observe?.(jobId, e);
          emit(e);
        }, signal);
      } finally {
        // A suspended job resumes from this checkpoint after a restart. Otherwise nothing resumes
        // from it: the job is over, or (with a database) the copy that matters is the stored
        // one (PgJobQueue), restored by whichever replica runs the job next.
        if (!(signal.reason instanceof JobSuspended)) {
          await Deno.remove(checkpointDir, { recursive: true }).catch((e) => {
            if (!(e instanceof Deno.errors.NotFound)) throw e;
          });
        }
      }
    };
  }

  async get(id: string): Promise<Job> {
    return await this.#jobs.get(id);
  }

  /** Newest first. */
  async list(page: PageRequest = {}): Promise<Page<Job>> {
    return pageAfter(await this.#jobs.list(), (j) => j.id, page, JOB_PAGE);
  }

  /** The job as it is after the request: cancelled, cancelling, or already finished. */
  async cancel(id: string): Promise<Job> {
    return await this.#jobs.cancel(id);
  }

  /** Events after `afterSequence`, then live ones until the job ends or `signal` aborts. */
  async *events(
    id: string,
    afterSequence: number,
    signal?: AbortSignal,
  ): AsyncGenerator<JobEvent> {
    await this.#jobs.get(id); // not_found before the first event
    yield* this.#jobs.watch(id, afterSequence, signal);
  }

  /**
   * Removes checkpoint directories of jobs from an earlier process (named by job id, a UUID):
   * jobs do not outlive their process yet, so nothing will resume them. Other entries of the
   * runs directory (named runs of `deno task train`) are left alone.
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
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
    for (const e of entries) {
      // Not a job of this process: left by one that is gone. (With a database, no job runs here
      // before start(), and a job's checkpoint is restored from the database when it does.)
      if (!e.isDirectory || !uuid.test(e.name)) continue;
      if (this.#jobs instanceof JobQueue && this.#jobs.has(e.name)) continue;
      await Deno.remove(join(runsDir, e.name), { recursive: true });
      removed.push(e.name);
    }
    return removed;
  }

  /**
   * Stops accepting work. In process: cancels the queue and waits for the running job to stop;
   * with a journal, stops the running job without an outcome instead (it resumes after a restart).
   * With a database: hands the running job back (another replica resumes it from its checkpoint)
   * and leaves the queue to the other replicas.
   */
  async close(): Promise<void> {
    if (this.#jobs instanceof PgJobQueue) return await this.#jobs.close();
    if (this.#journal) return await this.#jobs.suspendAll();
    this.#jobs.cancelAll();
    await this.#jobs.drained();
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
