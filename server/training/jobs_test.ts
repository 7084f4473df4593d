import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { ServiceError } from "../errors.ts";
import type { JobEvent, TrainingEvent } from "./events.ts";
import { JobQueue, type JobWork } from "./jobs.ts";

const STARTED: TrainingEvent = {
  type: "started",
  tasks: ["t"],
  totalSteps: 4,
  totalEpochs: 2,
  trainExamples: { t: 8 },
  droppedExamples: { t: 3 },
  skippedRecords: 1,
  resumedFromStep: 0,
  notes: [],
};

function stepEvent(step: number): TrainingEvent {
  return {
    type: "step",
    step,
    epoch: Math.floor((step - 1) / 2),
    totalSteps: 4,
    loss: 1 / step,
    learningRate: 0.1,
    tokensPerSecond: 100,
    etaSeconds: 1,
    gradNorm: NaN,
  };
}

const COMPLETED: TrainingEvent = {
  type: "completed",
  written: [{ task: "t", version: 1 }],
  metrics: {},
  steps: 4,
  earlyStopped: false,
};

/** A job that announces itself, then emits `n` steps, each after the test releases it. */
function gated(n: number) {
  const gates: (() => void)[] = [];
  const work: JobWork = async (emit, signal) => {
    emit(STARTED);
    for (let i = 1; i <= n; i++) {
      await new Promise<void>((r) => gates.push(r));
      signal.throwIfAborted();
      emit(stepEvent(i));
    }
    emit(COMPLETED);
  };
  const release = async () => {
    while (gates.length === 0) await new Promise((r) => setTimeout(r, 0));
    gates.shift()!();
    for (let i = 0; i < 5; i++) await Promise.resolve();
  };
  return { work, release };
}

async function collect(it: AsyncIterable<JobEvent>): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

Deno.test("JobQueue.watch() after a reconnect yields exactly the events after the last seen", async () => {
  const q = new JobQueue();
  const g = gated(4);
  const job = q.submit("a", ["t"], g.work);
  const all = collect(q.watch(job.id));
  await g.release();
  await g.release();
  // A watcher that saw up to sequence 3 (queued, started, step 1) reconnects.
  const rest = collect(q.watch(job.id, 3));
  await g.release();
  await g.release();
  await q.drained();
  const everything = await all;
  assertEquals(everything.map((e) => e.sequence), [1, 2, 3, 4, 5, 6, 7]);
  assertEquals(everything.map((e) => e.event.type), [
    "queued",
    "started",
    "step",
    "step",
    "step",
    "step",
    "completed",
  ]);
  assertEquals((await rest).map((e) => e.sequence), [4, 5, 6, 7]);
  assertEquals(q.get(job.id).state, "succeeded");
  // A finished job still replays for late subscribers.
  assertEquals((await collect(q.watch(job.id, 6))).map((e) => e.sequence), [7]);
});

Deno.test("A job's progress is folded from its own events: step, epochs, dropped, written", async () => {
  const q = new JobQueue();
  const g = gated(3);
  const job = q.submit("a", ["t"], g.work);
  await g.release();
  await g.release();
  const mid = q.get(job.id);
  assertEquals(
    [mid.state, mid.step, mid.totalSteps, mid.epoch, mid.totalEpochs, mid.lastSequence],
    ["running", 2, 4, 0, 2, 4],
  );
  assertEquals([mid.droppedExamples, mid.skippedRecords], [{ t: 3 }, 1]);
  await g.release();
  await q.drained();
  const done = q.get(job.id);
  assertEquals([done.state, done.step, done.epoch], ["succeeded", 3, 1]);
  assertEquals(done.written, [{ task: "t", version: 1 }]);
});

Deno.test("CancelJob answers the state after the request: cancelling while running, then cancelled", async () => {
  const q = new JobQueue();
  const a = gated(3), b = gated(1);
  const ja = q.submit("a", ["t"], a.work);
  const jb = q.submit("b", ["t"], b.work);
  assertEquals(q.get(jb.id).state, "queued");
  await a.release();
  assertEquals(q.cancel(ja.id).state, "cancelling");
  assertEquals(q.get(ja.id).state, "cancelling");
  await a.release();
  await b.release();
  await q.drained();
  assertEquals(q.get(ja.id).state, "cancelled");
  assertEquals(q.get(jb.id).state, "succeeded");
  const kinds = (await collect(q.watch(ja.id))).map((e) => e.event.type);
  // Finished: its step events are gone, the summary stays.
  assertEquals(kinds, ["queued", "started", "cancelled"]);
  // A finished job is answered as it is.
  assertEquals(q.cancel(ja.id).state, "cancelled");
  assertEquals(q.cancel(jb.id).state, "succeeded");
});

Deno.test("A queued job is cancelled at once; the queue position counts the running job", async () => {
  const q = new JobQueue();
  const a = gated(1), b = gated(1);
  q.submit("a", ["t"], a.work);
  const jb = q.submit("b", ["t"], b.work);
  const first = (await collect(q.watch(jb.id, 0, AbortSignal.timeout(50)))).map((e) => e.event);
  assertEquals(first[0], { type: "queued", position: 1 });
  assertEquals(q.cancel(jb.id).state, "cancelled");
  await a.release();
  await q.drained();
});

