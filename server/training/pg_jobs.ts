/**
 * The shared job queue: jobs, their events and their checkpoints in PostgreSQL, so that any
 * replica answers for any job and a job outlives the replica that ran it.
 *
 * - Claim: a replica with no job running takes the oldest queued job, or a running one whose
 *   lease has expired, with `FOR UPDATE SKIP LOCKED`: of replicas racing, exactly one gets it.
 * - Lease: the owner extends `lease_until` every lease/3. Every write of the owner is fenced by
 *   `owner = me`, so a replica that lost its lease (paused, partitioned) can write nothing more,
 *   and stops its work at once.
 * - Events: numbered per job in the transaction that writes them (`last_sequence + 1`), each
 *   announced by NOTIFY job_events; a watcher on any replica reads by sequence and sleeps until
 *   the next announcement, so it sees every event once, in order, whichever replica wrote it.
 * - Checkpoints: on each checkpoint event the job's checkpoint directory is copied into
 *   job_checkpoints (before the event is recorded); a replica taking the job over restores it
 *   and the run resumes from that step.
 * - Shutdown releases the running job (its lease ends now) for another replica to resume,
 *   instead of cancelling it: a rollout does not lose training.
 */
import { join, relative } from "node:path";
import { invalidArgument, notFound, resourceExhausted, ServiceError } from "../errors.ts";
import type { Database } from "../util/db.ts";
import { isTerminal, type JobEvent, type TrainingEvent } from "./events.ts";
import { applyEvent, type Job, type JobState } from "./jobs.ts";

/** Runs a job's request; the same contract as `JobWork` (emit, honour the signal, throw to fail). */
export type JobRunner = (
  request: unknown,
  emit: (e: TrainingEvent) => void,
  signal: AbortSignal,
  jobId: string,
) => Promise<void>;

