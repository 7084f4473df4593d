/**
 * Training jobs behind one interface, as the registry's tasks are behind TaskStore. A job is its
 * request (what any runner rebuilds the work from), its state, its lease (which runner holds it,
 * until when), its events numbered from 1 (its progress is folded from them, so the two never
 * disagree) and the checkpoint of its latest run. Three stores keep them: memory (tests), disk
 * (the embedded service: one process, jobs survive a restart) and PostgreSQL (every replica
 * shares them). `job_runner.ts` is the one loop that runs them; `watchEvents()` below the one way
 * to follow a job. `job_store_contract_test.ts` holds every store to the same behaviour.
 *
 * What every store guarantees:
 * - an event is durable before anyone can read it, and numbered in the order it was appended;
 * - a job's terminal event and its final state are written together, the event last of its job;
 * - the owner's writes (append, finish, checkpoints) are fenced: once its lease is gone (expired
 *   and claimed by another, or released) they fail with LeaseLost and change nothing;
 * - of runners claiming at once, exactly one gets a job.
 */
import { notFound, resourceExhausted, ServiceError } from "../errors.ts";
import { isUuid } from "../util/uuid.ts";
import { isTerminal, type JobEvent, type TaskVersionRef, type TrainingEvent } from "./events.ts";

export type JobState =
  | "queued"
  | "running"
  /** Cancel was asked for while running; the work stops at its next step. */
  | "cancelling"
  | "succeeded"
  | "failed"
  | "cancelled";

export type FinalState = "succeeded" | "failed" | "cancelled";

/** What a job does: a training run, or the evaluation of a task version. */
export type JobKind = "train" | "evaluate";

/** Unfinished jobs by whether a runner holds them: what a training fleet scales on. */
export interface JobCounts {
  /** Jobs no runner holds: queued, or running under a lease that ran out (their runner is gone). */
  waiting: number;
  /** Jobs a runner holds under a live lease (cancelling ones included). */
  running: number;
}

/** A job and its progress, as GetJob/ListJobs show it. */
export interface Job {
  id: string;
  /** The run's name (its config's `name`), or the evaluated task's. */
  name: string;
  kind: JobKind;
  state: JobState;
  tasks: string[];
  createdAt: Date;
  startedAt?: Date;
  finishedAt?: Date;
  step: number;
  totalSteps: number;
  /** 0-based epoch of the latest step. */
  epoch: number;
  totalEpochs: number;
  droppedExamples: Record<string, number>;
  skippedRecords: number;
  /** Task versions written (when it succeeded). */
  written: TaskVersionRef[];
  /** Why it failed. */
  error?: string;
  /** The sequence number of the job's latest event (0 before any). */
  lastSequence: number;
}

/** The part of a Job folded from its events. */
export type Progress = Pick<
  Job,
  | "kind"
  | "tasks"
  | "step"
  | "totalSteps"
  | "epoch"
  | "totalEpochs"
  | "droppedExamples"
  | "skippedRecords"
  | "written"
  | "error"
>;

export interface NewJob {
  name: string;
  /** Default "train". */
  kind?: JobKind;
  tasks: string[];
  /** What a runner rebuilds the work from (JSON). */
  request: unknown;
  /**
   * The caller's request id (AIP-155): a job created with the same id is returned instead of a
   * new one, and `requestDigest` tells a retry from another request that reuses the id.
   */
  requestId?: string;
  requestDigest?: string;
  /** Jobs queued or running (everywhere) beyond which create() refuses. */
  maxActive: number;
  /** Aborted before the job is stored: nothing is stored. */
  signal?: AbortSignal;
}

/** A job a runner has taken: it holds the lease until it renews no more. */
export interface Claim {
  job: Job;
  request: unknown;
  /** 1 for the first runner to take the job, 2 for the next (a takeover or a restart), ... */
  attempt: number;
  /** Cancel was asked for while no runner held the job: it ends cancelled, without running. */
  cancelRequested: boolean;
}

/** The runner's lease on a job is gone (expired and taken, or released): it must stop. */
export class LeaseLost extends Error {
  constructor(id: string) {
    super(`job ${id}: another runner holds it now`);
    this.name = "LeaseLost";
  }
}

