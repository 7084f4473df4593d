/**
 * Training (and evaluation) as a service: validates a submitted configuration, or evaluation
 * request, stores the job (its request, so whichever runner claims it rebuilds the same work),
 * and answers for its jobs (progress, events, cancellation). The job store owns each job's progress, folded from the run's own events;
 * nothing keeps a second copy. Which store (memory, disk, PostgreSQL) is the composition's
 * choice; the runner (`job_runner.ts`) runs its jobs one at a time on this process's engine.
 */
import { join } from "node:path";
import type { Engine } from "../model/engine.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { isKind, publicMessage, ServiceError } from "../errors.ts";
import type { ModelFingerprint, TaskStore } from "../registry/mod.ts";
import { parseRequestId, requestDigest } from "../registry/request_digest.ts";
import { LIST_PAGE, type Page, pageAfter, type PageRequest } from "../util/paging.ts";
import type { JobEvent, TrainingEvent } from "./events.ts";
import { isFinished, isJobId, type Job, type JobStore, watchEvents } from "./job_store.ts";
import { clearDir, JobRunner } from "./job_runner.ts";
import { runTraining } from "./run.ts";
import { TENSORBOARD_DIR } from "./tensorboard.ts";
import {
  DEFAULT_TRAINING_LIMITS,
  type InlineRecords,
  planRun,
  readRunConfig,
  type RunPlan,
  type RunRules,
  type TrainConfigSource,
  type TrainingLimits,
} from "./run_plan.ts";

export interface TrainRequest {
  config: TrainConfigSource;
  /** Dataset records sent with the request, added to the files the configuration names. */
  inline?: InlineRecords;
  /**
   * The caller's id for this request (AIP-155: a UUID): a retry with the same id gets the job
   * the first call made, on any replica, and never starts a second one.
   */
  requestId?: string;
}

export interface TrainingServiceOptions {
  /** Where jobs are kept: memory, disk (`<runs>/.jobs`) or the replicas' database. */
  jobs: JobStore;
  engine: Engine;
  tokenizer: Tokenizer;
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** Dataset paths resolve here and must stay inside it. */
  dataDir: string;
  /**
   * Where each job's directory goes (`<runsDir>/<job id>`: its checkpoint while it runs, its
   * TensorBoard event files until the job is forgotten). Default "runs".
   */
  runsDir?: string;
  /** Jobs queued or running at once. Default DEFAULT_MAX_QUEUED_JOBS. */
  maxQueuedJobs?: number;
  /** Finished jobs answered for. Default DEFAULT_KEEP_FINISHED_JOBS. */
  keepFinishedJobs?: number;
  /** Validation examples whose answers are generated for metrics. Default: all (NeMo). */
  valGenerateLimit?: number;
  /** The most virtual tokens a served task may have: serving's limit. Default 128. */
  maxVirtualTokens?: number;
  /** The server's limits on a run; defaults: `DEFAULT_TRAINING_LIMITS`. */
  limits?: Partial<TrainingLimits>;
  /** Sees every job's events as they happen (telemetry hooks in here). */
  observe?: (jobId: string, e: TrainingEvent) => void;
  /** How long a runner's claim on a job lasts without a renewal. Default 15 s. */
  jobLeaseMs?: number;
  /** Log sink for claims, takeovers and lost leases. */
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** Evaluation jobs on this queue (`evaluation/evaluation_job.ts`); without: unavailable. */
  evaluations?: EvaluationJobs;
}

/** Evaluation jobs, plugged in by the composition: checked at submission, run by the runner. */
export interface EvaluationJobs {
  /**
   * Checks a request (invalid_argument, not_found naming the field); returns the job's name and
   * tasks, and what to store for the runner (JSON).
   */
  admit(request: unknown): Promise<{ name: string; tasks: string[]; stored: unknown }>;
  run(
    stored: unknown,
    job: Job,
    emit: (e: TrainingEvent) => void,
    signal: AbortSignal,
  ): Promise<void>;
}

/** A job's stored request: a training run's, or an evaluation's (tagged). */
type StoredRequest = TrainRequest | { kind: "evaluate"; evaluate: unknown };

function isEvaluation(r: StoredRequest): r is { kind: "evaluate"; evaluate: unknown } {
  return (r as { kind?: string }).kind === "evaluate";
}

/** Jobs queued or running at once (every replica), unless told otherwise (MAX_QUEUED_JOBS). */
export const DEFAULT_MAX_QUEUED_JOBS = 16;
/** Finished jobs answered for (the newest), unless told otherwise. */
export const DEFAULT_KEEP_FINISHED_JOBS = 100;

/** What a job leaves in its directory when it ends: its event files, kept while the job is. */
const JOB_OUTPUTS = [TENSORBOARD_DIR];

/**
 * How often the directories of jobs another replica's store forgot are looked for (this runner
 * removes those it forgot itself at once).
 */
const SWEEP_MS = 5 * 60_000;

export class TrainingService {
  readonly #opts: TrainingServiceOptions;
  readonly #jobs: JobStore;
  readonly #runner: JobRunner;
  #sweep: ReturnType<typeof setInterval> | undefined;

