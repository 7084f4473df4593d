import assert from "node:assert/strict";
import { FAKE_CONFIG, fakeDecode, FakeEngine, type FakeEngineOptions } from "./_fake_engine.ts";
import { ServiceError } from "../errors.ts";
import type { GenerationOptions } from "./generation_options.ts";
import { Prng } from "../model/decoding/prng.ts";
import { PromptSlots } from "./prompt_slots.ts";
import {
  type FinishedStats,
  type GenerateRequest,
  type GenerationResult,
  Scheduler,
  type SchedulerLimits,
  type StepStats,
} from "./scheduler.ts";

const V = FAKE_CONFIG.vocabSize, C = FAKE_CONFIG.nEmbd;

interface SetupOptions extends FakeEngineOptions {
  limits?: Partial<SchedulerLimits>;
  autoRun?: boolean;
  eosId?: number;
  onStep?: (s: StepStats) => void;
  onFinished?: (s: FinishedStats) => void;
  prefixCacheRows?: number;
  /** The scheduler's clock. Default: every reading 10 ms later than the last. */
  now?: () => number;
}

function setup(opts: SetupOptions = {}) {
  const engine = new FakeEngine(opts);
  const slots = new PromptSlots({
    vocabSize: V,
    hidden: C,
    wte: engine.wte,
    maxSlots: 4,
    maxVirtualTokens: 8,
  });
  let clock = 0;
  const yields = { count: 0 };
  const scheduler = new Scheduler({
    engine,
    embedder: slots,
    decode: fakeDecode,
    limits: opts.limits,
    autoRun: opts.autoRun ?? false,
    eosId: opts.eosId ?? -1, // no EOS unless a test asks: outputs run to their length
    now: opts.now ?? (() => (clock += 10)),
    yieldToEventLoop: () => {
      yields.count++;
      return Promise.resolve();
    },
    onStep: opts.onStep,
    onFinished: opts.onFinished,
    randomSeed: () => 99,
    prefixCacheRows: opts.prefixCacheRows,
  });
  return { engine, slots, scheduler, yields };
}

/** Steps until nothing is left. */
async function drain(s: Scheduler): Promise<void> {
  while (await s.step());
}

/** Three tasks with 2, 5 and 8 virtual tokens and random tables. */
function tasks(slots: PromptSlots) {
  const rng = new Prng(3);
  return [2, 5, 8].map((n, i) => {
    const table = Float32Array.from({ length: n * C }, () => rng.next() - 0.5);
    return slots.acquire({ name: `t${i}`, version: 1, totalVirtualTokens: n, table });
  });
}

/** A prompt of task `t`: its virtual tokens, then `words` (task-relative ids). */
function prompt(n: number, words: number[]): number[] {
  return [...Array.from({ length: n }, (_, k) => V + k), ...words];
}

function counter() {
  let n = 0;
  return {
    onDone: () => void n++,
    get count() {
      return n;
    },
  };
}

async function assertRejects(
  p: Promise<unknown>,
  kind: string,
  includes: string,
): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ServiceError, `expected a ServiceError, got ${e}`);
    assert.equal(e.kind, kind, e.message);
    assert.ok(e.message.includes(includes), e.message);
    return e;
  }
  assert.fail("expected a rejection");
}

const WORDS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15], [16, 17]];

Deno.test("a greedy result is the same alone and in a mixed batch of tasks with different virtual counts", async () => {
  const options: GenerationOptions = { maxNewTokens: 6 };
  const alone: GenerationResult[] = [];
  for (let i = 0; i < 6; i++) {
    const { slots, scheduler } = setup();
    const lease = tasks(slots)[i % 3];
    const p = scheduler.submit({
      promptIds: lease.toGlobalIds(prompt(lease.virtualTokens, WORDS[i % 5])),
      options,
    });
    await drain(scheduler);
    alone.push(await p);
  }
  // Mixed, and staggered: some join while others are decoding.
  const { slots, scheduler, engine } = setup({ limits: { maxBatchSize: 4 } });
  const leases = tasks(slots);
  const submit = (i: number) =>
    scheduler.submit({
      promptIds: leases[i % 3].toGlobalIds(prompt(leases[i % 3].virtualTokens, WORDS[i % 5])),
      options,
    });
  const mixed = [submit(0), submit(1), submit(2)];
  await scheduler.step();
  await scheduler.step();
  mixed.push(submit(3), submit(4), submit(5));
  await drain(scheduler);
  assert.deepEqual(await Promise.all(mixed), alone);
  assert.ok(engine.calls.some((c) => c.seqs.length === 4), "some step ran four sequences together");
});