Deno.test("JobQueue reports a failing job's reason as its last event", async () => {
  const q = new JobQueue();
  const j = q.submit(
    "bad",
    ["t"],
    () =>
      Promise.reject(
        new ServiceError("invalid_argument", 'data/x.jsonl:3: field "label" is missing'),
      ),
  );
  await q.drained();
  const evs = await collect(q.watch(j.id));
  assertEquals(evs.at(-1)!.event, {
    type: "failed",
    reason: 'data/x.jsonl:3: field "label" is missing',
  });
  assertEquals(q.get(j.id).error, 'data/x.jsonl:3: field "label" is missing');
  assertEquals(q.get(j.id).state, "failed");
});

Deno.test("Work that returns without a completed event fails instead of passing as succeeded", async () => {
  const q = new JobQueue();
  const j = q.submit("quiet", ["t"], () => Promise.resolve());
  await q.drained();
  assertEquals(q.get(j.id).state, "failed");
});

Deno.test("JobQueue.submit() refuses beyond its limit (resource_exhausted naming it); unknown ids are not_found", () => {
  const q = new JobQueue({ maxQueued: 2 });
  const g = gated(1);
  q.submit("a", ["t"], g.work);
  q.submit("b", ["t"], g.work);
  const e = assertThrows(() => q.submit("c", ["t"], g.work), ServiceError, "max_queued_jobs 2");
  assertEquals([e.kind, e.limit], ["resource_exhausted", "max_queued_jobs"]);
  const nf = assertThrows(() => q.get("nope"), ServiceError, 'job_id: no job "nope"');
  assert(nf.kind === "not_found");
  q.cancelAll();
});

Deno.test("A finished job keeps its summary, not its step events; a running one keeps at most maxEventsPerJob", async () => {
  const q = new JobQueue({ maxEventsPerJob: 5 });
  const g = gated(6);
  const job = q.submit("a", ["t"], g.work);
  for (let i = 0; i < 4; i++) await g.release();
  // queued, started, steps 1-4: six events, the oldest step dropped to keep five.
  const running = await collect(q.watch(job.id, 0, AbortSignal.timeout(20)));
  assertEquals(running.map((e) => e.sequence), [1, 2, 4, 5, 6]);
  await g.release();
  await g.release();
  await q.drained();
  const done = await collect(q.watch(job.id));
  assertEquals(done.map((e) => e.event.type), ["queued", "started", "completed"]);
  assertEquals(done.map((e) => e.sequence), [1, 2, 9]);
  // A watcher resuming after a dropped step gets what follows it, in order.
  assertEquals((await collect(q.watch(job.id, 4))).map((e) => e.sequence), [9]);
  assertEquals(q.get(job.id).lastSequence, 9);
});

Deno.test("Finished jobs are forgotten past keepFinished or keepFinishedMs", async () => {
  let now = 1_000_000;
  const q = new JobQueue({ keepFinished: 2, keepFinishedMs: 60_000, now: () => now });
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const g = gated(0);
    ids.push(q.submit(`j${i}`, ["t"], g.work).id);
    await q.drained();
  }
  assertEquals(q.list().map((j) => j.id), [ids[2], ids[1]]);
  now += 61_000;
  assertEquals(q.list(), []);
  assertThrows(() => q.get(ids[2]), ServiceError, "no job");
});

Deno.test("with a journal, a suspended job is taken back by the next queue: its events numbered on, its progress kept; a cancelling one ends cancelled", async () => {
  const { JobJournal } = await import("./job_journal.ts");
  const dir = await Deno.makeTempDir({ prefix: "journal-" });
  try {
    const quiet = () => {};
    const first = new JobQueue({ journal: new JobJournal(dir, quiet) });
    const hang: JobWork = async (emit, signal) => {
      emit(STARTED);
      emit(stepEvent(1));
      await new Promise((_, reject) =>
        signal.addEventListener("abort", () => reject(signal.reason))
      );
    };
    const running = first.submit("run", ["t"], hang, { config: "a" });
    const queued = first.submit("next", ["t"], hang, { config: "b" });
    while (first.get(running.id).step < 1) await new Promise((r) => setTimeout(r, 5));
    await first.suspendAll();
    assertEquals(first.get(running.id).state, "running", "suspended, not cancelled");

    const journal = new JobJournal(dir, quiet);
    const loaded = await journal.load();
    assertEquals(loaded.map((j) => j.request), [{ config: "a" }, { config: "b" }]);
    const second = new JobQueue({ journal });
    const finish: JobWork = (emit) => {
      emit({ ...STARTED, resumedFromStep: 1 });
      emit(COMPLETED);
      return Promise.resolve();
    };
    for (const j of loaded) second.restore(j.job, j.events, finish);
    assertEquals(second.get(running.id).step, 1, "progress folded from the kept events");
    await second.drained();
    const seqs: number[] = [];
    for await (const ev of second.watch(running.id, 0)) seqs.push(ev.sequence);
    assertEquals(second.get(running.id).state, "succeeded");
    assertEquals(second.get(queued.id).state, "succeeded");
    // queued, started, step (first process); started, completed (second): no gap, no repeat.
    assertEquals(seqs, [1, 2, 4, 5], "steps of a finished job are compacted; numbers kept");

    // A job whose cancel was asked for before the restart is not run again.
    const journal3 = new JobJournal(dir, quiet);
    const third = new JobQueue({ journal: journal3 });
    const job = { ...second.get(queued.id), state: "cancelling" as const };
    third.restore(job, [], finish);
    assertEquals(third.get(queued.id).state, "cancelled");
    await journal.flushed();
    await journal3.flushed();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