export interface JobStore {
  /**
   * False for a store that ends with its process (memory): a runner closing cancels its jobs
   * instead of leaving them to a next process.
   */
  readonly durable: boolean;
  /**
   * Stores a queued job and its first event (`queued`, with the jobs ahead of it). With a
   * requestId that a stored job has, returns that job (`created` false) when the digests agree
   * and refuses with already_exists when they do not. resource_exhausted beyond `maxActive`.
   */
  create(job: NewJob): Promise<{ job: Job; created: boolean }>;
  /**
   * Takes the oldest job that is queued, or whose runner's lease has expired, for `owner` until
   * `leaseMs` from now; null when there is none.
   */
  claim(owner: string, leaseMs: number): Promise<Claim | null>;
  /** Extends the owner's lease; says whether cancel was asked for. LeaseLost when not its. */
  renew(id: string, owner: string, leaseMs: number): Promise<{ cancelRequested: boolean }>;
  /** Ends the owner's lease now (shutdown): the job is claimable at once, as it is. */
  release(id: string, owner: string): Promise<void>;
  /** Appends the owner's event and folds it into the job's progress. LeaseLost when not its. */
  append(id: string, owner: string, event: TrainingEvent): Promise<JobEvent>;
  /**
   * Ends the owner's job: final state and terminal event together, the checkpoint dropped.
   * LeaseLost when it holds the job no more.
   */
  finish(id: string, owner: string, state: FinalState, event: TrainingEvent): Promise<Job>;
  /**
   * Cancels a queued job at once; marks a running one `cancelling` (its runner stops it); leaves
   * a finished one as it is. Returns the job as it is after the request.
   */
  requestCancel(id: string): Promise<Job>;
  /** The job; not_found for an id this store does not hold (or has forgotten). */
  get(id: string): Promise<Job>;
  /** At most `limit` jobs, newest first. */
  list(limit: number): Promise<Job[]>;
  /** Unfinished jobs, waiting for a runner or running (every replica's, with a shared store). */
  counts(): Promise<JobCounts>;
  /** The job's events with sequence > `after`, ascending, at most `limit`. */
  events(id: string, after: number, limit: number): Promise<JobEvent[]>;
  /** Replaces the job's checkpoint (paths relative to its directory). LeaseLost when not its. */
  saveCheckpoint(id: string, owner: string, files: Map<string, Uint8Array>): Promise<void>;
  /** The job's checkpoint (empty when it has none). */
  loadCheckpoint(id: string): Promise<Map<string, Uint8Array>>;
  /** Forgets finished jobs beyond the newest `keep`, or finished before `before`; their ids. */
  forget(keep: number, before: Date): Promise<string[]>;
  /**
   * Calls `fn(id)` when job `id` has a new event or state (written by any runner, any replica),
   * and `fn(null)` when changes may have been missed (a reconnect) or the store closes.
   */
  onChange(fn: (id: string | null) => void): () => void;
  /** Calls `fn` when a job may have become claimable (created, released). */
  onClaimable(fn: () => void): () => void;
  readonly closed: boolean;
  /** Stops notifying (watchers end); the store's connection or files stay the caller's. */
  close(): Promise<void>;
}

// ---- What every store shares --------------------------------------------------------------------

/** The listeners of a store's onChange() and onClaimable(), and their calls. */
export class JobNotices {
  readonly #change = new Set<(id: string | null) => void>();
  readonly #claimable = new Set<() => void>();

  onChange(fn: (id: string | null) => void): () => void {
    this.#change.add(fn);
    return () => this.#change.delete(fn);
  }

  onClaimable(fn: () => void): () => void {
    this.#claimable.add(fn);
    return () => this.#claimable.delete(fn);
  }

