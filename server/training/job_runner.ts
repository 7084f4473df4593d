/**
 * The one loop that runs jobs, whatever store holds them: claim a job, restore its checkpoint
 * into its working directory, rebuild its work from the stored request, renew the lease while it
 * runs, record its events in order, decide its outcome once, and finish it, or release it at
 * shutdown for the next runner (this process after a restart, or another replica) to resume.
 * One job at a time: every job shares the one resident model. A job's outputs in its directory
 * (its event files) outlive it until the store forgets the job.
 */
import { join, relative } from "node:path";
import { errorKind, isKind, ServiceError, writingTo } from "../errors.ts";
import { CHECKPOINT_STORAGE } from "./checkpoint.ts";
import { isTerminal, type TrainingEvent } from "./events.ts";
import { type Claim, type FinalState, type Job, type JobStore, LeaseLost } from "./job_store.ts";

/**
 * Runs a job's stored request: emits its events, returns when done (after a `completed` event),
 * throws to fail, and stops when `signal` aborts.
 */
export type JobWork = (
  request: unknown,
  job: Job,
  emit: (e: TrainingEvent) => void,
  signal: AbortSignal,
) => Promise<void>;

export interface JobRunnerOptions {
  store: JobStore;
  work: JobWork;
  /** The job's working directory on this machine (its checkpoint is restored into it). */
  workDir: (jobId: string) => string;
  /**
   * Entries of a job's directory that are its output, not its checkpoint (TensorBoard's event
   * files): never stored with a checkpoint, kept when the job ends, removed with the directory
   * when the store forgets the job. Default none.
   */
  outputs?: readonly string[];
  /** How long a claim lasts without a renewal. Default 15 s. */
  leaseMs?: number;
  /** Finished jobs kept (the newest). */
  keepFinished: number;
  /** How long a finished job is kept, in ms. Default 24 h. */
  keepFinishedMs?: number;
  /** The text a failed job shows for an error its work threw. Default: the message. */
  failureReason?: (err: unknown) => string;
  /** This runner's name in the store's leases. Default: host/pid/random. */
  owner?: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

/** Why a running job's work was stopped, when it was (its signal's reason). */
type Stop = "cancelled" | "released" | "lost";

/**
 * How a job ends, decided once from how its work ended: null when it does not end here (released
 * at shutdown, or its lease lost: it resumes elsewhere).
 */
export function outcomeOf(
  ended: { completed?: TrainingEvent; error?: unknown; stop?: Stop },
  failureReason: (err: unknown) => string,
): { state: FinalState; event: TrainingEvent } | null {
  // The completed event is the work's last word: its task versions are in the registry.
  if (ended.completed) return { state: "succeeded", event: ended.completed };
  if (ended.stop === "released" || ended.stop === "lost") return null;
  if (ended.stop === "cancelled") {
    return { state: "cancelled", event: { type: "cancelled", reason: "cancelled while running" } };
  }
  const err = ended.error ?? new Error("the job's work returned without a completed event");
  return {
    state: "failed",
    event: { type: "failed", reason: failureReason(err), kind: errorKind(err) },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isUnavailable(e: unknown): boolean {
  return e instanceof ServiceError && e.kind === "unavailable";
}

interface Running {
  id: string;
  abort: AbortController;
  stop?: Stop;
  /** A write of the job that cannot be made (its store's disk is full): the job fails with it. */
  failure?: unknown;
  /** Renews the lease now (a change of the job was announced: perhaps a cancel). */
  renew?: () => void;
}

export class JobRunner {
  readonly owner: string;
  readonly #o: Required<Omit<JobRunnerOptions, "log" | "owner">> & Pick<JobRunnerOptions, "log">;
  #running: Running | null = null;
  #done: Promise<void> = Promise.resolve();
  #claiming = false;
  #closed = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #unsubscribe: (() => void)[] = [];

  constructor(opts: JobRunnerOptions) {
    this.#o = {
      store: opts.store,
      work: opts.work,
      workDir: opts.workDir,
      outputs: opts.outputs ?? [],
      leaseMs: opts.leaseMs ?? 15_000,
      keepFinished: opts.keepFinished,
      keepFinishedMs: opts.keepFinishedMs ?? 24 * 3600_000,
      failureReason: opts.failureReason ?? ((e) => (e instanceof Error ? e.message : String(e))),
      log: opts.log,
    };
    this.owner = opts.owner ?? `${Deno.hostname()}/${Deno.pid}/${crypto.randomUUID().slice(0, 8)}`;
  }

  /** Starts taking jobs (the store's notifications, and a look a few times per lease). */
  start(): void {
    if (this.#timer || this.#closed) return;
    const { store, leaseMs } = this.#o;
    this.#unsubscribe.push(store.onClaimable(() => this.#pump()));
    // A cancel asked for on any replica: the runner holding the job hears it at once.
    this.#unsubscribe.push(store.onChange((id) => {
      if (id !== null && id === this.#running?.id) this.#running.renew?.();
    }));
    // Expired leases of dead runners announce nothing: look for them a few times per lease.
    this.#timer = setInterval(() => {
      this.#pump();
      this.#forget();
    }, Math.max(100, Math.floor(leaseMs / 3)));
    this.#pump();
  }

  /**
   * Stops taking jobs and hands the running one back (released: its checkpoint stays for the
   * next runner), or, with a store that ends with this process, cancels it: nobody could resume
   * it. Resolves when its work has stopped and that is recorded.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const off of this.#unsubscribe.splice(0)) off();
    const r = this.#running;
    if (r && !r.stop) {
      r.stop = this.#o.store.durable ? "released" : "cancelled";
      r.abort.abort(new DOMException("the runner is shutting down", "AbortError"));
    }
    await this.#done;
  }

  /** Resolves when this runner runs nothing (tests). */
  async drained(): Promise<void> {
    while (this.#running) await this.#done;
  }

  /** Whether this runner is running job `id` now. */
  isRunning(id: string): boolean {
    return this.#running?.id === id;
  }

  #pump(): void {
    if (!this.#timer || this.#closed || this.#running || this.#claiming) return;
    this.#claiming = true;
    this.#o.store.claim(this.owner, this.#o.leaseMs).then((claim) => {
      this.#claiming = false;
      if (!claim) return;
      if (this.#closed) {
        void this.#o.store.release(claim.job.id, this.owner).catch(() => {});
        return;
      }
      const running: Running = { id: claim.job.id, abort: new AbortController() };
      this.#running = running;
      this.#o.log?.(claim.attempt > 1 ? "job taken over" : "job claimed", {
        job: claim.job.id,
        attempt: claim.attempt,
        step: claim.job.step,
        owner: this.owner,
      });
      this.#done = this.#execute(claim, running).finally(() => {
        this.#running = null;
        this.#pump();
      });
    }, (e) => {
      this.#claiming = false;
      // The database being away is the usual reason; the timer tries again.
      this.#o.log?.("job claim failed", { error: (e as Error).message });
    });
  }

  #forget(): void {
    const { store, keepFinished, keepFinishedMs, workDir } = this.#o;
    store.forget(keepFinished, new Date(Date.now() - keepFinishedMs)).then(async (ids) => {
      // What the job left here (its outputs) goes with it.
      for (const id of ids) await Deno.remove(workDir(id), { recursive: true }).catch(() => {});
    }, () => {});
  }

  async #execute(claim: Claim, running: Running): Promise<void> {
    const { store, leaseMs } = this.#o;
    const { id } = claim.job;
    const dir = this.#o.workDir(id);
    let lastGood = Date.now();
    const lose = (e: unknown) => {
      if (running.stop === "lost") return;
      this.#o.log?.("job lease lost; stopping it here", { job: id, error: String(e) });
      running.stop = "lost";
      running.abort.abort(e instanceof LeaseLost ? e : new LeaseLost(id));
    };

    // The job's writes, in the order its events happened; while the store is away they are
    // retried for as long as the lease would last, then the job is left to the next runner.
    let writes: Promise<void> = Promise.resolve();
    // A store that refuses for want of space will not take the job's progress: the job fails,
    // saying so, rather than run on with nothing kept.
    const fail = (e: unknown) => {
      if (running.stop || running.failure) return;
      running.failure = e;
      running.abort.abort(e);
    };
    const write = (op: () => Promise<unknown>) => {
      writes = writes.then(async () => {
        while (running.stop !== "lost") {
          try {
            await op();
            lastGood = Date.now();
            return;
          } catch (e) {
            if (isKind(e, "resource_exhausted")) return fail(e);
            if (!isUnavailable(e) || Date.now() - lastGood > leaseMs) return lose(e);
            await sleep(250);
          }
        }
      });
    };

    const renew = () =>
      store.renew(id, this.owner, leaseMs).then(({ cancelRequested }) => {
        lastGood = Date.now();
        if (cancelRequested && !running.stop) {
          running.stop = "cancelled";
          running.abort.abort(new DOMException("job cancelled", "AbortError"));
        }
      }, (e) => {
        if (e instanceof LeaseLost || Date.now() - lastGood > leaseMs) lose(e);
      });
    running.renew = () => void renew();
    const heartbeat = setInterval(renew, Math.max(50, Math.floor(leaseMs / 3)));

    let outcome: ReturnType<typeof outcomeOf> = null;
    try {
      if (claim.cancelRequested) {
        // Cancelled while nobody held it: it ends so, without running again.
        outcome = outcomeOf({ stop: "cancelled" }, this.#o.failureReason);
        return;
      }
      await restoreDir(dir, await store.loadCheckpoint(id), this.#o.outputs);
      let completed: TrainingEvent | undefined;
      const emit = (e: TrainingEvent) => {
        if (running.stop === "lost" || completed) return;
        // The runner decides how a job ends: the work's own terminal events other than
        // `completed` are not recorded (its throw or its signal says it).
        if (isTerminal(e) && e.type !== "completed") return;
        if (e.type === "completed") {
          completed = e;
          return;
        }
        // Read now, while the work waits for this call: the next checkpoint replaces it.
        if (e.type === "checkpoint") {
          const files = readDir(dir, this.#o.outputs);
          write(() => store.saveCheckpoint(id, this.owner, files));
        }
        write(() => store.append(id, this.owner, e));
      };
      let error: unknown;
      try {
        await this.#o.work(claim.request, claim.job, emit, running.abort.signal);
      } catch (e) {
        error = e;
      }
      outcome = outcomeOf(
        { completed, error: running.failure ?? error, stop: running.stop },
        this.#o.failureReason,
      );
    } finally {
      clearInterval(heartbeat);
      running.renew = undefined;
      // The directory goes, but for its outputs, before the job's end is recorded: whoever sees
      // the job end finds nothing else of it left here (the store keeps the checkpoint a later
      // runner needs).
      await clearDir(dir, this.#o.outputs).catch(() => {});
      const end = outcome;
      if (end) write(() => store.finish(id, this.owner, end.state, end.event));
      else if (running.stop === "released") write(() => store.release(id, this.owner));
      await writes;
    }
  }
}

/**
 * Every file under `dir` but its `outputs`, by relative path (names starting with "." are writes
 * in progress).
 */
function readDir(dir: string, outputs: readonly string[]): Map<string, Uint8Array> {
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
      if (e.name.startsWith(".") || (d === dir && outputs.includes(e.name))) continue;
      const p = join(d, e.name);
      if (e.isDirectory) walk(p);
      else if (e.isFile) out.set(relative(dir, p), Deno.readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

/**
 * Removes everything in `dir` but its `outputs`, and `dir` itself when nothing is left; whether
 * anything went. A missing `dir` is already clear.
 */
export async function clearDir(dir: string, outputs: readonly string[]): Promise<boolean> {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
  const gone = entries.filter((e) => !outputs.includes(e.name));
  for (const e of gone) await Deno.remove(join(dir, e.name), { recursive: true });
  if (gone.length === entries.length) await Deno.remove(dir, { recursive: true });
  return gone.length > 0 || entries.length === 0;
}

/** Makes `dir` hold exactly `files` (a checkpoint restored, or nothing) beside its `outputs`. */
async function restoreDir(
  dir: string,
  files: Map<string, Uint8Array>,
  outputs: readonly string[],
): Promise<void> {
  await clearDir(dir, outputs).catch(() => {});
  await writingTo(CHECKPOINT_STORAGE, async () => {
    for (const [path, data] of files) {
      // Paths were written by readDir: relative, without "..".
      if (path.split("/").some((p) => p === ".." || p === "")) continue;
      const file = join(dir, path);
      await Deno.mkdir(join(file, ".."), { recursive: true });
      await Deno.writeFile(file, data);
    }
  });
}