Deno.test("a seeded sampled result is the same alone and in a batch", async () => {
  const options: GenerationOptions = {
    maxNewTokens: 8,
    doSample: true,
    seed: 5,
    topK: 10,
    temperature: 0.8,
  };
  const one = setup();
  const pa = one.scheduler.submit({ promptIds: Int32Array.from([1, 2, 3]), options });
  await drain(one.scheduler);
  const many = setup();
  const others = [0, 1, 2].map((s) =>
    many.scheduler.submit({
      promptIds: Int32Array.from([1, 2, 3]),
      options: { ...options, seed: 100 + s },
    })
  );
  const pb = many.scheduler.submit({ promptIds: Int32Array.from([1, 2, 3]), options });
  await drain(many.scheduler);
  await Promise.all(others);
  assert.deepEqual(await pb, await pa);
});

Deno.test("a finished request reports its time to first token and time per output token", async () => {
  let clock = 0;
  const finished: FinishedStats[] = [];
  const { scheduler } = setup({ now: () => clock, onFinished: (s) => finished.push(s) });
  clock = 5;
  const a = scheduler.submit({
    promptIds: Int32Array.from([1, 2, 3]),
    options: { maxNewTokens: 3 },
  });
  clock = 20; // queued 15 ms before its first step
  await scheduler.step(); // prefill: first token at 20
  const b = scheduler.submit({ promptIds: Int32Array.from([4, 5]), options: { maxNewTokens: 1 } });
  clock = 30;
  await scheduler.step(); // a's second token at 30; b's first (and only) at 30
  clock = 60;
  await scheduler.step(); // a's third token at 60
  await Promise.all([a, b]);
  assert.deepEqual(finished, [
    {
      finishReason: "length",
      promptTokens: 2,
      generatedTokens: 1,
      timeToFirstTokenMs: 10,
    },
    {
      finishReason: "length",
      promptTokens: 3,
      generatedTokens: 3,
      timeToFirstTokenMs: 15,
      timePerOutputTokenMs: 20, // (60 - 20) / 2
    },
  ]);
});

Deno.test("prefill and decode rows go to the engine in one call, with one logit row per sequence", async () => {
  const { scheduler, engine } = setup();
  const a = scheduler.submit({
    promptIds: Int32Array.from([1, 2, 3]),
    options: { maxNewTokens: 3 },
  });
  await scheduler.step();
  const b = scheduler.submit({
    promptIds: Int32Array.from([4, 5, 6, 7]),
    options: { maxNewTokens: 2 },
  });
  await scheduler.step();
  const call = engine.calls[1];
  assert.deepEqual(call.seqs.map((s) => s.length), [1, 4]);
  assert.deepEqual([...call.logitRows], [0, 4]);
  assert.equal(call.seqs[0].cache!.length, 4); // 3 prompt rows + the decode row
  await drain(scheduler);
  assert.equal((await a).tokenIds.length, 3);
  assert.equal((await b).finishReason, "length");
  assert.equal(engine.calls.length, 3);
});

