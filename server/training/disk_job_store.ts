/**
 * The embedded service's JobStore: one process's jobs in files, so that a queued or running job
 * survives a restart (the next process resumes it from its checkpoint) and a finished one is
 * still answered for. One directory (`<runs>/.jobs/`), owned by one process at a time:
 * ```
 * <id>.json            the job (state, dates), its request and request id; replaced whole
 *                      (written aside, fsynced, renamed over) at each change of state
 * <id>.events.jsonl    its events, one JSON line each, appended and fsynced before anyone sees them
 * <id>.checkpoint      its latest checkpoint, all files in one (replaced whole, as the record)
 * ```
 * A job's progress is folded from its events when the store opens. A line torn by a crash
 * mid-append is the last one and is dropped; a terminal event whose record had not yet said so
 * (a crash between the two writes) finishes the job as the event says.
 */
import { join } from "node:path";
import { writingTo } from "../errors.ts";
import { syncDir, writeFileDurable } from "../util/durable_fs.ts";
import { isTerminal, type JobEvent, type TrainingEvent } from "./events.ts";
import { type FinalState, foldEvent, isFinished, isJobId, type Job, newJob } from "./job_store.ts";
import { LocalJobStore, type LocalRecord, type Persistence } from "./local_job_store.ts";

interface RecordFile {
  /** 1: the journal of earlier versions (job and request only); 2: this store. */
  format: 1 | 2;
  job: Omit<Job, "createdAt" | "startedAt" | "finishedAt"> & {
    createdAt: string;
    startedAt?: string;
    finishedAt?: string;
  };
  request: unknown;
  requestId?: string;
  requestDigest?: string;
  attempts?: number;
  cancelRequested?: boolean;
  order?: number;
}

const FINAL_STATE: Record<string, FinalState> = {
  completed: "succeeded",
  failed: "failed",
  cancelled: "cancelled",
};

export class DiskJobStore extends LocalJobStore {
  readonly dir: string;

  private constructor(dir: string, records: (LocalRecord & { events: JobEvent[] })[]) {
    super(diskPersistence(dir), { durable: true, records });
    this.dir = dir;
  }

  /**
   * Opens (creating) the directory and takes back every job kept there. `log` hears of a record
   * it could not read: one damaged record must not keep the service from starting.
   */
  static async open(
    dir: string,
    log: (msg: string, fields?: Record<string, unknown>) => void = (msg, fields) =>
      console.error(JSON.stringify({ msg, ...fields })),
  ): Promise<DiskJobStore> {
    await Deno.mkdir(dir, { recursive: true });
    const records: (LocalRecord & { events: JobEvent[] })[] = [];
    for await (const e of Deno.readDir(dir)) {
      const id = e.name.slice(0, -".json".length);
      if (!e.isFile || !e.name.endsWith(".json") || !isJobId(id)) continue;
      try {
        records.push(await readRecord(dir, id));
      } catch (err) {
        log("job store: unreadable record skipped", {
          file: e.name,
          error: (err as Error).message,
        });
      }
    }
    return new DiskJobStore(dir, records);
  }
}

async function readRecord(dir: string, id: string): Promise<LocalRecord & { events: JobEvent[] }> {
  const file = JSON.parse(await Deno.readTextFile(join(dir, `${id}.json`))) as RecordFile;
  const { createdAt, startedAt, finishedAt, ...rest } = file.job;
  const events = await readEvents(join(dir, `${id}.events.jsonl`));
  // Progress as the events say: the record is rewritten at changes of state only.
  const job: Job = {
    // Records written before evaluations existed are training runs.
    ...newJob(id, rest.name, rest.tasks, new Date(createdAt), rest.kind ?? "train"),
    state: rest.state,
    ...(startedAt ? { startedAt: new Date(startedAt) } : {}),
    ...(finishedAt ? { finishedAt: new Date(finishedAt) } : {}),
  };
  for (const ev of events) foldEvent(job, ev.event);
  job.lastSequence = events.at(-1)?.sequence ?? 0;
  const last = events.at(-1);
  if (last && isTerminal(last.event) && !isFinished(job.state)) {
    job.state = FINAL_STATE[last.event.type];
    job.finishedAt = last.time;
  }
  return {
    job,
    request: file.request,
    requestId: file.requestId,
    requestDigest: file.requestDigest,
    attempts: file.attempts ?? 0,
    // A journal of earlier versions kept cancel requests as the state alone.
    cancelRequested: file.cancelRequested ?? job.state === "cancelling",
    order: file.order ?? job.createdAt.getTime(),
    events,
  };
}

