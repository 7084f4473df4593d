/**
 * The replicas' JobStore: jobs, their events and checkpoints in PostgreSQL, so that any replica
 * answers for any job and a job outlives the replica that ran it.
 *
 * - Claim: `FOR UPDATE SKIP LOCKED` over the oldest queued job or one whose lease has expired:
 *   of replicas racing, exactly one gets it. Leases run on the database's clock.
 * - Fencing: every write of an owner is conditioned on `owner = it`, in the transaction that
 *   makes it, so a replica that lost its lease (paused, partitioned) writes nothing more.
 * - Events: numbered in the transaction that writes them (`last_sequence + 1`) and announced by
 *   NOTIFY job_events after commit; the request id is unique in the table, so a retry on any
 *   replica finds the first job.
 * - Checkpoints: the files of the latest, in job_checkpoints, replaced in one transaction.
 */
import type { Database } from "../util/db.ts";
import type { JobEvent, TrainingEvent } from "./events.ts";
import {
  type Claim,
  type FinalState,
  foldEvent,
  isJobId,
  type Job,
  type JobCounts,
  jobNotFound,
  JobNotices,
  type JobState,
  type JobStore,
  LeaseLost,
  type NewJob,
  newJob,
  type Progress,
  progressOf,
  queueFull,
  requestIdReused,
} from "./job_store.ts";

const EVENTS = "job_events";
const QUEUED = "jobs_queued";
/** Serialises submitters of every replica: the queue-full count and the insert are one step. */
const SUBMIT_LOCK = 7271002;

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

/** A job a runner may claim: queued, or held under a lease that ran out (its runner is gone). */
const CLAIMABLE =
  "(state = 'queued' OR (state IN ('running', 'cancelling') AND lease_until < clock_timestamp()))";
const JOB_COLUMNS = "id, name, state, progress, created_at, started_at, finished_at, last_sequence";

function toJob(r: JobRow): Job {
  return {
    id: r.id,
    name: r.name,
    state: r.state,
    ...r.progress,
    // Jobs stored before evaluations existed are training runs.
    kind: r.progress.kind ?? "train",
    createdAt: r.created_at,
    ...(r.started_at ? { startedAt: r.started_at } : {}),
    ...(r.finished_at ? { finishedAt: r.finished_at } : {}),
    lastSequence: r.last_sequence,
  };
}

type Client = Pick<Database, "query">;

export class PgJobStore implements JobStore {
  readonly durable = true;
  readonly #db: Database;
  readonly #notices = new JobNotices();
  #closed = false;

  private constructor(db: Database) {
    this.#db = db;
  }