Deno.test("admission respects max batch size and max tokens per step, first come first served", async () => {
  const { scheduler, engine } = setup({
    limits: { maxBatchSize: 2, maxTokensPerStep: 10, maxPromptLength: 8 },
  });
  const ps = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10], [11]].map((ids) =>
    scheduler.submit({ promptIds: Int32Array.from(ids), options: { maxNewTokens: 2 } })
  );
  await scheduler.step();
  // 6 + 3 <= 10 tokens, 2 sequences: the batch is full.
  assert.deepEqual(engine.calls[0].seqs.map((s) => s.length), [6, 3]);
  await scheduler.step();
  assert.deepEqual(engine.calls[1].seqs.map((s) => s.length), [1, 1]);
  await scheduler.step();
  assert.deepEqual(engine.calls[2].seqs.map((s) => s.length), [1, 1]);
  await drain(scheduler);
  for (const r of await Promise.all(ps)) assert.equal(r.tokenIds.length, 2);
});

Deno.test("requests beyond a limit are refused at once, naming the limit, and release their slot", async () => {
  const { scheduler } = setup({
    limits: { maxQueueLength: 1, maxPromptLength: 5, maxNewTokens: 8 },
  });
  const c = counter();
  const req = (ids: number[], options?: GenerationOptions): GenerateRequest => ({
    promptIds: Int32Array.from(ids),
    options,
    onDone: c.onDone,
  });
  const first = scheduler.submit(req([1]));
  const e = await assertRejects(
    scheduler.submit(req([1])),
    "resource_exhausted",
    "max_queue_length 1",
  );
  assert.equal(e.limit, "max_queue_length");
  await assertRejects(
    scheduler.submit(req([1, 2, 3, 4, 5, 6])),
    "invalid_argument",
    "max_prompt_length (5) tokens",
  );
  await assertRejects(
    scheduler.submit(req([1], { maxNewTokens: 9 })),
    "invalid_argument",
    "max_new_tokens limit (8)",
  );
  await assertRejects(scheduler.submit(req([])), "invalid_argument", "at least one token");
  await assertRejects(
    scheduler.submit(req([1, 4000])),
    "invalid_argument",
    "promptIds[1] must be in [0, 80): found 4000",
  );
  assert.equal(c.count, 5);
  await drain(scheduler);
  await first;
  assert.equal(c.count, 6);
});

Deno.test("a prompt that cannot fit n_positions with its new tokens is refused", async () => {
  const { scheduler } = setup({ limits: { maxNewTokens: 20 } });
  await assertRejects(
    scheduler.submit({ promptIds: new Int32Array(50).fill(1), options: { maxNewTokens: 20 } }),
    "invalid_argument",
    "n_positions (64): found 50 + 20 = 70",
  );
});

Deno.test("limits that could strand a request are refused at construction", () => {
  assert.throws(
    () => setup({ limits: { maxPromptLength: 100, maxTokensPerStep: 50 } }),
    /maxPromptLength \(100\) must be at most maxTokensPerStep \(50\)/,
  );
  assert.throws(
    () => setup({ limits: { maxBatchSize: 0 } }),
    /maxBatchSize must be a positive integer: found 0/,
  );
});

Deno.test("cancelling a waiting request rejects it at once and it never reaches the engine", async () => {
  const { scheduler, engine } = setup();
  const c = counter();
  const ac = new AbortController();
  const p = scheduler.submit({ promptIds: Int32Array.from([1, 2]), onDone: c.onDone }, ac.signal);
  ac.abort(new Error("client went away"));
  await assertRejects(p, "cancelled", "client went away");
  assert.equal(c.count, 1);
  assert.equal(await scheduler.step(), undefined);
  assert.equal(engine.calls.length, 0);
});

Deno.test("cancelling a running request removes it at the next step and frees its cache", async () => {
  const { scheduler, engine } = setup();
  const c = counter();
  const ac = new AbortController();
  const p = scheduler.submit({
    promptIds: Int32Array.from([1, 2]),
    options: { maxNewTokens: 10 },
    onDone: c.onDone,
  }, ac.signal);
  const other = scheduler.submit({ promptIds: Int32Array.from([3]), options: { maxNewTokens: 4 } });
  await scheduler.step();
  ac.abort();
  await assertRejects(p, "cancelled", "cancelled");
  const stats = await scheduler.step();
  assert.equal(stats!.batchSize, 1);
  assert.equal(c.count, 1);
  assert.ok(engine.caches[0].disposed);
  await drain(scheduler);
  assert.equal((await other).tokenIds.length, 4);
});

