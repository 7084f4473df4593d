/**
 * Training jobs: a FIFO queue (one job trains at a time, since every job shares the one resident
 * model), each job with an append-only event log numbered from 1 and its progress, which is
 * folded from those same events (`applyEvent`), so the two can never disagree. Any number of
 * watchers read a job's log from any point and then follow it live: a watcher that reconnects
 * with the last number it saw gets exactly the rest, none lost, none repeated.
 */
import { invalidArgument, notFound, resourceExhausted } from "../errors.ts";
import { isTerminal, type JobEvent, type TaskVersionRef, type TrainingEvent } from "./events.ts";
import type { JobJournal } from "./job_journal.ts";

export type JobState =
  | "queued"
  | "running"
  /** Cancel was asked for while running; the work stops at its next step. */
  | "cancelling"
  | "succeeded"
  | "failed"
  | "cancelled";

/** A job and its progress, as GetJob/ListJobs show it. */
export interface Job {
  id: string;
  /** The run's name (its config's `name`). */
  name: string;
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

/** What a job does: emits events, returns when done, throws to fail, honours the signal. */
export type JobWork = (
  emit: (e: TrainingEvent) => void,
  signal: AbortSignal,
  jobId: string,
) => Promise<void>;

export interface JobQueueOptions {
  /** Queued + running jobs beyond which submit() refuses. Default 16. */
  maxQueued?: number;
  /** Finished jobs remembered (oldest forgotten first). Default 100. */
  keepFinished?: number;
  /** How long a finished job is remembered, in ms. Default 24 h. */
  keepFinishedMs?: number;
  /**
   * Events kept per running job; past it the oldest step events go (validation, checkpoint and
   * lifecycle events stay). A finished job keeps no step events at all. Default 10,000.
   */
  maxEventsPerJob?: number;
  /** Clock. Default `Date.now`. */
  now?: () => number;
  /** The text a failed job shows for an error thrown by its work. Default: the message. */
  failureReason?: (err: unknown) => string;
  /**
   * Where jobs are recorded on disk so they survive a restart (`restore()` takes them back).
   * Default: none, jobs live as long as the process.
   */
  journal?: JobJournal;
}

/**
 * The abort reason of a job stopped by `suspendAll()` (shutdown with a journal): it is neither
 * cancelled nor failed, and resumes, from its checkpoint, when the journal is restored.
 */
export class JobSuspended extends Error {
  constructor() {
    super("the service is shutting down; the job resumes when it restarts");
    this.name = "JobSuspended";
  }
}

interface Entry {
  job: Job;
  /** Ascending by sequence; step events may have been dropped (see `maxEventsPerJob`). */
  events: JobEvent[];
  /** Dropped once the job finishes, with whatever it held (inline records, the config). */
  work: JobWork | null;
  /** Watchers iterating the log now: a finished job's steps are dropped when none is. */
  watching: number;
  abort: AbortController;
  waiters: Set<() => void>;
}

const FINISHED: ReadonlySet<JobState> = new Set(["succeeded", "failed", "cancelled"]);

/** Folds one event into a job's progress. */
export function applyEvent(job: Job, e: TrainingEvent): void {
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
    case "completed":
      job.written = e.written;
      break;
    case "failed":
      job.error = e.reason;
      break;
  }
}

export class JobQueue {
  readonly #entries = new Map<string, Entry>();
  readonly #pending: string[] = [];
  readonly #maxQueued: number;
  readonly #keepFinished: number;
  readonly #keepFinishedMs: number;
  readonly #maxEvents: number;
  readonly #now: () => number;
  readonly #failureReason: (err: unknown) => string;
  #running: string | null = null;
  #idle: Promise<void> = Promise.resolve();
  readonly #journal?: JobJournal;
  #suspended = false;

  constructor(opts: JobQueueOptions = {}) {
    this.#maxQueued = opts.maxQueued ?? 16;
    this.#keepFinished = opts.keepFinished ?? 100;
    this.#keepFinishedMs = opts.keepFinishedMs ?? 24 * 3600_000;
    this.#maxEvents = opts.maxEventsPerJob ?? 10_000;
    this.#now = opts.now ?? Date.now;
    this.#failureReason = opts.failureReason ??
      ((e) => (e instanceof Error ? e.message : String(e)));
    this.#journal = opts.journal;
  }