  /** The store over `db` (migrated), its notifications subscribed. */
  static async open(db: Database): Promise<PgJobStore> {
    const store = new PgJobStore(db);
    await db.listen(EVENTS, (id) => store.#changed(id));
    await db.listen(QUEUED, () => store.#claimable());
    // Notifications sent while the connection was down are lost: everyone looks again.
    db.onConnect(() => {
      store.#changed(null);
      store.#claimable();
    });
    return store;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async create(c: NewJob): Promise<{ job: Job; created: boolean }> {
    const id = crypto.randomUUID();
    const job = await this.#db.tx(async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock($1)", [SUBMIT_LOCK]);
      if (c.requestId) {
        const { rows } = await tx.query<JobRow & { request_digest: string | null }>(
          `SELECT ${JOB_COLUMNS}, request_digest FROM jobs WHERE request_id = $1`,
          [c.requestId],
        );
        if (rows.length > 0) {
          if (rows[0].request_digest !== (c.requestDigest ?? null)) {
            throw requestIdReused(c.requestId, rows[0].id);
          }
          return { job: toJob(rows[0]), created: false };
        }
      }
      const { rows } = await tx.query<{ active: string }>(
        "SELECT count(*) AS active FROM jobs WHERE state IN ('queued', 'running', 'cancelling')",
      );
      const active = Number(rows[0].active);
      if (active >= c.maxActive) throw queueFull(active, c.maxActive);
      const progress = progressOf(newJob(id, c.name, c.tasks, new Date(), c.kind));
      const inserted = await tx.query<JobRow>(
        `INSERT INTO jobs (id, name, state, request, progress, created_at, last_sequence,
                           request_id, request_digest)
         VALUES ($1, $2, 'queued', $3, $4, clock_timestamp(), 1, $5, $6) RETURNING ${JOB_COLUMNS}`,
        [
          id,
          c.name,
          JSON.stringify(c.request),
          JSON.stringify(progress),
          c.requestId ?? null,
          c.requestDigest ?? null,
        ],
      );
      await this.#insertEvent(tx, id, 1, { type: "queued", position: active });
      // The caller gave up before the job is stored: nothing is (the transaction rolls back).
      c.signal?.throwIfAborted();
      await tx.query("SELECT pg_notify($1, $2), pg_notify($3, '')", [EVENTS, id, QUEUED]);
      return { job: toJob(inserted.rows[0]), created: true };
    });
    return job;
  }

  async claim(owner: string, leaseMs: number): Promise<Claim | null> {
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
          WHERE ${CLAIMABLE}
          ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
       RETURNING ${JOB_COLUMNS}, request, cancel_requested, attempts`,
      [owner, leaseMs],
    );
    if (rows.length === 0) return null;
    const r = rows[0];
    await this.#db.query("SELECT pg_notify($1, $2)", [EVENTS, r.id]);
    return {
      job: toJob(r),
      request: r.request,
      attempt: r.attempts,
      cancelRequested: r.cancel_requested,
    };
  }

  async renew(id: string, owner: string, leaseMs: number): Promise<{ cancelRequested: boolean }> {
    const { rows } = await this.#db.query<{ cancel_requested: boolean }>(
      `UPDATE jobs SET lease_until = clock_timestamp() + $3 * interval '1 millisecond'
        WHERE id = $1 AND owner = $2 RETURNING cancel_requested`,
      [id, owner, leaseMs],
    );
    if (rows.length === 0) throw new LeaseLost(id);
    return { cancelRequested: rows[0].cancel_requested };
  }

  async release(id: string, owner: string): Promise<void> {
    await this.#db.query(
      `UPDATE jobs SET owner = NULL, lease_until = clock_timestamp() - interval '1 millisecond'
        WHERE id = $1 AND owner = $2`,
      [id, owner],
    );
    await this.#db.query("SELECT pg_notify($1, '')", [QUEUED]);
  }

  async append(id: string, owner: string, event: TrainingEvent): Promise<JobEvent> {
    const ev = await this.#db.tx(async (tx) => {
      const job = await this.#owned(tx, id, owner);
      foldEvent(job, event);
      const sequence = job.lastSequence + 1;
      await tx.query(
        "UPDATE jobs SET last_sequence = $2, progress = $3 WHERE id = $1",
        [id, sequence, JSON.stringify(progressOf(job))],
      );
      const time = await this.#insertEvent(tx, id, sequence, event);
      await tx.query("SELECT pg_notify($1, $2)", [EVENTS, id]);
      return { sequence, jobId: id, time, event };
    });
    return ev;
  }

  async finish(id: string, owner: string, state: FinalState, event: TrainingEvent): Promise<Job> {
    return await this.#db.tx(async (tx) => {
      const job = await this.#owned(tx, id, owner);
      return await this.#finish(tx, job, state, event);
    });
  }

  async requestCancel(id: string): Promise<Job> {
    if (!isJobId(id)) throw jobNotFound(id);
    return await this.#db.tx(async (tx) => {
      const { rows } = await tx.query<JobRow>(
        `SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE`,
        [id],
      );
      if (rows.length === 0) throw jobNotFound(id);
      const job = toJob(rows[0]);
      if (job.state === "queued") {
        return await this.#finish(tx, job, "cancelled", {
          type: "cancelled",
          reason: "cancelled before it started",
        });
      }
      if (job.state !== "running") return job;
      const { rows: updated } = await tx.query<JobRow>(
        `UPDATE jobs SET state = 'cancelling', cancel_requested = true WHERE id = $1
         RETURNING ${JOB_COLUMNS}`,
        [id],
      );
      await tx.query("SELECT pg_notify($1, $2)", [EVENTS, id]);
      return toJob(updated[0]);
    });
  }

  async get(id: string): Promise<Job> {
    if (!isJobId(id)) throw jobNotFound(id);
    const { rows } = await this.#db.query<JobRow>(
      `SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1`,
      [id],
    );
    if (rows.length === 0) throw jobNotFound(id);
    return toJob(rows[0]);
  }

  async counts(): Promise<JobCounts> {
    const { rows } = await this.#db.query<{ waiting: string; running: string }>(
      `SELECT count(*) FILTER (WHERE ${CLAIMABLE}) AS waiting,
              count(*) FILTER (WHERE NOT (${CLAIMABLE})) AS running
         FROM jobs WHERE state IN ('queued', 'running', 'cancelling')`,
    );
    return { waiting: Number(rows[0].waiting), running: Number(rows[0].running) };
  }

  async list(limit: number): Promise<Job[]> {
    const { rows } = await this.#db.query<JobRow>(
      `SELECT ${JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT $1`,
      [limit],
    );
    return rows.map(toJob);
  }

  async events(id: string, after: number, limit: number): Promise<JobEvent[]> {
    await this.get(id);
    const { rows } = await this.#db.query<{ sequence: number; time: Date; event: TrainingEvent }>(
      `SELECT sequence, time, event FROM job_events WHERE job_id = $1 AND sequence > $2
        ORDER BY sequence LIMIT $3`,
      [id, after, limit],
    );
    return rows.map((r) => ({ sequence: r.sequence, jobId: id, time: r.time, event: r.event }));
  }

  async saveCheckpoint(id: string, owner: string, files: Map<string, Uint8Array>): Promise<void> {
    await this.#db.tx(async (tx) => {
      await this.#owned(tx, id, owner);
      await tx.query("DELETE FROM job_checkpoints WHERE job_id = $1", [id]);
      for (const [path, data] of files) {
        await tx.query("INSERT INTO job_checkpoints (job_id, path, data) VALUES ($1, $2, $3)", [
          id,
          path,
          data,
        ]);
      }
    });
  }

  async loadCheckpoint(id: string): Promise<Map<string, Uint8Array>> {
    await this.get(id);
    const { rows } = await this.#db.query<{ path: string; data: Uint8Array }>(
      "SELECT path, data FROM job_checkpoints WHERE job_id = $1",
      [id],
    );
    return new Map(rows.map((r) => [r.path, new Uint8Array(r.data)]));
  }

  async forget(keep: number, before: Date): Promise<string[]> {
    const { rows } = await this.#db.query<{ id: string }>(
      `DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND (
         finished_at < $1
         OR id NOT IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
                        ORDER BY finished_at DESC, id LIMIT $2))
       RETURNING id`,
      [before, keep],
    );
    return rows.map((r) => r.id);
  }

  onChange(fn: (id: string | null) => void): () => void {
    return this.#notices.onChange(fn);
  }

  onClaimable(fn: () => void): () => void {
    return this.#notices.onClaimable(fn);
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#notices.changed(null); // watchers look once more, see the store closed, and end
    this.#notices.clear();
    return Promise.resolve();
  }

  /** The job, locked for this transaction, when `owner` holds it; LeaseLost otherwise. */
  async #owned(tx: Client, id: string, owner: string): Promise<Job> {
    const { rows } = await tx.query<JobRow>(
      `SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1 AND owner = $2
          AND state IN ('running', 'cancelling') FOR UPDATE`,
      [id, owner],
    );
    if (rows.length === 0) throw new LeaseLost(id);
    return toJob(rows[0]);
  }

  /** Final state and terminal event in the caller's transaction; the checkpoint goes. */
  async #finish(tx: Client, job: Job, state: FinalState, event: TrainingEvent): Promise<Job> {
    foldEvent(job, event);
    const sequence = job.lastSequence + 1;
    const { rows } = await tx.query<JobRow>(
      `UPDATE jobs SET state = $2, finished_at = clock_timestamp(), progress = $3,
              last_sequence = $4, owner = NULL, lease_until = NULL
        WHERE id = $1 RETURNING ${JOB_COLUMNS}`,
      [job.id, state, JSON.stringify(progressOf(job)), sequence],
    );
    await this.#insertEvent(tx, job.id, sequence, event);
    await tx.query("DELETE FROM job_checkpoints WHERE job_id = $1", [job.id]);
    await tx.query("SELECT pg_notify($1, $2)", [EVENTS, job.id]);
    return toJob(rows[0]);
  }

  async #insertEvent(tx: Client, id: string, sequence: number, event: TrainingEvent) {
    const { rows } = await tx.query<{ time: Date }>(
      `INSERT INTO job_events (job_id, sequence, time, event) VALUES ($1, $2, clock_timestamp(), $3)
       RETURNING time`,
      [id, sequence, JSON.stringify(event)],
    );
    return rows[0].time;
  }

  #changed(id: string | null): void {
    if (!this.#closed) this.#notices.changed(id);
  }

  #claimable(): void {
    if (!this.#closed) this.#notices.claimable();
  }
}
