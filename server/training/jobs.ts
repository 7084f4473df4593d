/**
 * Training jobs: a FIFO queue (one job trains at a time, since every job shares the one resident
 * model), each job with an append-only event log numbered from 1. Any number of watchers read a
 * job's log from any point and then follow it live, so a watcher that reconnects with the last
 * number it saw gets exactly the rest: none lost, none repeated.
 */

export type JobState = "queued" | "running" | "completed" | "failed" | "cancelled";

export interface JobEvent<P = unknown> {
  /** 1, 2, 3... within the job. */
  sequence: number;
  jobId: string;
  time: string;
  payload: P;
}

export interface JobInfo {
  id: string;
  name: string;
  state: JobState;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  error?: string;
  lastSequence: number;
}

/** What a job does: emits payloads, returns when done, throws to fail, honours the signal. */
export type JobWork<P> = (emit: (payload: P) => void, signal: AbortSignal) => Promise<void>;

interface Job<P> {
  info: JobInfo;
  events: JobEvent<P>[];
  work: JobWork<P>;
  abort: AbortController;
  waiters: Set<() => void>;
}

export interface JobQueueOptions<P> {
  /** Queued + running jobs beyond which submit() refuses. Default 16. */
  maxQueued?: number;
  /** Finished jobs remembered (oldest forgotten first). Default 100. */
  keepFinished?: number;
  /** Payloads that mark the lifecycle, so watchers see queued/started/failed/cancelled. */
  lifecycle: {
    queued(position: number): P;
    started(): P;
    failed(reason: string): P;
    cancelled(): P;
  };
}

export class JobQueueFullError extends Error {
  override name = "JobQueueFullError";
}

export class JobQueue<P> {
  readonly #jobs = new Map<string, Job<P>>();
  readonly #pending: string[] = [];
  readonly #opts: Required<JobQueueOptions<P>>;
  #running: string | null = null;
  #idle: Promise<void> = Promise.resolve();

  constructor(opts: JobQueueOptions<P>) {
    this.#opts = {
      maxQueued: opts.maxQueued ?? 16,
      keepFinished: opts.keepFinished ?? 100,
      lifecycle: opts.lifecycle,
    };
  }

  submit(name: string, work: JobWork<P>): JobInfo {
    const active = this.#pending.length + (this.#running ? 1 : 0);
    if (active >= this.#opts.maxQueued) {
      throw new JobQueueFullError(
        `training queue is full: ${active} jobs queued or running (limit ${this.#opts.maxQueued})`,
      );
    }
    const id = crypto.randomUUID();
    const job: Job<P> = {
      info: { id, name, state: "queued", createdAt: new Date().toISOString(), lastSequence: 0 },
      events: [],
      work,
      abort: new AbortController(),
      waiters: new Set(),
    };
    this.#jobs.set(id, job);
    this.#pending.push(id);
    this.#emit(job, this.#opts.lifecycle.queued(this.#pending.length));
    this.#pump();
    return { ...job.info };
  }

  get(id: string): JobInfo | undefined {
    const j = this.#jobs.get(id);
    return j && { ...j.info };
  }

  list(): JobInfo[] {
    return [...this.#jobs.values()].map((j) => ({ ...j.info }));
  }

  /** Cancels a queued or running job; false when it had already finished. */
  cancel(id: string): boolean {
    const job = this.#jobs.get(id);
    if (!job) return false;
    if (job.info.state === "queued") {
      this.#pending.splice(this.#pending.indexOf(id), 1);
      this.#finish(job, "cancelled");
      this.#emit(job, this.#opts.lifecycle.cancelled());
      return true;
    }
    if (job.info.state === "running") {
      job.abort.abort(new DOMException("job cancelled", "AbortError"));
      return true;
    }
    return false;
  }

  /** Events after `after`, then live ones until the job ends or `signal` aborts. */
  async *watch(id: string, after = 0, signal?: AbortSignal): AsyncGenerator<JobEvent<P>> {
    const job = this.#jobs.get(id);
    if (!job) throw new RangeError(`job "${id}" does not exist`);
    let next = after;
    while (true) {
      while (next < job.events.length) yield job.events[next++];
      if (this.#finished(job) || signal?.aborted) return;
      await new Promise<void>((resolve) => {
        const wake = () => {
          job.waiters.delete(wake);
          signal?.removeEventListener("abort", wake);
          resolve();
        };
        job.waiters.add(wake);
        signal?.addEventListener("abort", wake, { once: true });
      });
    }
  }

  /** Resolves when no job is running or queued (for shutdown and tests). */
  async drained(): Promise<void> {
    while (this.#running || this.#pending.length) await this.#idle;
  }

  /** Cancels everything (shutdown). */
  cancelAll(): void {
    for (const id of [...this.#pending]) this.cancel(id);
    if (this.#running) this.cancel(this.#running);
  }

  #finished(job: Job<P>): boolean {
    return ["completed", "failed", "cancelled"].includes(job.info.state);
  }

  #emit(job: Job<P>, payload: P): void {
    const ev: JobEvent<P> = {
      sequence: job.events.length + 1,
      jobId: job.info.id,
      time: new Date().toISOString(),
      payload,
    };
    job.events.push(ev);
    job.info.lastSequence = ev.sequence;
    for (const w of [...job.waiters]) w();
  }

  #finish(job: Job<P>, state: JobState, error?: string): void {
    job.info.state = state;
    job.info.finishedAt = new Date().toISOString();
    if (error) job.info.error = error;
    for (const w of [...job.waiters]) w();
    this.#forgetOld();
  }

  #forgetOld(): void {
    const done = [...this.#jobs.values()].filter((j) => this.#finished(j));
    for (const j of done.slice(0, Math.max(0, done.length - this.#opts.keepFinished))) {
      this.#jobs.delete(j.info.id);
    }
  }

  #pump(): void {
    if (this.#running || this.#pending.length === 0) return;
    const id = this.#pending.shift()!;
    const job = this.#jobs.get(id)!;
    this.#running = id;
    job.info.state = "running";
    job.info.startedAt = new Date().toISOString();
    this.#emit(job, this.#opts.lifecycle.started());
    this.#idle = (async () => {
      try {
        await job.work((p) => this.#emit(job, p), job.abort.signal);
        this.#finish(job, "completed");
      } catch (e) {
        if (job.abort.signal.aborted) {
          this.#emit(job, this.#opts.lifecycle.cancelled());
          this.#finish(job, "cancelled");
        } else {
          const reason = e instanceof Error ? e.message : String(e);
          this.#emit(job, this.#opts.lifecycle.failed(reason));
          this.#finish(job, "failed", reason);
        }
      } finally {
        this.#running = null;
        this.#pump();
      }
    })();
  }
}