async function readEvents(path: string): Promise<JobEvent[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  const events: JobEvent[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const ev = JSON.parse(line) as JobEvent & { time: string };
      events.push({ ...ev, time: new Date(ev.time), event: ev.event as TrainingEvent });
    } catch {
      break; // a torn last line
    }
  }
  return events;
}

/** How a full job store disk is named to the user: the setting, never the path. */
const JOB_STORAGE = "the job store's disk (RUNS_DIR)";

function diskPersistence(dir: string): Persistence {
  const file = (id: string, ext: string) => join(dir, `${id}${ext}`);
  /** Writes `bytes` to `name` atomically: aside, fsynced, renamed over, directory fsynced. */
  const replace = (name: string, bytes: Uint8Array) =>
    writingTo(JOB_STORAGE, async () => {
      const tmp = join(dir, `.${crypto.randomUUID()}.tmp`);
      await writeFileDurable(tmp, bytes);
      await Deno.rename(tmp, name);
      await syncDir(dir);
    });
  const removeIfThere = (path: string) =>
    Deno.remove(path).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  return {
    async saveRecord(rec) {
      const { job } = rec;
      const record: RecordFile = {
        format: 2,
        job: {
          ...job,
          createdAt: job.createdAt.toISOString(),
          startedAt: job.startedAt?.toISOString(),
          finishedAt: job.finishedAt?.toISOString(),
        },
        request: rec.request,
        requestId: rec.requestId,
        requestDigest: rec.requestDigest,
        attempts: rec.attempts,
        cancelRequested: rec.cancelRequested,
        order: rec.order,
      };
      await replace(file(job.id, ".json"), new TextEncoder().encode(JSON.stringify(record)));
    },
    appendEvent: (ev) =>
      writingTo(JOB_STORAGE, async () => {
        const f = await Deno.open(file(ev.jobId, ".events.jsonl"), { append: true, create: true });
        const before = (await f.stat()).size;
        try {
          const line = new TextEncoder().encode(JSON.stringify(ev) + "\n");
          let at = 0;
          while (at < line.length) at += await f.write(line.subarray(at));
          await f.syncData();
        } catch (e) {
          // A line cut short (a full disk) would swallow the next one appended: take it back.
          await f.truncate(before).catch(() => {});
          throw e;
        } finally {
          f.close();
        }
      }),
    async saveCheckpoint(id, files) {
      await replace(file(id, ".checkpoint"), packFiles(files));
    },
    async loadCheckpoint(id) {
      try {
        return unpackFiles(await Deno.readFile(file(id, ".checkpoint")));
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return new Map();
        throw e;
      }
    },
    async dropCheckpoint(id) {
      await removeIfThere(file(id, ".checkpoint"));
    },
    async remove(id) {
      for (const ext of [".json", ".events.jsonl", ".checkpoint"]) {
        await removeIfThere(file(id, ext));
      }
    },
  };
}

/** Files as one blob: an 8-byte header length, a JSON list of paths and sizes, the bytes. */
function packFiles(files: Map<string, Uint8Array>): Uint8Array {
  const header = new TextEncoder().encode(
    JSON.stringify([...files].map(([path, data]) => [path, data.length])),
  );
  const size = [...files.values()].reduce((n, d) => n + d.length, 0);
  const out = new Uint8Array(8 + header.length + size);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(header, 8);
  let at = 8 + header.length;
  for (const data of files.values()) {
    out.set(data, at);
    at += data.length;
  }
  return out;
}

function unpackFiles(blob: Uint8Array): Map<string, Uint8Array> {
  const n = Number(new DataView(blob.buffer, blob.byteOffset).getBigUint64(0, true));
  const list = JSON.parse(new TextDecoder().decode(blob.subarray(8, 8 + n))) as [string, number][];
  const out = new Map<string, Uint8Array>();
  let at = 8 + n;
  for (const [path, size] of list) {
    out.set(path, blob.slice(at, at + size));
    at += size;
  }
  return out;
}