Deno.test("cancelling during the engine call drops the request when the call returns", async () => {
  let release = () => {};
  const gate = new Promise<void>((r) => (release = r));
  const { scheduler, engine } = setup({ beforeForward: () => gate });
  const ac = new AbortController();
  const p = scheduler.submit({ promptIds: Int32Array.from([1]) }, ac.signal);
  const step = scheduler.step();
  ac.abort();
  await assertRejects(p, "cancelled", "cancelled");
  release();
  const stats = await step;
  assert.equal(stats!.finished, 1);
  assert.equal(stats!.running, 0);
  assert.ok(engine.caches[0].disposed);
});

Deno.test("an already aborted signal is refused without queueing", async () => {
  const { scheduler } = setup();
  await assertRejects(
    scheduler.submit({ promptIds: Int32Array.from([1]) }, AbortSignal.abort()),
    "cancelled",
    "cancelled",
  );
  assert.equal(scheduler.stats().queueDepth, 0);
});

Deno.test("a stop string ends generation with reason stop and is trimmed from the text", async () => {
  const base = setup();
  const pa = base.scheduler.submit({
    promptIds: Int32Array.from([1, 2]),
    options: { maxNewTokens: 8 },
  });
  await drain(base.scheduler);
  const full = await pa;
  const stop = full.text.slice(3, 5);
  const cut = full.text.indexOf(stop);
  const s = setup();
  const pb = s.scheduler.submit({
    promptIds: Int32Array.from([1, 2]),
    options: { maxNewTokens: 8, stop: [stop] },
  });
  await drain(s.scheduler);
  const r = await pb;
  assert.equal(r.finishReason, "stop");
  assert.equal(r.text, full.text.slice(0, cut));
  assert.deepEqual(r.tokenIds, full.tokenIds.slice(0, r.tokenIds.length));
});

Deno.test("EOS ends generation with reason eos, unless min_new_tokens is not yet reached", async () => {
  const base = setup();
  const pa = base.scheduler.submit({
    promptIds: Int32Array.from([1, 2]),
    options: { maxNewTokens: 8 },
  });
  await drain(base.scheduler);
  const full = (await pa).tokenIds;
  const eos = full[2];
  const first = full.indexOf(eos);
  const s = setup({ eosId: eos });
  const pb = s.scheduler.submit({
    promptIds: Int32Array.from([1, 2]),
    options: { maxNewTokens: 8, logprobs: true },
  });
  const pc = s.scheduler.submit({
    promptIds: Int32Array.from([1, 2]),
    options: { maxNewTokens: 8, minNewTokens: first + 2 },
  });
  await drain(s.scheduler);
  const r = await pb;
  assert.equal(r.finishReason, "eos");
  assert.deepEqual(r.tokenIds, full.slice(0, first + 1));
  assert.equal(r.text, fakeDecode(full.slice(0, first)));
  assert.equal(r.logprobs!.length, r.tokenIds.length);
  const late = await pc;
  assert.ok(late.tokenIds.slice(0, first + 2).every((t) => t !== eos));
});

Deno.test("stream yields each token with its new text, then the result", async () => {
  const { scheduler } = setup();
  const events: string[] = [];
  let text = "";
  const run = (async () => {
    for await (
      const ev of scheduler.stream({
        promptIds: Int32Array.from([5]),
        options: { maxNewTokens: 4 },
      })
    ) {
      if (ev.type === "token") {
        events.push("token");
        text += ev.text;
      } else {
        events.push("done");
        assert.equal(ev.result.text, text);
        assert.equal(ev.result.finishReason, "length");
      }
    }
  })();
  // The generator starts its request on its first pull; let it, then run the schedule.
  await Promise.resolve();
  await drain(scheduler);
  await run;
  assert.deepEqual(events, ["token", "token", "token", "token", "done"]);
});

