/**
 * The embedded backend's job journal: each job of the in-process queue on local disk, so that a
 * queued or running job survives a restart (and resumes from its checkpoint in the runs
 * directory) and a finished one is still answered for.
 *
 * Layout, in one directory (`<runs>/.jobs/`):
 * ```
 * <id>.json          the job as last recorded (state, progress) and the request that made it;
 *                    replaced whole (written aside, fsynced, renamed over)
 * <id>.events.jsonl  its events, one JSON line each, appended in sequence order
 * ```
 * Writes are chained in order in the background; `flushed()` waits for them (a submit does, before
 * the caller hears of the job). A line torn by a crash mid-append is the last one, and is dropped
 * on load with the events after it (none can be: appends are ordered).
 */
import { join } from "node:path";
import { syncDir, writeFileDurable } from "../util/durable_fs.ts";
import type { JobEvent } from "./events.ts";
import type { Job } from "./jobs.ts";

export interface JournaledJob {
  job: Job;
  request: unknown;
  events: JobEvent[];
}

interface JobFile {
  format: 1;
  job: Omit<Job, "createdAt" | "startedAt" | "finishedAt"> & {
    createdAt: string;
    startedAt?: string;
    finishedAt?: string;
  };
  request: unknown;
  /** Sub-millisecond submission time: orders jobs created in the same millisecond. */
  order?: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class JobJournal {
  readonly dir: string;
  #chain: Promise<void> = Promise.resolve();
  #failure: unknown = null;
  readonly #requests = new Map<string, unknown>();
  readonly #order = new Map<string, number>();
  readonly #log: (msg: string, fields?: Record<string, unknown>) => void;

  constructor(dir: string, log?: (msg: string, fields?: Record<string, unknown>) => void) {
    this.dir = dir;
    Deno.mkdirSync(dir, { recursive: true });
    this.#log = log ?? ((msg, fields) => console.error(JSON.stringify({ msg, ...fields })));
  }

  /** Every journaled job, oldest first. */
  async load(): Promise<JournaledJob[]> {
    const out: (JournaledJob & { order: number })[] = [];
    for await (const e of Deno.readDir(this.dir)) {
      const id = e.name.slice(0, -".json".length);
      if (!e.isFile || !e.name.endsWith(".json") || !UUID.test(id)) continue;
      try {
        const file = JSON.parse(await Deno.readTextFile(join(this.dir, e.name))) as JobFile;
        const { createdAt, startedAt, finishedAt, ...rest } = file.job;
        const job: Job = {
          ...rest,
          createdAt: new Date(createdAt),
          ...(startedAt ? { startedAt: new Date(startedAt) } : {}),
          ...(finishedAt ? { finishedAt: new Date(finishedAt) } : {}),
        };
        const events = await this.#events(id);
        this.#requests.set(id, file.request);
        const order = file.order ?? job.createdAt.getTime();
        this.#order.set(id, order);
        out.push({ job, request: file.request, events, order });
      } catch (err) {
        // One damaged record must not keep the service from starting; it is said in the log.
        this.#log("job journal: unreadable record skipped", {
          file: e.name,
          error: (err as Error).message,
        });
      }
    }
    return out.sort((a, b) => a.order - b.order).map(({ order: _, ...j }) => j);
  }

  async #events(id: string): Promise<JobEvent[]> {
    let text: string;
    try {
      text = await Deno.readTextFile(join(this.dir, `${id}.events.jsonl`));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    const events: JobEvent[] = [];
    for (const line of text.split("\n")) {
      if (!line) continue;
      try {
        const ev = JSON.parse(line);
        events.push({ ...ev, time: new Date(ev.time) });
      } catch {
        break; // a torn last line
      }
    }
    return events;
  }

  /** A new job and its request. */
  created(job: Job, request: unknown): void {
    this.#requests.set(job.id, request);
    this.#order.set(job.id, performance.timeOrigin + performance.now());
    this.#write(job);
  }

  /** The job's state and progress changed (it started, finished, ...). */
  updated(job: Job): void {
    this.#write(job);
  }

  event(ev: JobEvent): void {
    const line = JSON.stringify(ev) + "\n";
    this.#then(() =>
      Deno.writeTextFile(join(this.dir, `${ev.jobId}.events.jsonl`), line, { append: true })
    );
  }

  /** The job is no longer remembered. */
  forgotten(id: string): void {
    this.#requests.delete(id);
    this.#order.delete(id);
    this.#then(async () => {
      for (const f of [`${id}.json`, `${id}.events.jsonl`]) {
        await Deno.remove(join(this.dir, f)).catch(() => {});
      }
    });
  }

  /** Resolves when every write so far is on disk; rejects with the first that failed. */
  async flushed(): Promise<void> {
    await this.#chain;
    if (this.#failure) throw this.#failure;
  }

  #write(job: Job): void {
    const file: JobFile = {
      format: 1,
      job: {
        ...job,
        createdAt: job.createdAt.toISOString(),
        startedAt: job.startedAt?.toISOString(),
        finishedAt: job.finishedAt?.toISOString(),
      },
      request: this.#requests.get(job.id) ?? null,
      order: this.#order.get(job.id),
    };
    const bytes = new TextEncoder().encode(JSON.stringify(file));
    this.#then(async () => {
      const tmp = join(this.dir, `.${job.id}.${crypto.randomUUID()}.tmp`);
      await writeFileDurable(tmp, bytes);
      await Deno.rename(tmp, join(this.dir, `${job.id}.json`));
      await syncDir(this.dir);
    });
  }

  #then(step: () => Promise<void>): void {
    this.#chain = this.#chain.then(step).catch((e) => {
      this.#failure ??= e;
      this.#log("job journal: write failed", { error: (e as Error).message });
    });
  }
}
