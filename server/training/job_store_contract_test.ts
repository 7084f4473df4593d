/**
 * Behaviour every JobStore shares, and the JobRunner over each: run against the memory store, the
 * disk store and the PostgreSQL store (on a throwaway cluster: test/support/postgres.ts).
 */
import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { type PgCluster, postgresTool, startPostgres } from "../../test/support/postgres.ts";
import { ServiceError } from "../errors.ts";
import { Database } from "../util/db.ts";
import { DiskJobStore } from "./disk_job_store.ts";
import type { JobEvent, TrainingEvent } from "./events.ts";
import { JobRunner, type JobWork } from "./job_runner.ts";
import { type Job, type JobStore, LeaseLost, watchEvents } from "./job_store.ts";
import { MemoryJobStore } from "./local_job_store.ts";
import { PgJobStore } from "./pg_job_store.ts";

interface Opened {
  store: JobStore;
  /** The same jobs through a new store (a restart), where the store outlives its process. */
  reopen?: () => Promise<JobStore>;
  close(): Promise<void>;
}

const pgTool = postgresTool("server/training/job_store_contract_test.ts");
/** One cluster for the file, started by the first PostgreSQL test; each test gets empty tables. */
let cluster: Promise<PgCluster> | undefined;

const KINDS: [string, () => Promise<Opened>][] = [
  ["MemoryJobStore", () => {
    const store = new MemoryJobStore();
    return Promise.resolve({ store, close: () => store.close() });
  }],
  ["DiskJobStore", async () => {
    const dir = await Deno.makeTempDir({ prefix: "jobs_contract_" });
    const opened: JobStore[] = [await DiskJobStore.open(dir)];
    return {
      store: opened[0],
      reopen: async () => {
        const s = await DiskJobStore.open(dir);
        opened.push(s);
        return s;
      },
      async close() {
        for (const s of opened) await s.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  }],
  ["PgJobStore", async () => {
    pgTool.check();
    cluster ??= startPostgres();
    const c = await cluster;
    const dbs = [await Database.open(c.url, { log: () => {} })];
    await dbs[0].query("TRUNCATE jobs CASCADE");
    const stores = [await PgJobStore.open(dbs[0])];
    return {
      store: stores[0],
      reopen: async () => {
        const db = await Database.open(c.url, { log: () => {} });
        dbs.push(db);
        const s = await PgJobStore.open(db);
        stores.push(s);
        return s;
      },
      async close() {
        for (const s of stores) await s.close();
        for (const db of dbs) await db.close();
      },
    };
  }],
];

const LEASE_MS = 300;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const step = (n: number): TrainingEvent => ({
  type: "step",
  step: n,
  epoch: 0,
  totalSteps: 10,
  loss: 1 / n,
  learningRate: 0.1,
  tokensPerSecond: 100,
  etaSeconds: 1,
  gradNorm: Number.NaN,
});
const started: TrainingEvent = {
  type: "started",
  tasks: ["t"],
  totalSteps: 10,
  totalEpochs: 2,
  trainExamples: { t: 8 },
  droppedExamples: { t: 1 },
  skippedRecords: 2,
  resumedFromStep: 0,
  notes: [],
};
const completed: TrainingEvent = {
  type: "completed",
  written: [{ task: "t", version: 1 }],
  metrics: {},
  steps: 10,
  earlyStopped: false,
};

function newJob(name = "run", extra: Partial<Parameters<JobStore["create"]>[0]> = {}) {
  return { name, tasks: ["t"], request: { name, n: 1 }, maxActive: 16, ...extra };
}

async function all(store: JobStore, id: string): Promise<JobEvent[]> {
  return await store.events(id, 0, 10_000);
}

/** `store`, except that renewing a lease fails as when the database is away. */
function unrenewable(store: JobStore): JobStore {
  return {
    get durable() {
      return store.durable;
    },
    get closed() {
      return store.closed;
    },
    create: (j) => store.create(j),
    claim: (o, ms) => store.claim(o, ms),
    renew: () => Promise.reject(new ServiceError("unavailable", "the database is away")),
    release: (id, o) => store.release(id, o),
    append: (id, o, e) => store.append(id, o, e),
    finish: (id, o, st, e) => store.finish(id, o, st, e),
    requestCancel: (id) => store.requestCancel(id),
    get: (id) => store.get(id),
    list: (n) => store.list(n),
    counts: () => store.counts(),
    events: (id, after, n) => store.events(id, after, n),
    saveCheckpoint: (id, o, f) => store.saveCheckpoint(id, o, f),
    loadCheckpoint: (id) => store.loadCheckpoint(id),
    forget: (keep, before) => store.forget(keep, before),
    onChange: (fn) => store.onChange(fn),
    onClaimable: (fn) => store.onClaimable(fn),
    close: () => store.close(),
  };
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await fn();
    if (v !== undefined) return v;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A runner over `store` whose work is `work`, with scratch work directories. */
async function runner(store: JobStore, work: JobWork, owner?: string) {
  const root = await Deno.makeTempDir({ prefix: "runner_" });
  const r = new JobRunner({
    store,
    work,
    workDir: (id) => `${root}/${id}`,
    leaseMs: LEASE_MS,
    keepFinished: 100,
    owner,
    failureReason: (e) => `reason: ${(e as Error).message}`,
  });
  r.start();
  return {
    runner: r,
    root,
    async close() {
      await r.close();
      await Deno.remove(root, { recursive: true });
    },
  };
}

const finished = (store: JobStore, id: string) =>
  until("the job to finish", async () => {
    const j = await store.get(id);
    return ["succeeded", "failed", "cancelled"].includes(j.state) ? j : undefined;
  });

for (const [kind, open] of KINDS) {
  const test = (name: string, fn: (o: Opened) => Promise<void>) =>
    Deno.test({
      name: `${kind}: ${name}`,
      ignore: kind === "PgJobStore" && pgTool.ignore,
      sanitizeResources: kind !== "PgJobStore",
      sanitizeOps: kind !== "PgJobStore",
    }, async () => {
      const o = await open();
      try {
        await fn(o);
      } finally {
        await o.close();
      }
    });

  // ---- The store ------------------------------------------------------------------------------

  test("create() stores a queued job with its queued event; get() and list() answer for it", async ({ store }) => {
    const { job, created } = await store.create(newJob("first"));
    assert(created);
    assertEquals(job.state, "queued");
    assertEquals(job.tasks, ["t"]);
    assertEquals(job.lastSequence, 1);
    const second = (await store.create(newJob("second"))).job;
    const events = await all(store, second.id);
    assertEquals(events.map((e) => [e.sequence, e.event]), [[1, { type: "queued", position: 1 }]]);
    assertEquals((await store.get(job.id)).name, "first");
    assertEquals((await store.list(10)).map((j) => j.name), ["second", "first"]);
    assertEquals((await store.list(1)).map((j) => j.name), ["second"]);
  });

  test("unknown and malformed ids are not_found everywhere", async ({ store }) => {
    for (const id of [crypto.randomUUID(), "../x", "x".repeat(200)]) {
      await assertRejects(() => store.get(id), ServiceError, "job_id: no job");
      await assertRejects(() => store.events(id, 0, 10), ServiceError, "job_id: no job");
      await assertRejects(() => store.requestCancel(id), ServiceError, "job_id: no job");
      await assertRejects(() => store.loadCheckpoint(id), ServiceError, "job_id: no job");
    }
  });

  test("create() refuses beyond maxActive naming the limit; finished jobs do not count", async ({ store }) => {
    const a = (await store.create(newJob("a", { maxActive: 2 }))).job;
    await store.create(newJob("b", { maxActive: 2 }));
    const e = await assertRejects(() => store.create(newJob("c", { maxActive: 2 })), ServiceError);
    assertEquals(e.kind, "resource_exhausted");
    assert(e.message.includes("max_queued_jobs 2"), e.message);
    await store.requestCancel(a.id);
    await store.create(newJob("c", { maxActive: 2 }));
  });

  test("a request id returns the first job to a retry, refuses another request, and a cancelled create stores nothing", async ({ store }) => {
    const requestId = crypto.randomUUID();
    const first = await store.create(newJob("r", { requestId, requestDigest: "d1" }));
    const again = await store.create(newJob("r", { requestId, requestDigest: "d1" }));
    assertEquals(again.created, false);
    assertEquals(again.job.id, first.job.id);
    assertEquals((await store.list(10)).length, 1);
    assertEquals((await all(store, first.job.id)).length, 1, "no second queued event");
    const e = await assertRejects(
      () => store.create(newJob("r", { requestId, requestDigest: "d2" })),
      ServiceError,
    );
    assertEquals(e.kind, "already_exists");
    assert(e.message.includes(requestId) && e.message.includes(first.job.id), e.message);
    // Concurrent retries of one new request make one job.
    const other = crypto.randomUUID();
    const racing = await Promise.all(
      Array.from({ length: 5 }, () => store.create(newJob("x", { requestId: other }))),
    );
    assertEquals(new Set(racing.map((r) => r.job.id)).size, 1);
    assertEquals(racing.filter((r) => r.created).length, 1);
    const gone = new AbortController();
    gone.abort(new DOMException("deadline exceeded", "AbortError"));
    await assertRejects(() => store.create(newJob("late", { signal: gone.signal })));
    assertEquals((await store.list(10)).map((j) => j.name).sort(), ["r", "x"]);
  });

  test("claim() takes the oldest job once; of claimants racing exactly one gets it", async ({ store }) => {
    assertEquals(await store.claim("a", LEASE_MS), null);
    const first = (await store.create(newJob("first"))).job;
    await store.create(newJob("second"));
    const claims = await Promise.all(["a", "b", "c", "d"].map((o) => store.claim(o, 60_000)));
    const got = claims.filter((c) => c !== null);
    assertEquals(got.length, 2, "two jobs, two claims");
    assertEquals(got.map((c) => c!.job.name).sort(), ["first", "second"]);
    const c = got.find((c) => c!.job.id === first.id)!;
    assertEquals(c.job.state, "running");
    assertEquals(c.attempt, 1);
    assertEquals(c.request, { name: "first", n: 1 });
    assert((await store.get(first.id)).startedAt instanceof Date);
    assertEquals(await store.claim("e", 60_000), null, "both held");
  });

  test("counts() tells jobs waiting for a runner (queued, or under a lease run out) from running ones", async ({ store }) => {
    assertEquals(await store.counts(), { waiting: 0, running: 0 });
    const a = (await store.create(newJob("a"))).job;
    const b = (await store.create(newJob("b"))).job;
    await store.create(newJob("c"));
    assertEquals(await store.counts(), { waiting: 3, running: 0 });
    await store.claim("r1", LEASE_MS); // a, under a short lease
    await store.claim("r2", 60_000); // b
    assertEquals(await store.counts(), { waiting: 1, running: 2 });
    await store.requestCancel(b.id); // cancelling: still held
    assertEquals(await store.counts(), { waiting: 1, running: 2 });
    // a's runner is gone: its job waits for another one.
    await sleep(LEASE_MS + 100);
    assertEquals(await store.counts(), { waiting: 2, running: 1 });
    await store.claim("r3", 60_000); // the oldest claimable: a again
    await store.finish(a.id, "r3", "succeeded", completed);
    await store.finish(b.id, "r2", "cancelled", {
      type: "cancelled",
      reason: "cancelled while running",
    });
    assertEquals(
      await store.counts(),
      { waiting: 1, running: 0 },
      "finished jobs count for nothing",
    );
  });

  test("append() numbers events in order and folds progress; it is fenced by the lease", async ({ store }) => {
    const { job } = await store.create(newJob());
    await store.claim("a", LEASE_MS);
    await store.append(job.id, "a", started);
    for (let i = 1; i <= 3; i++) await store.append(job.id, "a", step(i));
    const j = await store.get(job.id);
    assertEquals([j.step, j.totalSteps, j.totalEpochs, j.skippedRecords], [3, 10, 2, 2]);
    assertEquals(j.droppedExamples, { t: 1 });
    assertEquals(j.lastSequence, 5);
    assertEquals((await all(store, job.id)).map((e) => e.sequence), [1, 2, 3, 4, 5]);
    assertEquals((await store.events(job.id, 2, 2)).map((e) => e.sequence), [3, 4]);
    await assertRejects(() => store.append(job.id, "b", step(4)), LeaseLost);
    // The lease runs out and another runner takes the job: the first may write nothing more.
    await sleep(LEASE_MS + 100);
    const taken = await store.claim("b", LEASE_MS);
    assertEquals(taken?.job.id, job.id);
    assertEquals(taken?.attempt, 2);
    assertEquals(taken?.job.step, 3, "a takeover sees the progress so far");
    await assertRejects(() => store.append(job.id, "a", step(4)), LeaseLost);
    await assertRejects(() => store.renew(job.id, "a", LEASE_MS), LeaseLost);
    await assertRejects(() => store.saveCheckpoint(job.id, "a", new Map()), LeaseLost);
    await assertRejects(() => store.finish(job.id, "a", "succeeded", completed), LeaseLost);
    await store.append(job.id, "b", step(4));
    assertEquals((await store.get(job.id)).lastSequence, 6);
  });

  test("renew() keeps the lease past its length; release() hands the job over at once", async ({ store }) => {
    const { job } = await store.create(newJob());
    await store.claim("a", LEASE_MS);
    for (let i = 0; i < 3; i++) {
      await sleep(LEASE_MS / 2);
      assertEquals(await store.renew(job.id, "a", LEASE_MS), { cancelRequested: false });
    }
    assertEquals(await store.claim("b", LEASE_MS), null);
    await store.release(job.id, "a");
    const c = await store.claim("b", LEASE_MS);
    assertEquals(c?.job.id, job.id);
    assertEquals(c?.job.state, "running");
    await assertRejects(() => store.append(job.id, "a", step(1)), LeaseLost);
  });

  test("finish() writes the final state with the terminal event last and drops the checkpoint", async ({ store }) => {
    const { job } = await store.create(newJob());
    await store.claim("a", LEASE_MS);
    await store.saveCheckpoint(job.id, "a", new Map([["latest/state.json", Uint8Array.of(1)]]));
    const done = await store.finish(job.id, "a", "succeeded", completed);
    assertEquals(done.state, "succeeded");
    assert(done.finishedAt instanceof Date);
    assertEquals(done.written, [{ task: "t", version: 1 }]);
    const events = await all(store, job.id);
    assertEquals(events.at(-1)!.event, completed);
    assertEquals(done.lastSequence, events.at(-1)!.sequence);
    assertEquals((await store.loadCheckpoint(job.id)).size, 0);
    await assertRejects(() => store.append(job.id, "a", step(1)), LeaseLost);
    assertEquals(await store.claim("b", LEASE_MS), null);
    const failed = (await store.create(newJob("f"))).job;
    await store.claim("a", LEASE_MS);
    const f = await store.finish(failed.id, "a", "failed", { type: "failed", reason: "boom" });
    assertEquals([f.state, f.error], ["failed", "boom"]);
  });

  test("requestCancel(): a queued job ends at once; a running one is cancelling until its runner stops", async ({ store }) => {
    const queued = (await store.create(newJob("q"))).job;
    const c1 = await store.requestCancel(queued.id);
    assertEquals(c1.state, "cancelled");
    assertEquals((await all(store, queued.id)).at(-1)!.event, {
      type: "cancelled",
      reason: "cancelled before it started",
    });
    assertEquals((await store.requestCancel(queued.id)).state, "cancelled", "finished: unchanged");
    const running = (await store.create(newJob("r"))).job;
    await store.claim("a", LEASE_MS);
    assertEquals((await store.requestCancel(running.id)).state, "cancelling");
    assertEquals(await store.renew(running.id, "a", LEASE_MS), { cancelRequested: true });
    // Its runner dies: whoever takes the job next is told to end it cancelled.
    await sleep(LEASE_MS + 100);
    const c = await store.claim("b", LEASE_MS);
    assertEquals([c?.job.id, c?.cancelRequested, c?.job.state], [running.id, true, "cancelling"]);
  });

  test("checkpoints are replaced whole and read back byte for byte", async ({ store }) => {
    const { job } = await store.create(newJob());
    assertEquals((await store.loadCheckpoint(job.id)).size, 0);
    await store.claim("a", LEASE_MS);
    const big = new Uint8Array(300_000).map((_, i) => i % 251);
    await store.saveCheckpoint(
      job.id,
      "a",
      new Map([["a.bin", big], ["sub/b.json", Uint8Array.of(7)]]),
    );
    await store.saveCheckpoint(
      job.id,
      "a",
      new Map([["a.bin", big], ["sub/c.json", Uint8Array.of(8)]]),
    );
    const got = await store.loadCheckpoint(job.id);
    assertEquals([...got.keys()].sort(), ["a.bin", "sub/c.json"]);
    assertEquals(got.get("a.bin"), big);
    assertEquals(got.get("sub/c.json"), Uint8Array.of(8));
  });

  test("forget() drops finished jobs beyond the newest kept or older than the cutoff, nothing else", async ({ store }) => {
    const ids: string[] = [];
    for (const name of ["a", "b", "c"]) {
      const { job } = await store.create(newJob(name));
      await store.requestCancel(job.id);
      ids.push(job.id);
      await sleep(5);
    }
    const live = (await store.create(newJob("live"))).job;
    assertEquals((await store.forget(2, new Date(0))).sort(), [ids[0]]);
    await assertRejects(() => store.get(ids[0]), ServiceError, "no job");
    assertEquals(
      (await store.forget(100, new Date(Date.now() + 1000))).sort(),
      ids.slice(1).sort(),
    );
    assertEquals((await store.get(live.id)).state, "queued");
  });

  test("onChange() hears appends and state changes; onClaimable() hears creations and releases", async ({ store }) => {
    const changes: (string | null)[] = [];
    let claimable = 0;
    const off1 = store.onChange((id) => changes.push(id));
    const off2 = store.onClaimable(() => claimable++);
    const { job } = await store.create(newJob());
    await until("claimable", () => Promise.resolve(claimable > 0 ? true : undefined));
    await store.claim("a", LEASE_MS);
    await store.append(job.id, "a", step(1));
    await until("a change", () => Promise.resolve(changes.includes(job.id) ? true : undefined));
    const before = claimable;
    await store.release(job.id, "a");
    await until("claimable again", () => Promise.resolve(claimable > before ? true : undefined));
    off1();
    off2();
  });

  test("watchEvents() gives what is stored, then live events to the terminal one; a reconnect gets exactly the rest", async ({ store }) => {
    const { job } = await store.create(newJob());
    await store.claim("a", LEASE_MS);
    await store.append(job.id, "a", started);
    const seen: number[] = [];
    const watching = (async () => {
      for await (const ev of watchEvents(store, job.id, 0)) seen.push(ev.sequence);
    })();
    for (let i = 1; i <= 3; i++) {
      await store.append(job.id, "a", step(i));
      await sleep(10);
    }
    await store.finish(job.id, "a", "succeeded", completed);
    await watching;
    assertEquals(seen, [1, 2, 3, 4, 5, 6]);
    const rest: number[] = [];
    for await (const ev of watchEvents(store, job.id, 3)) rest.push(ev.sequence);
    assertEquals(rest, [4, 5, 6]);
    const none: number[] = [];
    for await (const ev of watchEvents(store, job.id, 6)) none.push(ev.sequence);
    assertEquals(none, []);
    await assertRejects(
      async () => {
        for await (const _ of watchEvents(store, job.id, -1)) { /* refused */ }
      },
      ServiceError,
      "after_sequence",
    );
  });

  test("a watcher of an unfinished job ends when its signal aborts or the store closes", async ({ store }) => {
    const { job } = await store.create(newJob());
    const stop = new AbortController();
    const seen: number[] = [];
    const watching = (async () => {
      for await (const ev of watchEvents(store, job.id, 0, stop.signal)) seen.push(ev.sequence);
    })();
    await until("the queued event", () => Promise.resolve(seen.length === 1 ? true : undefined));
    stop.abort();
    await watching;
    const second = (async () => {
      for await (const _ of watchEvents(store, job.id, 1)) { /* none before close */ }
    })();
    await sleep(50);
    await store.close();
    await second;
  });

  // ---- The runner -----------------------------------------------------------------------------

  test("the runner runs a job once: its events in order, then succeeded with its completed event", async ({ store }) => {
    const ran: string[] = [];
    const r = await runner(store, async (request, job, emit) => {
      ran.push(`${job.id}:${(request as { name: string }).name}`);
      emit(started);
      for (let i = 1; i <= 3; i++) emit(step(i));
      await sleep(10);
      emit(completed);
    });
    try {
      const { job } = await store.create(newJob("once"));
      const done = await finished(store, job.id);
      assertEquals(done.state, "succeeded");
      assertEquals(ran, [`${job.id}:once`]);
      assertEquals((await all(store, job.id)).map((e) => e.event.type), [
        "queued",
        "started",
        "step",
        "step",
        "step",
        "completed",
      ]);
    } finally {
      await r.close();
    }
  });

  test("the runner decides the outcome: a throw fails with its reason, no completed event fails, a cancel cancels", async ({ store }) => {
    const r = await runner(store, async (request, _job, emit, signal) => {
      const what = (request as { name: string }).name;
      emit(started);
      if (what === "throws") throw new Error("out of tokens");
      if (what === "quiet") return;
      // "long": runs until cancelled; its own terminal events are not recorded.
      emit({ type: "failed", reason: "the work's own word" });
      while (!signal.aborted) {
        emit(step(1));
        await sleep(20);
      }
      signal.throwIfAborted();
    });
    try {
      const a = (await store.create(newJob("throws"))).job;
      assertEquals((await finished(store, a.id)).error, "reason: out of tokens");
      const b = (await store.create(newJob("quiet"))).job;
      const quiet = await finished(store, b.id);
      assertEquals(quiet.state, "failed");
      assertEquals(quiet.error, "reason: the job's work returned without a completed event");
      const c = (await store.create(newJob("long"))).job;
      await until("a step", async () => (await store.get(c.id)).step > 0 ? true : undefined);
      await store.requestCancel(c.id);
      const end = await finished(store, c.id);
      assertEquals(end.state, "cancelled");
      const events = await all(store, c.id);
      assertEquals(events.at(-1)!.event, { type: "cancelled", reason: "cancelled while running" });
      assert(!events.some((e) => e.event.type === "failed"), "the work's failed event is not kept");
    } finally {
      await r.close();
    }
  });

  test("a runner closing releases its job; the next runner resumes it from its checkpoint", async ({ store }) => {
    const work = (name: string): JobWork => async (_req, job, emit, signal) => {
      const dir = `${rootOf.get(name)}/${job.id}`;
      let from = 0;
      try {
        from = JSON.parse(await Deno.readTextFile(`${dir}/latest/state.json`)).step;
      } catch { /* a fresh start */ }
      emit({ ...started, resumedFromStep: from } as TrainingEvent);
      for (let s = from + 1; s <= 50; s++) {
        signal.throwIfAborted();
        emit(step(s));
        if (s % 5 === 0) {
          await Deno.mkdir(`${dir}/latest`, { recursive: true });
          await Deno.writeTextFile(`${dir}/latest/state.json`, JSON.stringify({ step: s }));
          emit({ type: "checkpoint", step: s, kind: "latest" });
        }
        await sleep(10);
      }
      emit(completed);
    };
    const rootOf = new Map<string, string>();
    const first = await runner(store, work("first"), "first");
    rootOf.set("first", first.root);
    const { job } = await store.create(newJob("resumable"));
    await until(
      "a checkpoint",
      async () =>
        (await all(store, job.id)).some((e) => e.event.type === "checkpoint") ? true : undefined,
    );
    await first.close();
    const held = await store.get(job.id);
    if (!store.durable) {
      // Nobody could resume a job of a store that ends with its process: it is cancelled.
      assertEquals(held.state, "cancelled");
      return;
    }
    assertEquals(held.state, "running", "released, not finished");
    const second = await runner(store, work("second"), "second");
    rootOf.set("second", second.root);
    try {
      const done = await finished(store, job.id);
      assertEquals(done.state, "succeeded");
      const events = await all(store, job.id);
      assertEquals(events.map((e) => e.sequence), events.map((_, i) => i + 1), "no gap, no repeat");
      const starts = events.filter((e) => e.event.type === "started");
      assertEquals(starts.length, 2);
      const resumed = starts[1].event.type === "started" ? starts[1].event.resumedFromStep : -1;
      assert(resumed >= 5 && resumed % 5 === 0, `resumed from step ${resumed}`);
    } finally {
      await second.close();
    }
  });

  test("a runner whose lease is lost stops writing; the runner that took over finishes the job", async ({ store }) => {
    // The first runner cannot renew (its database is away) and its work ignores the signal for
    // a while, as a paused replica's would.
    let resume = () => {};
    const paused = new Promise<void>((r) => (resume = r));
    const first = await runner(unrenewable(store), async (_req, _job, emit) => {
      emit(started);
      await paused;
      emit(step(99));
      emit(completed);
    }, "paused");
    const { job } = await store.create(newJob());
    await until(
      "started",
      async () => (await store.get(job.id)).lastSequence >= 2 ? true : undefined,
    );
    const second = await runner(store, (_req, _job, emit) => {
      emit(started);
      emit(step(1));
      emit(completed);
      return Promise.resolve();
    }, "second");
    try {
      const done = await finished(store, job.id);
      assertEquals(done.state, "succeeded");
      resume();
      await first.close();
      const events = await all(store, job.id);
      assert(!events.some((e) => e.event.type === "step" && e.event.step === 99), "fenced");
      assertEquals(events.filter((e) => e.event.type === "completed").length, 1);
      assertEquals(events.map((e) => e.sequence), events.map((_, i) => i + 1));
    } finally {
      resume();
      await second.close();
    }
  });

  // ---- Across a restart -----------------------------------------------------------------------

  if (kind !== "MemoryJobStore") {
    test("a reopened store holds the same jobs, events, checkpoints and request ids", async (o) => {
      const { store } = o;
      const requestId = crypto.randomUUID();
      const { job } = await store.create(newJob("kept", { requestId, requestDigest: "d" }));
      await store.claim("a", 60_000);
      await store.append(job.id, "a", started);
      await store.append(job.id, "a", step(2));
      await store.saveCheckpoint(job.id, "a", new Map([["latest/x", Uint8Array.of(4, 2)]]));
      const done = (await store.create(newJob("done"))).job;
      await store.requestCancel(done.id);
      const again = await o.reopen!();
      const j = await again.get(job.id);
      assertEquals([j.state, j.step, j.lastSequence], ["running", 2, 3]);
      assertEquals((await again.events(job.id, 0, 100)).map((e) => e.event.type), [
        "queued",
        "started",
        "step",
      ]);
      assertEquals((await again.loadCheckpoint(job.id)).get("latest/x"), Uint8Array.of(4, 2));
      assertEquals((await again.get(done.id)).state, "cancelled");
      const retry = await again.create(newJob("kept", { requestId, requestDigest: "d" }));
      assertEquals([retry.job.id, retry.created], [job.id, false]);
    });
  }
}

// ---- The disk store's files -----------------------------------------------------------------------

Deno.test("DiskJobStore: a torn last event line is dropped; a terminal event the record missed finishes the job", async () => {
  const dir = await Deno.makeTempDir({ prefix: "jobs_disk_" });
  try {
    const store = await DiskJobStore.open(dir);
    const { job } = await store.create(newJob());
    await store.claim("a", 60_000);
    await store.append(job.id, "a", started);
    await store.close();
    // A crash mid-append leaves half a line.
    await Deno.writeTextFile(`${dir}/${job.id}.events.jsonl`, '{"sequence":3,"jo', {
      append: true,
    });
    let again = await DiskJobStore.open(dir);
    assertEquals((await again.get(job.id)).lastSequence, 2);
    assertEquals((await again.events(job.id, 0, 10)).length, 2);
    await again.close();
    // A crash after the terminal event was kept and before the record said finished.
    const lines = (await Deno.readTextFile(`${dir}/${job.id}.events.jsonl`)).split("\n").slice(
      0,
      2,
    );
    const end: JobEvent = { sequence: 3, jobId: job.id, time: new Date(), event: completed };
    await Deno.writeTextFile(
      `${dir}/${job.id}.events.jsonl`,
      [...lines, JSON.stringify(end)].join("\n") + "\n",
    );
    again = await DiskJobStore.open(dir);
    const j: Job = await again.get(job.id);
    assertEquals([j.state, j.written], ["succeeded", [{ task: "t", version: 1 }]]);
    assertEquals(await again.claim("b", 60_000), null);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DiskJobStore: reads the journal of earlier versions (format 1), an unreadable record is skipped and logged", async () => {
  const dir = await Deno.makeTempDir({ prefix: "jobs_disk_" });
  try {
    const id = crypto.randomUUID();
    await Deno.writeTextFile(
      `${dir}/${id}.json`,
      JSON.stringify({
        format: 1,
        job: {
          id,
          name: "old",
          state: "running",
          tasks: ["t"],
          createdAt: new Date().toISOString(),
          step: 0,
          totalSteps: 0,
          epoch: 0,
          totalEpochs: 0,
          droppedExamples: {},
          skippedRecords: 0,
          written: [],
          lastSequence: 1,
        },
        request: { config: "x" },
        order: 1,
      }),
    );
    await Deno.writeTextFile(
      `${dir}/${id}.events.jsonl`,
      JSON.stringify({
        sequence: 1,
        jobId: id,
        time: new Date(),
        event: { type: "queued", position: 0 },
      }) +
        "\n",
    );
    await Deno.writeTextFile(`${dir}/${crypto.randomUUID()}.json`, "{ not json");
    const logged: string[] = [];
    const store = await DiskJobStore.open(dir, (msg) => logged.push(msg));
    assertEquals(logged, ["job store: unreadable record skipped"]);
    const c = await store.claim("new", 60_000);
    assertEquals([c?.job.id, c?.job.name, c?.request], [id, "old", { config: "x" }]);
    await store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