Deno.test("leaving a stream early cancels its request", async () => {
  const { scheduler, engine } = setup();
  const c = counter();
  const gen = scheduler.stream({
    promptIds: Int32Array.from([5]),
    options: { maxNewTokens: 20 },
    onDone: c.onDone,
  });
  const first = gen.next();
  await scheduler.step();
  assert.equal((await first).value?.type, "token");
  await gen.return(undefined);
  await scheduler.step();
  assert.equal(c.count, 1);
  assert.ok(engine.caches[0].disposed);
  assert.equal(scheduler.busy, false);
});

Deno.test("an engine failure rejects that batch and the scheduler serves the next one", async () => {
  let fail = true;
  const { scheduler, engine } = setup({
    beforeForward: () => {
      if (fail) throw new Error("out of memory");
    },
  });
  const c = counter();
  const p = scheduler.submit({ promptIds: Int32Array.from([1]), onDone: c.onDone });
  await scheduler.step();
  await assertRejects(p, "internal", "out of memory");
  assert.equal(c.count, 1);
  assert.ok(engine.caches[0].disposed);
  fail = false;
  const q = scheduler.submit({ promptIds: Int32Array.from([1]), options: { maxNewTokens: 2 } });
  await drain(scheduler);
  assert.equal((await q).tokenIds.length, 2);
});

Deno.test("the loop serves independent requests, reports each step and drains on close", async () => {
  const steps: StepStats[] = [];
  const { scheduler } = setup({ autoRun: true, onStep: (s) => steps.push(s) });
  const results = await Promise.all(
    [1, 2, 3].map((n) =>
      scheduler.submit({ promptIds: Int32Array.from([n, n + 1]), options: { maxNewTokens: n } })
    ),
  );
  assert.deepEqual(results.map((r) => r.tokenIds.length), [1, 2, 3]);
  assert.equal(steps.length, 3);
  assert.deepEqual(
    steps.map((s) => [s.batchSize, s.prefillTokens, s.decodeTokens, s.finished, s.running]),
    [[3, 6, 0, 1, 2], [2, 0, 2, 1, 1], [1, 0, 1, 1, 0]],
  );
  // The fake clock reads 10 ms later on every call: each step takes 10 ms.
  assert.equal(steps[0].stepMs, 10);
  assert.equal(steps[0].tokensPerSecond, 600);
  assert.equal(scheduler.stats().generatedTokens, 6);
  assert.equal(scheduler.stats().generatedPerSecond, 200);
  const late = scheduler.submit({ promptIds: Int32Array.from([1]), options: { maxNewTokens: 2 } });
  await scheduler.close();
  assert.equal((await late).tokenIds.length, 2);
  await assertRejects(
    scheduler.submit({ promptIds: Int32Array.from([1]) }),
    "unavailable",
    "shutting down",
  );
});

Deno.test("the loop yields to the event loop once 10 ms have passed on an engine on this thread, never for one off it", async () => {
  // The fake clock reads `msPerReading` later each time it is read (a few readings per step).
  for (const [offThread, msPerReading] of [[false, 10], [false, 1], [true, 10]] as const) {
    const steps: StepStats[] = [];
    let clock = 0;
    const { scheduler, yields } = setup({
      autoRun: true,
      offThread,
      onStep: (s) => steps.push(s),
      now: () => (clock += msPerReading),
    });
    // Submitted in one tick: both join the first step, with no yield before it.
    const results = await Promise.all([
      scheduler.submit({ promptIds: Int32Array.from([1, 2]), options: { maxNewTokens: 3 } }),
      scheduler.submit({ promptIds: Int32Array.from([3]), options: { maxNewTokens: 2 } }),
    ]);
    await scheduler.close();
    assert.deepEqual(results.map((r) => r.tokenIds.length), [3, 2]);
    assert.deepEqual(steps.map((s) => s.batchSize), [2, 2, 1]);
    const why = `offThread ${offThread}, ${msPerReading} ms a reading`;
    if (offThread) assert.equal(yields.count, 0, why);
    else if (msPerReading === 10) assert.equal(yields.count, steps.length, why);
    else assert.ok(yields.count < steps.length, `${why}: short steps run back to back`);
  }
});