  /** Job `id` changed (null: anything may have). */
  changed(id: string | null): void {
    for (const fn of [...this.#change]) fn(id);
  }

  claimable(): void {
    for (const fn of [...this.#claimable]) fn();
  }

  clear(): void {
    this.#change.clear();
    this.#claimable.clear();
  }
}

export const FINISHED: ReadonlySet<JobState> = new Set(["succeeded", "failed", "cancelled"]);

export function isFinished(state: JobState): boolean {
  return FINISHED.has(state);
}

/** Job ids are UUIDs, as crypto.randomUUID() writes them: anything else names no job (or directory). */
export function isJobId(id: string): boolean {
  return isUuid(id) && id === id.toLowerCase();
}

export function jobNotFound(id: string): ServiceError {
  const shown = id.length > 80 ? `${id.slice(0, 80)}...` : id;
  return notFound(`job_id: no job ${JSON.stringify(shown)}`);
}

export function queueFull(active: number, max: number): ServiceError {
  return resourceExhausted(
    `the training queue is full: ${active} jobs queued or running (max_queued_jobs ${max})`,
    "max_queued_jobs",
  );
}

/** The request id reused by a different request (AIP-155): the first request stays the one. */
export function requestIdReused(requestId: string, jobId: string): ServiceError {
  return new ServiceError(
    "already_exists",
    `request_id ${requestId} was used by a different request (job ${jobId})`,
  );
}

/** A job as create() stores it. */
export function newJob(
  id: string,
  name: string,
  tasks: string[],
  createdAt: Date,
  kind: JobKind = "train",
): Job {
  return {
    id,
    name,
    kind,
    state: "queued",
    tasks: [...tasks],
    createdAt,
    step: 0,
    totalSteps: 0,
    epoch: 0,
    totalEpochs: 0,
    droppedExamples: {},
    skippedRecords: 0,
    written: [],
    lastSequence: 0,
  };
}

/** Folds one event into a job's progress. */
export function foldEvent(job: Job, e: TrainingEvent): void {
  switch (e.type) {
    case "started":
      job.tasks = e.tasks;
      job.totalSteps = e.totalSteps;
      job.totalEpochs = e.totalEpochs;
      job.step = e.resumedFromStep;
      job.droppedExamples = e.droppedExamples;
      job.skippedRecords = e.skippedRecords;
      break;
    case "step":
      job.step = e.step;
      job.epoch = e.epoch;
      job.totalSteps = e.totalSteps;
      break;
    case "evaluating":
      job.step = e.done;
      job.totalSteps = e.total;
      break;
    case "completed":
      job.written = e.written;
      break;
    case "failed":
      job.error = e.reason;
      break;
  }
}

export function progressOf(job: Job): Progress {
  return {
    kind: job.kind,
    tasks: job.tasks,
    step: job.step,
    totalSteps: job.totalSteps,
    epoch: job.epoch,
    totalEpochs: job.totalEpochs,
    droppedExamples: job.droppedExamples,
    skippedRecords: job.skippedRecords,
    written: job.written,
    ...(job.error !== undefined ? { error: job.error } : {}),
  };
}

/** A copy the caller may keep (stores never hand out their own objects). */
export function copyJob(job: Job): Job {
  return {
    ...job,
    tasks: [...job.tasks],
    droppedExamples: { ...job.droppedExamples },
    written: job.written.map((w) => ({ ...w })),
  };
}

/**
 * Events of job `id` with sequence > `after`: those stored, then live ones until the job's
 * terminal event, `signal` aborts or the store closes. A watcher that reconnects with the last
 * sequence it saw gets exactly the rest, none lost, none repeated, whoever wrote them.
 */
export async function* watchEvents(
  store: JobStore,
  id: string,
  after: number,
  signal?: AbortSignal,
  /** A change notification lost (a reconnect in between) costs at most this long. */
  pollMs = 2000,
): AsyncGenerator<JobEvent> {
  if (!Number.isSafeInteger(after) || after < 0) {
    throw new ServiceError(
      "invalid_argument",
      `after_sequence must be an integer >= 0: found ${after}`,
    );
  }
  await store.get(id); // not_found before anything else
  let next = after;
  while (!signal?.aborted && !store.closed) {
    // Subscribed before reading, so a change during the read still wakes us.
    const change = nextChange(store, id, signal, pollMs);
    try {
      const events = await store.events(id, next, 500);
      for (const ev of events) {
        next = ev.sequence;
        yield ev;
        if (isTerminal(ev.event)) return;
      }
      if (events.length > 0) continue;
      const job = await store.get(id).catch(() => null);
      // Finished, and nothing after what was read: the terminal event was before `after`.
      if (!job || (isFinished(job.state) && job.lastSequence <= next)) return;
      await change.promise;
    } finally {
      change.cancel();
    }
  }
}

/** Resolves at the next change of job `id` (or any), an abort, or after `ms` anyway. */
function nextChange(
  store: JobStore,
  id: string,
  signal: AbortSignal | undefined,
  ms: number,
): { promise: Promise<void>; cancel(): void } {
  let done = () => {};
  const promise = new Promise<void>((resolve) => {
    const timer = setTimeout(() => done(), ms);
    const off = store.onChange((changed) => {
      if (changed === null || changed === id) done();
    });
    done = () => {
      clearTimeout(timer);
      off();
      signal?.removeEventListener("abort", done);
      resolve();
    };
    signal?.addEventListener("abort", done, { once: true });
  });
  return { promise, cancel: () => done() };
}
