import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { type JobEvent, JobQueue, JobQueueFullError } from "./jobs.ts";

type Ev = { kind: string; n?: number; reason?: string };

function queue(maxQueued = 4) {
  return new JobQueue<Ev>({
    maxQueued,
    lifecycle: {
      queued: (n) => ({ kind: "queued", n }),
      started: () => ({ kind: "started" }),
      failed: (reason) => ({ kind: "failed", reason }),
      cancelled: () => ({ kind: "cancelled" }),
    },
  });
}

/** A job that emits `n` steps, each after the test releases it. */
function gated(n: number) {
  const gates: (() => void)[] = [];
  const work = async (emit: (p: Ev) => void, signal: AbortSignal) => {
    for (let i = 1; i <= n; i++) {
      await new Promise<void>((r) => gates.push(r));
      signal.throwIfAborted();
      emit({ kind: "step", n: i });
    }
  };
  const release = async () => {
    while (gates.length === 0) await Promise.resolve();
    gates.shift()!();
    for (let i = 0; i < 5; i++) await Promise.resolve();
  };
  return { work, release };
}

async function collect(it: AsyncIterable<JobEvent<Ev>>): Promise<JobEvent<Ev>[]> {
  const out: JobEvent<Ev>[] = [];
  for await (const e of it) out.push(e);
  return out;
}

Deno.test("JobQueue.watch() after a reconnect yields exactly the events after the last seen", async () => {
  const q = queue();
  const g = gated(4);
  const job = q.submit("a", g.work);
  const all = collect(q.watch(job.id));
  await g.release();
  await g.release();
  // A watcher that saw up to sequence 3 (queued, started, step 1) reconnects.
  const rest = collect(q.watch(job.id, 3));
  await g.release();
  await g.release();
  await q.drained();
  const everything = await all;
  assertEquals(everything.map((e) => e.sequence), [1, 2, 3, 4, 5, 6]);
  assertEquals(everything.map((e) => e.payload.kind), [
    "queued",
    "started",
    "step",
    "step",
    "step",
    "step",
  ]);
  assertEquals((await rest).map((e) => e.sequence), [4, 5, 6]);
  assertEquals(q.get(job.id)!.state, "completed");
  // A finished job still replays for late subscribers.
  assertEquals((await collect(q.watch(job.id, 5))).map((e) => e.sequence), [6]);
});

Deno.test("JobQueue runs one job at a time and cancels queued and running jobs", async () => {
  const q = queue();
  const a = gated(3), b = gated(1);
  const ja = q.submit("a", a.work);
  const jb = q.submit("b", b.work);
  assertEquals(q.get(jb.id)!.state, "queued");
  await a.release();
  assert(q.cancel(ja.id));
  await a.release();
  await b.release();
  await q.drained();
  assertEquals(q.get(ja.id)!.state, "cancelled");
  assertEquals(q.get(jb.id)!.state, "completed");
  const kinds = (await collect(q.watch(ja.id))).map((e) => e.payload.kind);
  assertEquals(kinds, ["queued", "started", "step", "cancelled"]);
  assertEquals(q.cancel(ja.id), false);
});

Deno.test("JobQueue reports a failing job's reason as its last event", async () => {
  const q = queue();
  const j = q.submit(
    "bad",
    () => Promise.reject(new RangeError('data/x.jsonl:3: field "label" is missing')),
  );
  await q.drained();
  const evs = await collect(q.watch(j.id));
  assertEquals(evs.at(-1)!.payload, {
    kind: "failed",
    reason: 'data/x.jsonl:3: field "label" is missing',
  });
  assertEquals(q.get(j.id)!.error, 'data/x.jsonl:3: field "label" is missing');
});

Deno.test("JobQueue.submit() refuses beyond its limit with a reason", () => {
  const q = queue(2);
  const g = gated(1);
  q.submit("a", g.work);
  q.submit("b", g.work);
  assertThrows(() => q.submit("c", g.work), JobQueueFullError, "limit 2");
  q.cancelAll();
});