  constructor(opts: TrainingServiceOptions) {
    this.#opts = opts;
    this.#jobs = opts.jobs;
    this.#runner = new JobRunner({
      store: opts.jobs,
      work: (request, job, emit, signal) => {
        const r = request as StoredRequest;
        return isEvaluation(r)
          ? this.#runEvaluation(r.evaluate, job, emit, signal)
          : this.#run(r, job, emit, signal);
      },
      workDir: (jobId) => this.#checkpointDir(jobId),
      outputs: JOB_OUTPUTS,
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
    this.#sweep ??= setInterval(() => void this.#removeDirs(false).catch(() => {}), SWEEP_MS);
    Deno.unrefTimer(this.#sweep);
  }

  /**
   * Validates the configuration (invalid_argument naming the key) and stores the job. A request
   * id already used returns its job (the retry of a call whose answer was lost). `signal`: the
   * caller gave up (deadline, cancel) before the job was stored, and nothing is.
   */
  async submit(req: TrainRequest, signal?: AbortSignal): Promise<Job> {
    const requestId = parseRequestId(req.requestId);
    // Every rule of the run, its data included, is checked now: a run that would fail is refused
    // here, not when it reaches the front of the queue.
    const { config } = await this.#plan(req);
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

  /**
   * Checks an evaluation (its version resolved now, its data read) and stores its job on the
   * queue training jobs share. As `submit()` for request ids and `signal`.
   */
  async evaluate(req: unknown, requestId?: string, signal?: AbortSignal): Promise<Job> {
    const ev = this.#evaluations();
    const id = parseRequestId(requestId);
    const admitted = await ev.admit(req);
    const request: StoredRequest = { kind: "evaluate", evaluate: admitted.stored };
    const { job } = await this.#jobs.create({
      name: admitted.name,
      kind: "evaluate",
      tasks: admitted.tasks,
      request,
      requestId: id,
      requestDigest: id ? requestDigest(request) : undefined,
      maxActive: this.#opts.maxQueuedJobs ?? DEFAULT_MAX_QUEUED_JOBS,
      signal,
    });
    return job;
  }

  #evaluations(): EvaluationJobs {
    const ev = this.#opts.evaluations;
    if (!ev) throw new ServiceError("unavailable", "this server does not run evaluation jobs");
    return ev;
  }

  async #runEvaluation(
    stored: unknown,
    job: Job,
    emit: (e: TrainingEvent) => void,
    signal: AbortSignal,
  ): Promise<void> {
    await this.#evaluations().run(stored, job, (e) => {
      this.#opts.observe?.(job.id, e);
      emit(e);
    }, signal);
  }

  /** The request's run, planned under this service's rules (run_plan.ts). */
  async #plan(req: TrainRequest): Promise<RunPlan> {
    const o = this.#opts;
    const rules: RunRules = {
      dataDir: o.dataDir,
      service: true,
      limits: { ...DEFAULT_TRAINING_LIMITS, ...o.limits },
      maxVirtualTokens: o.maxVirtualTokens,
      valGenerateLimit: o.valGenerateLimit,
    };
    const loaded = readRunConfig(req.config, rules, req.inline);
    return await planRun(
      loaded,
      rules,
      { model: o.engine.config, tokenizer: o.tokenizer, store: o.store },
      req.inline,
    );
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
    // Planned again: a job resumed after a restart meets this process's rules, and its data as
    // it is now.
    const plan = await this.#plan(req);
    await runTraining(plan, {
      engine: o.engine,
      tokenizer: o.tokenizer,
      store: o.store,
      fingerprint: o.fingerprint,
      checkpointDir: this.#checkpointDir(job.id),
      log: (msg) => o.log?.(msg, { job: job.id }),
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
    return pageAfter(all, (j) => j.id, page, LIST_PAGE);
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
   * Clears job directories (named by job id) that no job of this runner uses: what an earlier
   * process left. A job the store no longer holds loses its whole directory; another keeps only
   * its outputs (event files), and a job resumed later gets its checkpoint back from the store.
   * Other entries of the runs directory (named runs of `deno task train`) are left alone. Returns
   * the ids of the directories cleared.
   */
  async removeStaleJobDirs(): Promise<string[]> {
    return await this.#removeDirs(true);
  }

  /**
   * Removes the directories of jobs the store has forgotten, and with `stale`, clears those of
   * the jobs it holds, but for their outputs (only before this runner runs any: a job claimed
   * meanwhile could lose the checkpoint it is restoring).
   */
  async #removeDirs(stale: boolean): Promise<string[]> {
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
      const dir = join(runsDir, e.name);
      if (!(await this.#holds(e.name))) await Deno.remove(dir, { recursive: true });
      else if (!(stale && await clearDir(dir, JOB_OUTPUTS))) continue;
      removed.push(e.name);
    }
    return removed;
  }

  /** Whether the store still holds job `id` (not_found: forgotten). */
  async #holds(id: string): Promise<boolean> {
    try {
      await this.#jobs.get(id);
      return true;
    } catch (e) {
      if (isKind(e, "not_found")) return false;
      // The store is away: the directory stays until a sweep can ask again.
      if (isKind(e, "unavailable")) return true;
      throw e;
    }
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
    clearInterval(this.#sweep);
    await this.#runner.close();
  }
}
