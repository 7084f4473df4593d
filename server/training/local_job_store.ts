/**
 * The JobStore of one process: jobs, events and leases in memory, each change first handed to a
 * `Persistence` (and awaited) so that nothing is visible before it is kept. The memory store
 * keeps nothing (tests); the disk store (`disk_job_store.ts`) keeps everything in files.
 * Changes run one at a time, so the store's decisions (is the queue full, who gets a claim, was
 * this request id used) are atomic as PostgreSQL's transactions make them there.
 */
import type { JobEvent, TrainingEvent } from "./events.ts";
import {
  type Claim,
  copyJob,
  type FinalState,
  foldEvent,
  isFinished,
  type Job,
  type JobCounts,
  jobNotFound,
  JobNotices,
  type JobStore,
  LeaseLost,
  type NewJob,
  newJob,
  queueFull,
  requestIdReused,
} from "./job_store.ts";

/** One job as a local store holds it. */
export interface LocalRecord {
  job: Job;
  request: unknown;
  requestId?: string;
  requestDigest?: string;
  attempts: number;
  cancelRequested: boolean;
  /** Sub-millisecond creation time: orders jobs created in the same millisecond. */
  order: number;
}

/** Where a local store keeps what it holds; every method resolves once it is kept. */
export interface Persistence {
  /** The record as it is now (created, claimed, released, cancelling, finished). */
  saveRecord(rec: LocalRecord): Promise<void>;
  appendEvent(ev: JobEvent): Promise<void>;
  saveCheckpoint(id: string, files: Map<string, Uint8Array>): Promise<void>;
  loadCheckpoint(id: string): Promise<Map<string, Uint8Array>>;
  dropCheckpoint(id: string): Promise<void>;
  remove(id: string): Promise<void>;
}

interface Entry extends LocalRecord {
  events: JobEvent[];
  owner: string | null;
  leaseUntil: number;
}

/** Whether a runner may claim the job: queued, or held under a lease that ran out. */
function claimable(e: Entry, now: number): boolean {
  const { state } = e.job;
  return state === "queued" ||
    ((state === "running" || state === "cancelling") && e.leaseUntil < now);
}