Deno.test("close with abort cancels queued and running requests", async () => {
  const { scheduler } = setup();
  const a = scheduler.submit({ promptIds: Int32Array.from([1]), options: { maxNewTokens: 5 } });
  await scheduler.step();
  const b = scheduler.submit({ promptIds: Int32Array.from([2]) });
  const closed = scheduler.close({ abort: true });
  await assertRejects(a, "unavailable", "shutting down");
  await assertRejects(b, "unavailable", "shutting down");
  await drain(scheduler);
  await closed;
  assert.equal(scheduler.busy, false);
});

/** log softmax(logits)[id], computed here in float64 from the engine's own logits. */
function logSoftmaxAt(row: Float32Array, id: number): number {
  const max = Math.max(...row);
  return row[id] - max - Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
}

/** Teacher-forced log-probabilities of `choice` after `promptIds`, the whole sequence alone. */
async function teacherForced(
  engine: FakeEngine,
  slots: PromptSlots,
  promptIds: Int32Array,
  choice: number[],
): Promise<number[]> {
  const ids = Int32Array.from([...promptIds, ...choice]);
  const { logits } = await engine.forward({
    embeds: slots.embedTokens(ids),
    seqs: [{ length: ids.length }],
    logitRows: Int32Array.from(choice, (_, t) => promptIds.length - 1 + t),
  });
  return choice.map((id, t) => logSoftmaxAt(logits.subarray(t * V, (t + 1) * V), id));
}

Deno.test("score() gives each candidate's token log-probabilities, as teacher-forced forwards of each do", async () => {
  const { engine, slots, scheduler } = setup();
  const [t0, , t2] = tasks(slots);
  const reqs = [
    { lease: t0, words: [1, 2, 3], choices: [[4], [5, 6], [7, 8, 9]] },
    { lease: t2, words: [11, 12], choices: [[20, 21], [22]] },
  ];
  const scored = reqs.map((r) =>
    scheduler.score({
      promptIds: r.lease.toGlobalIds(Int32Array.from(prompt(r.lease.virtualTokens, r.words))),
      choices: r.choices.map((c) => Int32Array.from(c)),
    })
  );
  // And a generation request in the same step.
  const gen = scheduler.submit({
    promptIds: t0.toGlobalIds(Int32Array.from(prompt(2, [9, 9]))),
    options: { maxNewTokens: 2 },
  });
  engine.calls.length = 0;
  await scheduler.step();
  // Two engine calls: every prompt prefilled once (the generation's too), then every candidate's
  // tokens but its last, each on a fork of its prompt's cache, with logits at each row.
  assert.equal(engine.calls.length, 2);
  assert.deepEqual(engine.calls[0].seqs.map((s) => s.length), [
    2 + 3,
    8 + 2,
    2 + 2,
  ]);
  assert.deepEqual(engine.calls[1].seqs.map((s) => s.length), [1, 2, 1]);
  assert.equal(engine.calls[1].logitRows.length, 4);
  const results = await Promise.all(scored);
  for (const [i, r] of reqs.entries()) {
    const promptIds = r.lease.toGlobalIds(
      Int32Array.from(prompt(r.lease.virtualTokens, r.words)),
    );
    assert.equal(results[i].promptTokens, promptIds.length);
    for (const [k, c] of r.choices.entries()) {
      const want = await teacherForced(engine, slots, promptIds, c);
      const got = results[i].tokenLogprobs[k];
      assert.equal(got.length, c.length);
      got.forEach((g, t) =>
        assert.ok(Math.abs(g - want[t]) < 1e-9, `req ${i} choice ${k}: ${got} vs ${want}`)
      );
    }
  }
  // The forks are freed with the prompt's cache; generation goes on.
  await drain(scheduler);
  assert.equal((await gen).tokenIds.length, 2);
  assert.ok(engine.caches.every((c) => (c as unknown as { disposed: boolean }).disposed));
});