  /**
   * Queues `work`; refuses with resource_exhausted when `maxQueued` jobs are waiting or running.
   * `request` is what the journal records for `restore()` to rebuild the work from.
   */
  submit(name: string, tasks: string[], work: JobWork, request?: unknown): Job {
    const active = this.#pending.length + (this.#running ? 1 : 0);
    if (active >= this.#maxQueued) {
      throw resourceExhausted(
        `the training queue is full: ${active} jobs queued or running (max_queued_jobs ${this.#maxQueued})`,
        "max_queued_jobs",
      );
    }
    const id = crypto.randomUUID();
    const entry: Entry = {
      job: {
        id,
        name,
        state: "queued",
        tasks: [...tasks],
        createdAt: new Date(this.#now()),
        step: 0,
        totalSteps: 0,
        epoch: 0,
        totalEpochs: 0,
        droppedExamples: {},
        skippedRecords: 0,
        written: [],
        lastSequence: 0,
      },
      events: [],
      work,
      watching: 0,
      abort: new AbortController(),
      waiters: new Set(),
    };
    this.#entries.set(id, entry);
    this.#pending.push(id);
    this.#journal?.created(entry.job, request ?? null);
    this.#emit(entry, {
      type: "queued",
      position: this.#pending.length - 1 + (this.#running ? 1 : 0),
    });
    this.#pump();
    return snapshot(entry.job);
  }

  /**
   * Takes back a job recorded by the journal of an earlier process: a finished one is remembered
   * as it was; an unfinished one (queued, or running when the process stopped) is queued again,
   * its events kept and numbered on from the last, and its work (rebuilt from its request) resumes
   * from whatever checkpoint it left. `work` null: it can no longer run (`reason` says why) and
   * is recorded as failed.
   */
  restore(job: Job, events: JobEvent[], work: JobWork | null, reason = ""): void {
    const lastSequence = Math.max(job.lastSequence, events.at(-1)?.sequence ?? 0);
    const entry: Entry = {
      job: { ...snapshot(job), lastSequence },
      events: [...events],
      work,
      watching: 0,
      abort: new AbortController(),
      waiters: new Set(),
    };
    // Progress as the events say (the record on disk is rewritten only at state changes).
    for (const ev of events) applyEvent(entry.job, ev.event);
    this.#entries.set(job.id, entry);
    if (FINISHED.has(job.state)) {
      this.#compact(entry);
      return;
    }
    if (job.state === "cancelling") {
      // Cancel was asked for before the process stopped: it is honoured, not run again.
      this.#finish(entry, "cancelled", { type: "cancelled", reason: "cancelled while running" });
      return;
    }
    if (!work) {
      this.#finish(entry, "failed", { type: "failed", reason });
      return;
    }
    entry.job.state = "queued";
    this.#pending.push(job.id);
    this.#journal?.updated(entry.job);
    this.#pump();
  }

  /**
   * Shutdown with a journal: stops the running job without recording an outcome (it stays
   * unfinished on disk, with its checkpoint, and resumes after a restart), starts nothing more,
   * and ends every watcher's stream. Resolves when the work has stopped.
   */
  async suspendAll(): Promise<void> {
    this.#suspended = true;
    if (this.#running) {
      this.#entries.get(this.#running)!.abort.abort(new JobSuspended());
    }
    for (const e of this.#entries.values()) for (const w of [...e.waiters]) w();
    await this.drained();
    await this.#journal?.flushed();
  }

  /** The job (a copy); not_found for an id this queue does not know (or has forgotten). */
  get(id: string): Job {
    this.#forgetOld();
    return snapshot(this.#entry(id).job);
  }

  /** Whether the queue knows the job (queued, running, or finished and remembered). */
  has(id: string): boolean {
    return this.#entries.has(id);
  }

  /** Every remembered job, newest first. */
  list(): Job[] {
    this.#forgetOld();
    return [...this.#entries.values()].map((e) => snapshot(e.job)).reverse();
  }

  /**
   * Cancels a queued job at once, or asks a running one to stop (it is `cancelling` until its
   * work returns, then `cancelled`); a finished job is left as it is. Returns the job as it is
   * after the request.
   */
  cancel(id: string): Job {
    const entry = this.#entry(id);
    const { job } = entry;
    if (job.state === "queued") {
      this.#pending.splice(this.#pending.indexOf(id), 1);
      this.#finish(entry, "cancelled", {
        type: "cancelled",
        reason: "cancelled before it started",
      });
    } else if (job.state === "running") {
      job.state = "cancelling";
      entry.abort.abort(new DOMException("job cancelled", "AbortError"));
    }
    return snapshot(job);
  }

  /** Events with sequence > `after`, then live ones until the job ends or `signal` aborts. */
  async *watch(id: string, after = 0, signal?: AbortSignal): AsyncGenerator<JobEvent> {
    const entry = this.#entry(id);
    if (!Number.isSafeInteger(after) || after < 0) {
      throw invalidArgument(`after_sequence must be an integer >= 0: found ${after}`);
    }
    let next = after;
    entry.watching++;
    try {
      while (true) {
        // By sequence, not position: step events before `next` may have been dropped.
        const fresh = entry.events.slice(firstAfter(entry.events, next));
        for (const ev of fresh) {
          next = ev.sequence;
          yield ev;
        }
        if (fresh.length > 0) continue; // more may have come while the caller took these
        if (FINISHED.has(entry.job.state) || signal?.aborted || this.#suspended) return;
        await new Promise<void>((resolve) => {
          const wake = () => {
            entry.waiters.delete(wake);
            signal?.removeEventListener("abort", wake);
            resolve();
          };
          entry.waiters.add(wake);
          signal?.addEventListener("abort", wake, { once: true });
        });
      }
    } finally {
      entry.watching--;
      if (FINISHED.has(entry.job.state)) this.#compact(entry);
    }
  }

  /** Resolves when no job is running or queued (for shutdown and tests). */
  async drained(): Promise<void> {
    while (this.#running || (this.#pending.length && !this.#suspended)) await this.#idle;
  }

  /** Cancels everything (shutdown). */
  cancelAll(): void {
    for (const id of [...this.#pending]) this.cancel(id);
    if (this.#running) this.cancel(this.#running);
  }

  #entry(id: string): Entry {
    const entry = this.#entries.get(id);
    if (!entry) {
      const shown = id.length > 80 ? `${id.slice(0, 80)}...` : id;
      throw notFound(`job_id: no job ${JSON.stringify(shown)}`);
    }
    return entry;
  }

  #emit(entry: Entry, event: TrainingEvent): void {
    const ev: JobEvent = {
      sequence: entry.job.lastSequence + 1,
      jobId: entry.job.id,
      time: new Date(this.#now()),
      event,
    };
    entry.events.push(ev);
    if (entry.events.length > this.#maxEvents) {
      const at = entry.events.findIndex((e) => e.event.type === "step");
      if (at >= 0) entry.events.splice(at, 1);
    }
    entry.job.lastSequence = ev.sequence;
    applyEvent(entry.job, event);
    this.#journal?.event(ev);
    for (const w of [...entry.waiters]) w();
  }

  /**
   * Ends a job: its final state is set before its terminal event is recorded, so whoever sees
   * the event and then asks for the job sees it finished.
   */
  #finish(entry: Entry, state: JobState, event: TrainingEvent): void {
    entry.job.state = state;
    entry.job.finishedAt = new Date(this.#now());
    this.#emit(entry, event);
    this.#journal?.updated(entry.job);
    entry.work = null;
    this.#compact(entry);
    this.#forgetOld();
  }

  /**
   * A finished job keeps its summary: the job, its lifecycle, validation and checkpoint events.
   * Its steps go once no watcher is still reading them, so a live watcher loses none.
   */
  #compact(entry: Entry): void {
    if (entry.watching > 0) return;
    entry.events = entry.events.filter((e) => e.event.type !== "step");
  }

  #forgetOld(): void {
    const done = [...this.#entries.values()].filter((e) => FINISHED.has(e.job.state));
    const cutoff = this.#now() - this.#keepFinishedMs;
    done.forEach((e, i) => {
      const tooMany = i < done.length - this.#keepFinished;
      if (tooMany || e.job.finishedAt!.getTime() < cutoff) {
        this.#entries.delete(e.job.id);
        this.#journal?.forgotten(e.job.id);
      }
    });
  }

  #pump(): void {
    if (this.#suspended || this.#running || this.#pending.length === 0) return;
    const id = this.#pending.shift()!;
    const entry = this.#entries.get(id)!;
    this.#running = id;
    entry.job.state = "running";
    entry.job.startedAt ??= new Date(this.#now());
    this.#journal?.updated(entry.job);
    this.#idle = (async () => {
      // The work's completed event is its last word: once emitted, the job has succeeded (its
      // task versions are in the registry) whatever happens after. It is recorded when the work
      // has returned, with the job's final state.
      let completed: TrainingEvent | undefined;
      try {
        await entry.work!(
          (e) => {
            if (completed || isTerminal(e) && e.type !== "completed") return;
            if (e.type === "completed") completed = e;
            else this.#emit(entry, e);
          },
          entry.abort.signal,
          entry.job.id,
        );
        if (!completed) {
          entry.abort.signal.throwIfAborted();
          throw new Error("the job's work returned without a completed event");
        }
        this.#finish(entry, "succeeded", completed);
      } catch (e) {
        if (completed) {
          this.#finish(entry, "succeeded", completed);
        } else if (entry.abort.signal.reason instanceof JobSuspended) {
          // Left unfinished, as recorded: a restart resumes it.
          for (const w of [...entry.waiters]) w();
        } else if (entry.abort.signal.aborted) {
          this.#finish(entry, "cancelled", {
            type: "cancelled",
            reason: "cancelled while running",
          });
        } else {
          this.#finish(entry, "failed", { type: "failed", reason: this.#failureReason(e) });
        }
      } finally {
        this.#running = null;
        this.#pump();
      }
    })();
  }
}

/** Index of the first event with a sequence above `seq` (events are ascending by sequence). */
function firstAfter(events: readonly JobEvent[], seq: number): number {
  let lo = 0, hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (events[mid].sequence <= seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function snapshot(job: Job): Job {
  return {
    ...job,
    tasks: [...job.tasks],
    droppedExamples: { ...job.droppedExamples },
    written: job.written.map((w) => ({ ...w })),
  };
}