export class LocalJobStore implements JobStore {
  readonly durable: boolean;
  readonly #persist: Persistence;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();
  readonly #byRequestId = new Map<string, string>();
  readonly #notices = new JobNotices();
  #chain: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(
    persist: Persistence,
    opts: {
      durable: boolean;
      now?: () => number;
      records?: (LocalRecord & { events: JobEvent[] })[];
    },
  ) {
    this.#persist = persist;
    this.durable = opts.durable;
    this.#now = opts.now ?? Date.now;
    // Records of an earlier process: nobody holds them now (one process owns a local store).
    for (const r of opts.records ?? []) {
      const entry: Entry = { ...r, owner: null, leaseUntil: 0 };
      this.#entries.set(r.job.id, entry);
      if (r.requestId) this.#byRequestId.set(r.requestId, r.job.id);
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  create(c: NewJob): Promise<{ job: Job; created: boolean }> {
    return this.#change(async () => {
      const known = c.requestId ? this.#byRequestId.get(c.requestId) : undefined;
      if (known) {
        const e = this.#entries.get(known)!;
        if (e.requestDigest !== c.requestDigest) throw requestIdReused(c.requestId!, known);
        return { job: copyJob(e.job), created: false };
      }
      const active = [...this.#entries.values()].filter((e) => !isFinished(e.job.state)).length;
      if (active >= c.maxActive) throw queueFull(active, c.maxActive);
      c.signal?.throwIfAborted();
      const id = crypto.randomUUID();
      const entry: Entry = {
        job: newJob(id, c.name, c.tasks, new Date(this.#now()), c.kind),
        request: c.request,
        requestId: c.requestId,
        requestDigest: c.requestDigest,
        attempts: 0,
        cancelRequested: false,
        order: performance.timeOrigin + performance.now(),
        events: [],
        owner: null,
        leaseUntil: 0,
      };
      await this.#persist.saveRecord(entry);
      this.#entries.set(id, entry);
      if (c.requestId) this.#byRequestId.set(c.requestId, id);
      await this.#append(entry, { type: "queued", position: active });
      this.#claimable();
      return { job: copyJob(entry.job), created: true };
    });
  }

  claim(owner: string, leaseMs: number): Promise<Claim | null> {
    return this.#change(async () => {
      const now = this.#now();
      const entry = [...this.#entries.values()]
        .filter((e) => claimable(e, now))
        .sort((a, b) => a.order - b.order)[0];
      if (!entry) return null;
      const next: Entry = {
        ...entry,
        job: {
          ...entry.job,
          state: entry.job.state === "queued" ? "running" : entry.job.state,
          startedAt: entry.job.startedAt ?? new Date(now),
        },
        attempts: entry.attempts + 1,
        owner,
        leaseUntil: now + leaseMs,
      };
      await this.#persist.saveRecord(next);
      this.#entries.set(entry.job.id, next);
      this.#changed(entry.job.id);
      return {
        job: copyJob(next.job),
        request: next.request,
        attempt: next.attempts,
        cancelRequested: next.cancelRequested,
      };
    });
  }

  renew(id: string, owner: string, leaseMs: number): Promise<{ cancelRequested: boolean }> {
    return this.#change(() => {
      const e = this.#owned(id, owner);
      // Leases are not kept: a restart voids them all (one process owns a local store).
      e.leaseUntil = this.#now() + leaseMs;
      return Promise.resolve({ cancelRequested: e.cancelRequested });
    });
  }

  release(id: string, owner: string): Promise<void> {
    return this.#change(async () => {
      const e = this.#entries.get(id);
      if (!e || e.owner !== owner) return;
      e.owner = null;
      e.leaseUntil = 0;
      this.#claimable();
      await Promise.resolve();
    });
  }

  append(id: string, owner: string, event: TrainingEvent): Promise<JobEvent> {
    return this.#change(() => this.#append(this.#owned(id, owner), event));
  }

  finish(id: string, owner: string, state: FinalState, event: TrainingEvent): Promise<Job> {
    return this.#change(() => this.#finish(this.#owned(id, owner), state, event));
  }

  requestCancel(id: string): Promise<Job> {
    return this.#change(async () => {
      const e = this.#entry(id);
      if (e.job.state === "queued") {
        return await this.#finish(e, "cancelled", {
          type: "cancelled",
          reason: "cancelled before it started",
        });
      }
      if (e.job.state === "running") {
        const next: Entry = { ...e, job: { ...e.job, state: "cancelling" }, cancelRequested: true };
        await this.#persist.saveRecord(next);
        this.#entries.set(id, next);
        this.#changed(id);
        return copyJob(next.job);
      }
      return copyJob(e.job);
    });
  }

  get(id: string): Promise<Job> {
    return Promise.resolve().then(() => copyJob(this.#entry(id).job));
  }

  counts(): Promise<JobCounts> {
    const now = this.#now();
    const counts = { waiting: 0, running: 0 };
    for (const e of this.#entries.values()) {
      if (claimable(e, now)) counts.waiting++;
      else if (e.job.state === "running" || e.job.state === "cancelling") counts.running++;
    }
    return Promise.resolve(counts);
  }

  list(limit: number): Promise<Job[]> {
    const newest = [...this.#entries.values()].sort((a, b) => b.order - a.order);
    return Promise.resolve(newest.slice(0, limit).map((e) => copyJob(e.job)));
  }

  events(id: string, after: number, limit: number): Promise<JobEvent[]> {
    return Promise.resolve().then(() => {
      const events = this.#entry(id).events;
      const from = firstAfter(events, after);
      return events.slice(from, from + limit).map((ev) => ({ ...ev }));
    });
  }

  saveCheckpoint(id: string, owner: string, files: Map<string, Uint8Array>): Promise<void> {
    return this.#change(async () => {
      this.#owned(id, owner);
      await this.#persist.saveCheckpoint(id, files);
    });
  }

  async loadCheckpoint(id: string): Promise<Map<string, Uint8Array>> {
    this.#entry(id);
    return await this.#persist.loadCheckpoint(id);
  }

  forget(keep: number, before: Date): Promise<string[]> {
    return this.#change(async () => {
      const done = [...this.#entries.values()]
        .filter((e) => isFinished(e.job.state))
        .sort((a, b) => b.job.finishedAt!.getTime() - a.job.finishedAt!.getTime());
      const gone = done.filter((e, i) => i >= keep || e.job.finishedAt! < before);
      for (const e of gone) {
        await this.#persist.remove(e.job.id);
        this.#entries.delete(e.job.id);
        if (e.requestId) this.#byRequestId.delete(e.requestId);
      }
      return gone.map((e) => e.job.id);
    });
  }

  onChange(fn: (id: string | null) => void): () => void {
    return this.#notices.onChange(fn);
  }

  onClaimable(fn: () => void): () => void {
    return this.#notices.onClaimable(fn);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#chain.catch(() => {});
    this.#notices.changed(null); // watchers look once more, see the store closed, and end
  }

  /** Runs `fn` after every change before it: one change at a time. */
  #change<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn);
    this.#chain = run.catch(() => {});
    return run;
  }

  #entry(id: string): Entry {
    const e = this.#entries.get(id);
    if (!e) throw jobNotFound(id);
    return e;
  }

  /** The job, if `owner` holds it (a lease that expired but nobody took still counts). */
  #owned(id: string, owner: string): Entry {
    const e = this.#entry(id);
    if (e.owner !== owner || isFinished(e.job.state)) throw new LeaseLost(id);
    return e;
  }

  async #append(e: Entry, event: TrainingEvent): Promise<JobEvent> {
    const ev: JobEvent = {
      sequence: e.job.lastSequence + 1,
      jobId: e.job.id,
      time: new Date(this.#now()),
      event,
    };
    await this.#persist.appendEvent(ev);
    e.events.push(ev);
    e.job.lastSequence = ev.sequence;
    foldEvent(e.job, event);
    this.#changed(e.job.id);
    return { ...ev };
  }

  async #finish(e: Entry, state: FinalState, event: TrainingEvent): Promise<Job> {
    const job: Job = { ...e.job, state, finishedAt: new Date(this.#now()) };
    foldEvent(job, event);
    const ev: JobEvent = {
      sequence: job.lastSequence + 1,
      jobId: job.id,
      time: job.finishedAt!,
      event,
    };
    job.lastSequence = ev.sequence;
    const next: Entry = { ...e, job, owner: null, leaseUntil: 0, events: [...e.events, ev] };
    // The event first: a record that says finished always has its terminal event kept.
    await this.#persist.appendEvent(ev);
    // Kept, the terminal event finishes the job, even if the record cannot say so now (a full
    // disk): a store reopening folds it into the record.
    this.#entries.set(job.id, next);
    this.#changed(job.id);
    await this.#persist.saveRecord(next);
    await this.#persist.dropCheckpoint(job.id);
    return copyJob(job);
  }

  #changed(id: string): void {
    this.#notices.changed(id);
  }

  #claimable(): void {
    this.#notices.claimable();
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

/** The memory store: a LocalJobStore that keeps nothing beyond its process (tests). */
export class MemoryJobStore extends LocalJobStore {
  constructor(opts: { now?: () => number } = {}) {
    const checkpoints = new Map<string, Map<string, Uint8Array>>();
    super({
      saveRecord: () => Promise.resolve(),
      appendEvent: () => Promise.resolve(),
      saveCheckpoint: (id, files) => {
        checkpoints.set(id, new Map([...files].map(([p, b]) => [p, b.slice()])));
        return Promise.resolve();
      },
      loadCheckpoint: (id) => Promise.resolve(new Map(checkpoints.get(id) ?? [])),
      dropCheckpoint: (id) => Promise.resolve(void checkpoints.delete(id)),
      remove: (id) => Promise.resolve(void checkpoints.delete(id)),
    }, { durable: false, now: opts.now });
  }
}