Deno.test("score() refuses candidates beyond its limits, naming them, and releases its slot", async () => {
  const { slots, scheduler } = setup({
    limits: { maxChoices: 3, maxChoiceTokens: 4, maxScoreRowsPerStep: 5 },
  });
  const [t0] = tasks(slots);
  const promptIds = t0.toGlobalIds(Int32Array.from(prompt(2, [1, 2])));
  const ask = (choices: number[][]) => {
    const done = counter();
    return {
      done,
      p: scheduler.score(
        { promptIds, choices: choices.map((c) => Int32Array.from(c)), onDone: done.onDone },
      ),
    };
  };
  const cases: [number[][], string][] = [
    [[], "choices must hold 1 to 3 candidate answers (max_choices): found 0"],
    [[[1], [2], [3], [4]], "found 4"],
    [[[1], []], "choices[1] must be 1 to 4 tokens (max_choice_tokens): found 0"],
    [[[1, 2, 3, 4, 5]], "choices[0] must be 1 to 4 tokens"],
    [[[1, V]], `choices[0][1] must be a token id in [0, ${V}): found ${V}`],
    [
      [[1, 2, 3, 4], [1, 2, 3]],
      "at most 5 tokens after their first (max_score_rows): found 5".replace("found 5", "found 5"),
    ],
  ];
  // The last case takes 3 + 2 = 5 rows: allowed. One more row is not.
  cases[5] = [
    [[1, 2, 3, 4], [1, 2, 3, 4]],
    "at most 5 tokens after their first (max_score_rows): found 6",
  ];
  for (const [choices, message] of cases) {
    const { p, done } = ask(choices);
    await assertRejects(p, "invalid_argument", message);
    assert.equal(done.count, 1);
  }
  const ok = ask([[1, 2, 3, 4], [1, 2, 3]]);
  await drain(scheduler);
  assert.equal((await ok.p).tokenLogprobs.length, 2);
  assert.equal(ok.done.count, 1);
});

Deno.test("a cancelled scoring request never reaches the engine; an engine failure rejects it", async () => {
  const { engine, slots, scheduler } = setup();
  const [t0] = tasks(slots);
  const promptIds = t0.toGlobalIds(Int32Array.from(prompt(2, [1, 2])));
  const abort = new AbortController();
  const done = counter();
  const p = scheduler.score(
    { promptIds, choices: [Int32Array.of(3, 4)], onDone: done.onDone },
    abort.signal,
  );
  abort.abort();
  await assertRejects(p, "cancelled", "");
  await drain(scheduler);
  assert.equal(engine.calls.length, 0);
  assert.equal(done.count, 1);
  // The candidates' call fails: the request is rejected, its forks and cache freed.
  let calls = 0;
  const second = setup({
    beforeForward: () => {
      if (++calls === 2) throw new Error("device lost");
    },
  });
  const [s0] = tasks(second.slots);
  const q = second.scheduler.score({
    promptIds: s0.toGlobalIds(Int32Array.from(prompt(2, [1, 2]))),
    choices: [Int32Array.of(3, 4), Int32Array.of(5)],
  });
  await drain(second.scheduler);
  await assertRejects(q, "internal", "the engine failed scoring 1 candidate answers: device lost");
  assert.ok(second.engine.caches.every((c) => (c as unknown as { disposed: boolean }).disposed));
});