export interface PgJobQueueOptions {
  run: JobRunner;
  /** Where a job keeps its checkpoint on this replica's disk (copied to and from the database). */
  checkpointDir: (jobId: string) => string;
  /** How long a claim lasts without a heartbeat. Default 15 s. */
  leaseMs?: number;
  /** Queued + running jobs (all replicas) beyond which submit() refuses. Default 16. */
  maxQueued?: number;
  /** Finished jobs remembered. Default 100. */
  keepFinished?: number;
  /** How long a finished job is remembered, in ms. Default 24 h. */
  keepFinishedMs?: number;
  failureReason?: (err: unknown) => string;
  /** This replica's name in `jobs.owner`. Default: host/pid/random. */
  replicaId?: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

const FINISHED: ReadonlySet<string> = new Set(["succeeded", "failed", "cancelled"]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const EVENTS = "job_events";
const CANCEL = "job_cancel";
const QUEUED = "jobs_queued";

interface JobRow {
  id: string;
  name: string;
  state: JobState;
  progress: Progress;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  last_sequence: number;
}

/** The part of a Job folded from its events. */
type Progress = Pick<
  Job,
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

const JOB_COLUMNS = "id, name, state, progress, created_at, started_at, finished_at, last_sequence";

function toJob(r: JobRow): Job {
  return {
    id: r.id,
    name: r.name,
    state: r.state,
    ...r.progress,
    createdAt: r.created_at,
    ...(r.started_at ? { startedAt: r.started_at } : {}),
    ...(r.finished_at ? { finishedAt: r.finished_at } : {}),
    lastSequence: r.last_sequence,
  };
}

function progressOf(job: Job): Progress {
  return {
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Why a running job stopped without finishing here. */
class LeaseLost extends Error {}

interface Running {
  id: string;
  abort: AbortController;
  /** Set when the stop is a release (shutdown) or a lost lease rather than a cancel. */
  handedOver: boolean;
}

export class PgJobQueue {
  readonly #db: Database;
  readonly #o: Required<Omit<PgJobQueueOptions, "log">> & Pick<PgJobQueueOptions, "log">;
  readonly #waiters = new Map<string, Set<() => void>>();
  #running: Running | null = null;
  #runDone: Promise<void> = Promise.resolve();
  #claiming = false;
  #started = false;
  #closed = false;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(db: Database, opts: PgJobQueueOptions) {
    this.#db = db;
    this.#o = {
      run: opts.run,
      checkpointDir: opts.checkpointDir,
      leaseMs: opts.leaseMs ?? 15_000,
      maxQueued: opts.maxQueued ?? 16,
      keepFinished: opts.keepFinished ?? 100,
      keepFinishedMs: opts.keepFinishedMs ?? 24 * 3600_000,
      failureReason: opts.failureReason ?? ((e) => (e instanceof Error ? e.message : String(e))),
      replicaId: opts.replicaId ??
        `${Deno.hostname()}/${Deno.pid}/${crypto.randomUUID().slice(0, 8)}`,
      log: opts.log,
    };
  }

  get replicaId(): string {
    return this.#o.replicaId;
  }

  /**
   * Subscribes to the queue's notifications and starts taking jobs; called once the caller has
   * cleaned up what a previous process left on disk. Watching and submitting work before it.
   */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    await this.#db.listen(EVENTS, (id) => this.#wake(id));
    await this.#db.listen(CANCEL, (id) => {
      const r = this.#running;
      if (r?.id === id) r.abort.abort(new DOMException("job cancelled", "AbortError"));
    });
    await this.#db.listen(QUEUED, () => this.#pump());
    // Notifications sent while the connection was down are lost: look again now.
    this.#db.onConnect(() => {
      for (const id of this.#waiters.keys()) this.#wake(id);
      this.#pump();
    });
    // Expired leases of dead replicas announce nothing: look for them a few times per lease.
    this.#timer = setInterval(() => {
      this.#pump();
      this.#forgetOld().catch(() => {});
    }, Math.max(200, Math.floor(this.#o.leaseMs / 3)));
    this.#pump();
  }

  async submit(name: string, tasks: string[], request: unknown): Promise<Job> {
    const id = crypto.randomUUID();
    const progress: Progress = {
      tasks: [...tasks],
      step: 0,
      totalSteps: 0,
      epoch: 0,
      totalEpochs: 0,
      droppedExamples: {},
      skippedRecords: 0,
      written: [],
    };
    const row = await this.#db.tx(async (c) => {
      // Submitters on every replica count the same queue: they take turns.
      await c.query("SELECT pg_advisory_xact_lock(7271002)");
      const { rows } = await c.query<{ active: string; running: string }>(
        `SELECT count(*) AS active, count(*) FILTER (WHERE state <> 'queued') AS running
           FROM jobs WHERE state IN ('queued', 'running', 'cancelling')`,
      );
      const active = Number(rows[0].active);
      if (active >= this.#o.maxQueued) {
        throw resourceExhausted(
          `the training queue is full: ${active} jobs queued or running (max_queued_jobs ${this.#o.maxQueued})`,
          "max_queued_jobs",
        );
      }
      const inserted = await c.query<JobRow>(
        `INSERT INTO jobs (id, name, state, request, progress, created_at, last_sequence)
         VALUES ($1, $2, 'queued', $3, $4, clock_timestamp(), 1) RETURNING ${JOB_COLUMNS}`,
        [id, name, JSON.stringify(request), JSON.stringify(progress)],
      );
      const event: TrainingEvent = { type: "queued", position: active };
      await c.query(
        "INSERT INTO job_events (job_id, sequence, time, event) VALUES ($1, 1, clock_timestamp(), $2)",
        [id, JSON.stringify(event)],
      );
      await c.query("SELECT pg_notify($1, $2), pg_notify($3, '')", [EVENTS, id, QUEUED]);
      return inserted.rows[0];
    });
    return toJob(row);
  }

  async get(id: string): Promise<Job> {
    return toJob(await this.#row(id));
  }

  async has(id: string): Promise<boolean> {
    if (!UUID.test(id)) return false;
    const { rows } = await this.#db.query("SELECT 1 FROM jobs WHERE id = $1", [id]);
    return rows.length > 0;
  }

  /** Remembered jobs, newest first. */
  async list(): Promise<Job[]> {
    const { rows } = await this.#db.query<JobRow>(
      `SELECT ${JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id LIMIT $1`,
      [this.#o.keepFinished + this.#o.maxQueued],
    );
    return rows.map(toJob);
  }

  async #row(id: string): Promise<JobRow> {
    const shown = id.length > 80 ? `${id.slice(0, 80)}...` : id;
    if (!UUID.test(id)) throw notFound(`job_id: no job ${JSON.stringify(shown)}`);
    const { rows } = await this.#db.query<JobRow>(
      `SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1`,
      [id],
    );
    if (rows.length === 0) throw notFound(`job_id: no job ${JSON.stringify(shown)}`);
    return rows[0];
  }

  /**
   * Cancels a queued job at once; asks a running one to stop (the replica running it hears it at
   * once by NOTIFY, or at its next heartbeat); a finished job is left as it is.
   */
  async cancel(id: string): Promise<Job> {
    await this.#row(id);
    const row = await this.#db.tx(async (c) => {
      const { rows } = await c.query<JobRow>(
        `SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE`,
        [id],
      );
      const r = rows[0];
      if (r.state === "queued") {
        const job = toJob(r);
        const event: TrainingEvent = { type: "cancelled", reason: "cancelled before it started" };
        return await this.#finishRow(c, job, "cancelled", event, null);
      }
      if (r.state === "running") {
        const { rows: updated } = await c.query<JobRow>(
          `UPDATE jobs SET state = 'cancelling', cancel_requested = true WHERE id = $1
           RETURNING ${JOB_COLUMNS}`,
          [id],
        );
        await c.query("SELECT pg_notify($1, $2)", [CANCEL, id]);
        return updated[0];
      }
      return r;
    });
    return toJob(row);
  }

  /** Events with sequence > `after`, then live ones (from any replica) until the job ends. */
  async *watch(id: string, after = 0, signal?: AbortSignal): AsyncGenerator<JobEvent> {
    await this.#row(id);
    if (!Number.isSafeInteger(after) || after < 0) {
      throw invalidArgument(`after_sequence must be an integer >= 0: found ${after}`);
    }
    let next = after;
    let finishedSeen = false;
    while (!signal?.aborted) {
      // Subscribed before reading, so an event announced during the read still wakes us.
      const wake = this.#waitFor(id, signal);
      const { rows } = await this.#db.query<{ sequence: number; time: Date; event: TrainingEvent }>(
        `SELECT sequence, time, event FROM job_events WHERE job_id = $1 AND sequence > $2
          ORDER BY sequence LIMIT 500`,
        [id, next],
      ).catch((e) => {
        wake.cancel();
        throw e;
      });
      if (rows.length > 0) {
        wake.cancel();
        for (const r of rows) {
          next = r.sequence;
          yield { sequence: r.sequence, jobId: id, time: r.time, event: r.event };
        }
        continue;
      }
      // The terminal event commits with the final state: once the state is final and a read
      // after that found nothing new, nothing more will come.
      if (finishedSeen) {
        wake.cancel();
        return;
      }
      const { rows: st } = await this.#db.query<{ state: string }>(
        "SELECT state FROM jobs WHERE id = $1",
        [id],
      ).catch((e) => {
        wake.cancel();
        throw e;
      });
      if (st.length === 0 || FINISHED.has(st[0].state)) {
        wake.cancel();
        finishedSeen = true;
        continue;
      }
      await wake.promise;
    }
  }

  /**
   * Resolves at the next event announcement for `id`, an abort, or after a while anyway (a
   * notification lost while the connection was being re-made costs at most that while).
   */
  #waitFor(id: string, signal?: AbortSignal): { promise: Promise<void>; cancel(): void } {
    let done!: () => void;
    const promise = new Promise<void>((resolve) => {
      let set = this.#waiters.get(id);
      if (!set) this.#waiters.set(id, set = new Set());
      const timer = setTimeout(() => done(), 2000);
      done = () => {
        clearTimeout(timer);
        set!.delete(done);
        if (set!.size === 0) this.#waiters.delete(id);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      set.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
    return { promise, cancel: () => done() };
  }

  #wake(id: string): void {
    for (const w of [...(this.#waiters.get(id) ?? [])]) w();
  }

  /** Stops taking jobs and hands the running one back (its checkpoint stays for the next owner). */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    const r = this.#running;
    if (r) {
      r.handedOver = true;
      r.abort.abort(new DOMException("replica shutting down", "AbortError"));
    }
    await this.#runDone;
  }

  /** Resolves when this replica runs nothing (tests). */
  async drained(): Promise<void> {
    while (this.#running) await this.#runDone;
  }

  #pump(): void {
    if (!this.#timer || this.#closed || this.#running || this.#claiming) return;
    this.#claiming = true;
    this.#claim().then((claimed) => {
      this.#claiming = false;
      if (claimed) this.#pump();
    }, (e) => {
      this.#claiming = false;
      // The database being away is the usual reason; the timer tries again.
      this.#o.log?.("job claim failed", { error: (e as Error).message });
    });
  }

  /** Takes one job if there is one for the taking; returns whether it did. */
  async #claim(): Promise<boolean> {
    const { rows } = await this.#db.query<
      JobRow & { request: unknown; cancel_requested: boolean; attempts: number }
    >(
      `UPDATE jobs SET
         state = CASE WHEN state = 'queued' THEN 'running' ELSE state END,
         owner = $1,
         lease_until = clock_timestamp() + $2 * interval '1 millisecond',
         started_at = coalesce(started_at, clock_timestamp()),
         attempts = attempts + 1
       WHERE id = (
         SELECT id FROM jobs
          WHERE state = 'queued'
             OR (state IN ('running', 'cancelling') AND lease_until < clock_timestamp())
          ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
       RETURNING ${JOB_COLUMNS}, request, cancel_requested, attempts`,
      [this.#o.replicaId, this.#o.leaseMs],
    );
    if (rows.length === 0) return false;
    const r = rows[0];
    if (this.#closed) {
      await this.#release(r.id);
      return false;
    }
    const running: Running = { id: r.id, abort: new AbortController(), handedOver: false };
    this.#running = running;
    if (r.attempts > 1) {
      this.#o.log?.("job taken over", { job: r.id, attempt: r.attempts, step: r.progress.step });
    } else {
      this.#o.log?.("job claimed", { job: r.id, replica: this.#o.replicaId });
    }
    this.#runDone = this.#execute(toJob(r), r.request, r.cancel_requested, running).finally(
      () => {
        this.#running = null;
        this.#pump();
      },
    );
    return true;
  }

  async #execute(
    job: Job,
    request: unknown,
    cancelRequested: boolean,
    running: Running,
  ): Promise<void> {
    const { id } = job;
    const dir = this.#o.checkpointDir(id);
    let writes: Promise<void> = Promise.resolve();
    let lost = false;
    let lastGood = Date.now();
    const fail = (e: unknown) => {
      if (!lost) {
        lost = true;
        running.handedOver = true;
        this.#o.log?.("job lease lost; stopping it here", { job: id, error: String(e) });
        running.abort.abort(new LeaseLost(String(e)));
      }
    };
    /** Runs `write` after the ones before, retrying while the database is away (within the lease). */
    const queue = (write: () => Promise<void>) => {
      writes = writes.then(async () => {
        while (!lost) {
          try {
            await write();
            lastGood = Date.now();
            return;
          } catch (e) {
            if (e instanceof LeaseLost) return fail(e.message);
            if (!(e instanceof ServiceError && e.kind === "unavailable")) return fail(e);
            if (Date.now() - lastGood > this.#o.leaseMs) return fail(e);
            await sleep(250);
          }
        }
      });
    };
    const heartbeat = setInterval(() => {
      this.#db.query<{ cancel_requested: boolean }>(
        `UPDATE jobs SET lease_until = clock_timestamp() + $3 * interval '1 millisecond'
          WHERE id = $1 AND owner = $2 RETURNING cancel_requested`,
        [id, this.#o.replicaId, this.#o.leaseMs],
      ).then(({ rows }) => {
        lastGood = Date.now();
        if (rows.length === 0) fail("another replica holds the job");
        else if (rows[0].cancel_requested) {
          running.abort.abort(new DOMException("job cancelled", "AbortError"));
        }
      }, (e) => {
        if (Date.now() - lastGood > this.#o.leaseMs) fail(e);
      });
    }, Math.max(100, Math.floor(this.#o.leaseMs / 3)));

    const record = (e: TrainingEvent) =>
      queue(async () => {
        await this.#db.tx(async (c) => {
          applyEvent(job, e);
          const { rows } = await c.query<{ last_sequence: number }>(
            `UPDATE jobs SET last_sequence = last_sequence + 1, progress = $3
              WHERE id = $1 AND owner = $2 RETURNING last_sequence`,
            [id, this.#o.replicaId, JSON.stringify(progressOf(job))],
          );
          if (rows.length === 0) throw new LeaseLost("another replica holds the job");
          await c.query(
            "INSERT INTO job_events (job_id, sequence, time, event) VALUES ($1, $2, clock_timestamp(), $3)",
            [id, rows[0].last_sequence, JSON.stringify(e)],
          );
          await c.query("SELECT pg_notify($1, $2)", [EVENTS, id]);
        });
      });

    let outcome: { state: JobState; event: TrainingEvent } | null = null;
    try {
      if (cancelRequested) {
        outcome = {
          state: "cancelled",
          event: { type: "cancelled", reason: "cancelled while running" },
        };
        return;
      }
      await this.#restoreCheckpoint(id, dir);
      let completed: TrainingEvent | undefined;
      try {
        await this.#o.run(
          request,
          (e) => {
            if (lost || completed || isTerminal(e) && e.type !== "completed") return;
            if (e.type === "completed") {
              completed = e;
              return;
            }
            // Read now, while the trainer waits for this call: the next checkpoint replaces it.
            if (e.type === "checkpoint") {
              const files = snapshotDir(dir);
              queue(() => this.#saveCheckpoint(id, files));
            }
            record(e);
          },
          running.abort.signal,
          id,
        );
        if (!completed) {
          running.abort.signal.throwIfAborted();
          throw new Error("the job's work returned without a completed event");
        }
        outcome = { state: "succeeded", event: completed };
      } catch (e) {
        if (completed) outcome = { state: "succeeded", event: completed };
        else if (running.handedOver) outcome = null;
        else if (running.abort.signal.aborted) {
          outcome = {
            state: "cancelled",
            event: { type: "cancelled", reason: "cancelled while running" },
          };
        } else {
          outcome = {
            state: "failed",
            event: { type: "failed", reason: this.#o.failureReason(e) },
          };
        }
      }
    } finally {
      clearInterval(heartbeat);
      const end = outcome;
      if (end) {
        queue(async () => {
          await this.#db.tx(async (c) => {
            const { rows } = await c.query<JobRow>(
              `SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1 AND owner = $2 FOR UPDATE`,
              [id, this.#o.replicaId],
            );
            if (rows.length === 0) throw new LeaseLost("another replica holds the job");
            const current = { ...toJob(rows[0]), ...progressOf(job) };
            await this.#finishRow(c, current, end.state, end.event, this.#o.replicaId);
            await c.query("DELETE FROM job_checkpoints WHERE job_id = $1", [id]);
          });
        });
      } else if (running.handedOver && !lost) {
        queue(() => this.#release(id));
      }
      await writes;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  /** Records the terminal event and final state in one transaction (fenced by `owner` if given). */
  async #finishRow(
    c: Pick<Database, "query">,
    job: Job,
    state: JobState,
    event: TrainingEvent,
    owner: string | null,
  ): Promise<JobRow> {
    applyEvent(job, event);
    const { rows } = await c.query<JobRow>(
      `UPDATE jobs SET state = $2, finished_at = clock_timestamp(), progress = $3,
              last_sequence = last_sequence + 1, owner = NULL, lease_until = NULL
        WHERE id = $1 AND ($4::text IS NULL OR owner = $4)
        RETURNING ${JOB_COLUMNS}`,
      [job.id, state, JSON.stringify(progressOf(job)), owner],
    );
    if (rows.length === 0) throw new LeaseLost("another replica holds the job");
    await c.query(
      "INSERT INTO job_events (job_id, sequence, time, event) VALUES ($1, $2, clock_timestamp(), $3)",
      [job.id, rows[0].last_sequence, JSON.stringify(event)],
    );
    await c.query("SELECT pg_notify($1, $2)", [EVENTS, job.id]);
    return rows[0];
  }

  /** Ends this replica's lease now, so another replica takes the job at once. */
  async #release(id: string): Promise<void> {
    await this.#db.query(
      `UPDATE jobs SET owner = NULL, lease_until = clock_timestamp() - interval '1 millisecond'
        WHERE id = $1 AND owner = $2`,
      [id, this.#o.replicaId],
    );
    await this.#db.query("SELECT pg_notify($1, '')", [QUEUED]);
  }

  async #saveCheckpoint(id: string, files: Map<string, Uint8Array>): Promise<void> {
    await this.#db.tx(async (c) => {
      const { rows } = await c.query("SELECT 1 FROM jobs WHERE id = $1 AND owner = $2", [
        id,
        this.#o.replicaId,
      ]);
      if (rows.length === 0) throw new LeaseLost("another replica holds the job");
      await c.query("DELETE FROM job_checkpoints WHERE job_id = $1", [id]);
      for (const [path, data] of files) {
        await c.query("INSERT INTO job_checkpoints (job_id, path, data) VALUES ($1, $2, $3)", [
          id,
          path,
          data,
        ]);
      }
    });
  }

  /** Writes the job's stored checkpoint (if any) into `dir`, replacing whatever is there. */
  async #restoreCheckpoint(id: string, dir: string): Promise<void> {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    const { rows } = await this.#db.query<{ path: string; data: Uint8Array }>(
      "SELECT path, data FROM job_checkpoints WHERE job_id = $1",
      [id],
    );
    for (const r of rows) {
      // Paths were written by snapshotDir: relative, without "..".
      if (r.path.split("/").some((p) => p === ".." || p === "")) continue;
      const file = join(dir, r.path);
      await Deno.mkdir(join(file, ".."), { recursive: true });
      await Deno.writeFile(file, new Uint8Array(r.data));
    }
    if (rows.length) this.#o.log?.("job checkpoint restored", { job: id, files: rows.length });
  }

  /** Forgets finished jobs beyond `keepFinished` or older than `keepFinishedMs`. */
  async #forgetOld(): Promise<void> {
    await this.#db.query(
      `DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND (
         finished_at < clock_timestamp() - $1 * interval '1 millisecond'
         OR id NOT IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
                        ORDER BY finished_at DESC LIMIT $2))`,
      [this.#o.keepFinishedMs, this.#o.keepFinished],
    );
  }
}

/** Every file under `dir` (names starting with "." are scratch of a write in progress). */
function snapshotDir(dir: string): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const walk = (d: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(d)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const p = join(d, e.name);
      if (e.isDirectory) walk(p);
      else if (e.isFile) out.set(relative(dir, p), Deno.readFileSync(p));
    }
  };
  walk(dir);
  return out;
}