Deno.test("allowed: the output is one allowed answer, the same alone and in a batch; limits name the field", async () => {
  const allowed = [[4, 5, 6], [4, 7], [9]].map((a) => Int32Array.from(a));
  const run = async (others: number) => {
    const { slots, scheduler } = setup();
    const [t0, t1] = tasks(slots);
    const p = scheduler.submit({
      promptIds: t0.toGlobalIds(Int32Array.from(prompt(2, [1, 2, 3]))),
      allowed,
      options: { maxNewTokens: 1, stop: ["x"] }, // neither applies: the answers decide
    });
    for (let i = 0; i < others; i++) {
      scheduler.submit({
        promptIds: t1.toGlobalIds(Int32Array.from(prompt(5, [i + 1]))),
        options: { maxNewTokens: 4 },
      });
    }
    await drain(scheduler);
    return await p;
  };
  const alone = await run(0);
  assert.equal(alone.finishReason, "choice");
  assert.deepEqual(alone.tokenIds, Array.from(allowed[alone.choice!]));
  assert.deepEqual(await run(3), alone);
  const { slots, scheduler } = setup({ limits: { maxChoices: 2 } });
  const [t0] = tasks(slots);
  await assertRejects(
    scheduler.submit({
      promptIds: t0.toGlobalIds(Int32Array.from(prompt(2, [1]))),
      allowed,
    }),
    "invalid_argument",
    "allowed must hold 1 to 2 candidate answers (max_choices): found 3",
  );
});

Deno.test("a task's shared prompt prefix is computed once and forked for its later requests, with the same outputs", async () => {
  // Task t2 (8 virtual tokens); its requests share the virtual tokens and words [1, 2].
  const prompts = [[1, 2, 3], [1, 2, 4, 5], [1, 2, 6]];
  const run = async (prefixCacheRows: number) => {
    const { engine, slots, scheduler } = setup({ prefixCacheRows });
    const [, , t2] = tasks(slots);
    const prefix = { key: t2.residency, length: 8 + 2 };
    const out: GenerationResult[] = [];
    const fed: number[][] = [];
    for (const words of prompts) {
      engine.calls.length = 0;
      const p = scheduler.submit({
        promptIds: t2.toGlobalIds(Int32Array.from(prompt(8, words))),
        prefix,
        options: { maxNewTokens: 3 },
      });
      await drain(scheduler);
      out.push(await p);
      fed.push(engine.calls.map((c) => c.seqs[0].length));
    }
    return { out, fed, scheduler };
  };
  const off = await run(0), on = await run(64);
  assert.deepEqual(on.out, off.out);
  // Without the cache every prefill feeds the whole prompt; with it, the second and third feed
  // only what follows the 10 shared rows.
  assert.deepEqual(off.fed.map((f) => f[0]), [11, 12, 11]);
  assert.deepEqual(on.fed.map((f) => f[0]), [11, 2, 1]);
  assert.deepEqual(on.scheduler.prefixCache, { rows: 10, entries: 1, maxRows: 64 });
  await on.scheduler.close();
  assert.equal(on.scheduler.prefixCache.entries, 0);
});

Deno.test("the prefix cache keeps at most its rows, the least recently used going first", async () => {
  const { engine, slots, scheduler } = setup({ prefixCacheRows: 12 });
  const [t0, t1, t2] = tasks(slots);
  const ask = async (lease: typeof t0, n: number) => {
    const p = scheduler.submit({
      promptIds: lease.toGlobalIds(Int32Array.from(prompt(n, [1, 2]))),
      prefix: { key: lease.residency, length: n },
      options: { maxNewTokens: 1 },
    });
    await drain(scheduler);
    return await p;
  };
  await ask(t0, 2); // 2 rows kept
  await ask(t1, 5); // 7
  await ask(t0, 2); // a hit: t0 is now the most recent
  await ask(t2, 8); // 15 > 12: t1 (least recently used) goes
  assert.deepEqual(scheduler.prefixCache, { rows: 10, entries: 2, maxRows: 12 });
  engine.calls.length = 0;
  await ask(t1, 5); // computed whole again
  assert.equal(engine.calls[0].seqs[0].length, 5 + 2);
  // A prefix longer than the whole cache is never kept.
  const small = setup({ prefixCacheRows: 4 });
  const [, , s2] = tasks(small.slots);
  const r = small.scheduler.submit({
    promptIds: s2.toGlobalIds(Int32Array.from(prompt(8, [1]))),
    prefix: { key: s2.residency, length: 8 },
  });
  await drain(small.scheduler);
  await r;
  assert.equal(small.scheduler.prefixCache.entries, 0);
});
