import assert from "node:assert/strict";
import type { Tokenizer } from "../model/tokenizer.ts";
import { FAKE_CONFIG, FakeEngine } from "./_fake_engine.ts";
import { ServiceError } from "../errors.ts";
import { InferenceService, type ServedTask } from "./inference_service.ts";
import { Prng } from "../model/decoding/prng.ts";
import { PromptSlots } from "./prompt_slots.ts";
import { sentimentTask } from "./testing/sentiment_task.ts";
import { Scheduler } from "./scheduler.ts";

const V = FAKE_CONFIG.vocabSize, C = FAKE_CONFIG.nEmbd;
const ALPHABET = "abcdefghijklmnopqrstuvwxyz :.,!?";

/** One id per character, so prompts are easy to predict. */
const tokenizer: Tokenizer = {
  encode: (text) => [...text].map((ch) => ALPHABET.indexOf(ch)).map((i) => (i < 0 ? 31 : i)),
  decode: (ids) => Array.from(ids, (i) => ALPHABET[i] ?? "#").join(""),
  tokenToId: () => undefined,
  vocabSize: V,
  eosId: FAKE_CONFIG.eosTokenId,
  bosId: FAKE_CONFIG.bosTokenId,
  file: "fake",
};

function task(name: string, version: number, virtual: number): ServedTask {
  const rng = new Prng(version * 31 + virtual);
  const table = Float32Array.from({ length: virtual * C }, () => rng.next() - 0.5);
  return sentimentTask(name, table, C, { version, maxSeqLength: 40 });
}

const TASKS = [task("sent", 1, 3), task("sent", 2, 5), task("other", 1, 8)];

async function getTask(name: string, version?: number): Promise<ServedTask> {
  const versions = TASKS.filter((t) => t.name === name);
  const found = version === undefined
    ? versions.at(-1)
    : versions.find((t) => t.version === version);
  if (!found) throw new RangeError(`task ${name} v${version ?? "latest"} does not exist`);
  return await Promise.resolve(found);
}

function setup(
  maxSlots = 4,
  tableReads: string[] = [],
  prefixCacheRows = 0,
  describeTask = getTask,
) {
  const engine = new FakeEngine();
  const slots = new PromptSlots({
    vocabSize: V,
    hidden: C,
    wte: engine.wte,
    maxSlots,
    maxVirtualTokens: 8,
  });
  const scheduler = new Scheduler({
    engine,
    embedder: slots,
    decode: tokenizer.decode,
    eosId: -1,
    yieldToEventLoop: () => Promise.resolve(),
    prefixCacheRows,
  });
  return {
    engine,
    slots,
    scheduler,
    service: new InferenceService({
      describeTask,
      loadTable: async (name, version) => {
        tableReads.push(`${name}@${version}`);
        return (await getTask(name, version)).table!;
      },
      tokenizer,
      slots,
      scheduler,
    }),
  };
}

Deno.test("a task whose prompt slot is resident is served without reading its table again", async () => {
  const reads: string[] = [];
  const { service } = setup(4, reads);
  const req = { task: "sent", fields: { sentence: "good" }, options: { maxNewTokens: 1 } };
  await service.inferMany([req, req, { ...req, task: "other" }]);
  await service.infer(req);
  const stream = service.inferStream({ ...req, version: 1 });
  let done;
  for await (const e of stream) if (e.type === "done") done = e.result;
  // Each version's table was read once, on its slot's first miss; the stream's final result
  // names the version that served it without another registry read.
  assert.deepEqual(reads, ["sent@2", "other@1", "sent@1"]);
  assert.deepEqual([done?.task, done?.version], ["sent", 1]);
});

Deno.test("infer fills the template with the task's virtual tokens and generates", async () => {
  const { service, engine, slots } = setup();
  const r = await service.infer({
    task: "sent",
    fields: { sentence: "good" },
    options: { maxNewTokens: 3 },
  });
  assert.equal(r.task, "sent");
  assert.equal(r.version, 2);
  assert.equal(r.tokenIds.length, 3);
  assert.equal(r.finishReason, "length");
  // 5 virtual + " good" (5) + " sentiment:" (11) = 21 rows, no answer.
  assert.equal(r.promptTokens, 21);
  assert.equal(engine.calls[0].seqs[0].length, 21);
  assert.deepEqual(slots.stats().inUse, 0, "the slot lease is released when the request ends");
});

Deno.test("a named version is served, and differs from the latest", async () => {
  const { service } = setup();
  const v1 = await service.infer({ task: "sent", version: 1, fields: { sentence: "good" } });
  assert.equal(v1.version, 1);
  assert.equal(v1.promptTokens, 19);
});

Deno.test("inferMany keeps request order, batches the good ones and reports each failure", async () => {
  const { service, engine } = setup();
  const out = await service.inferMany([
    { task: "sent", fields: { sentence: "good" }, options: { maxNewTokens: 4 } },
    { task: "missing", fields: { sentence: "x" } },
    { task: "other", fields: { sentence: "bad movie" }, options: { maxNewTokens: 4 } },
    { task: "sent", fields: {} },
    { task: "sent", version: 1, fields: { sentence: "fine" }, options: { maxNewTokens: 9999 } },
    { task: "sent", version: 1, fields: { sentence: "ok" }, options: { maxNewTokens: 4 } },
  ]);
  assert.deepEqual(out.map((o) => o.ok), [true, false, true, false, false, true]);
  const errs = out.flatMap((o) => (o.ok ? [] : [o.error]));
  assert.match(errs[0].message, /task missing vlatest does not exist/);
  assert.ok(errs[1] instanceof ServiceError && errs[1].kind === "invalid_argument");
  assert.match(errs[1].message, /field "sentence" must be a string: found nothing/);
  assert.ok(errs[2] instanceof ServiceError && errs[2].limit === "max_new_tokens");
  // Three tasks' prompts went through one prefill call, then decoded together.
  assert.equal(engine.calls[0].seqs.length, 3);
  assert.equal(engine.calls.length, 4);
});

Deno.test("inferMany's requests start as each is ready: one slow to describe holds none of the others back", async () => {
  const later = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const { service, engine } = setup(4, [], 0, async (name, version) => {
    // "other" is slow to describe; "missing" fails after a while.
    if (name === "other") await later(20);
    if (name === "missing") await later(5);
    return await getTask(name, version);
  });
  const out = await service.inferMany([
    { task: "sent", fields: { sentence: "good" }, options: { maxNewTokens: 2 } },
    { task: "missing", fields: { sentence: "x" } },
    { task: "other", fields: { sentence: "bad movie" }, options: { maxNewTokens: 2 } },
    { task: "sent", fields: { sentence: "x" }, allowed: [" positive", " negative"] },
  ]);
  assert.deepEqual(out.map((o) => o.ok), [true, false, true, true]);
  assert.equal(engine.calls[0].seqs.length, 2, "the two described at once start together");
  // 8 virtual tokens + " bad movie" (10) + " sentiment:" (11): "other" is prefilled alone, later.
  const otherPrefill = engine.calls.findIndex((c) => c.seqs.some((q) => q.length === 29));
  assert.ok(otherPrefill > 0);
  assert.equal(engine.calls[otherPrefill].seqs.length, 1);
});

Deno.test("a prompt past the template's max_seq_length is refused naming it", async () => {
  const { service } = setup();
  await assert.rejects(
    service.infer({ task: "sent", fields: { sentence: "a very long sentence that does not fit" } }),
    (e: unknown) =>
      e instanceof ServiceError && e.limit === "max_seq_length" &&
      /at most 40 tokens/.test(e.message),
  );
});

Deno.test("a task that finds every prompt slot in use is refused, and served once one frees", async () => {
  const { service } = setup(1);
  const ac = new AbortController();
  const first = service.infer({
    task: "sent",
    fields: { sentence: "a" },
    options: { maxNewTokens: 30 },
  }, ac.signal);
  await assert.rejects(
    service.infer({ task: "other", fields: { sentence: "b" } }),
    (e: unknown) =>
      e instanceof ServiceError && e.kind === "resource_exhausted" &&
      e.limit === "max_prompt_slots",
  );
  ac.abort();
  await assert.rejects(first, (e: unknown) => e instanceof ServiceError && e.kind === "cancelled");
  const r = await service.infer({
    task: "other",
    fields: { sentence: "b" },
    options: { maxNewTokens: 1 },
  });
  assert.equal(r.task, "other");
});

Deno.test("inferStream streams the tokens of a task's answer", async () => {
  const { service } = setup();
  let text = "";
  let done = false;
  for await (
    const ev of service.inferStream({
      task: "other",
      fields: { sentence: "meh" },
      options: { maxNewTokens: 5 },
    })
  ) {
    if (ev.type === "token") text += ev.text;
    else {
      done = true;
      assert.equal(ev.result.text, text);
    }
  }
  assert.ok(done);
});

Deno.test("malformed requests are refused naming the field", async () => {
  const { service } = setup();
  await assert.rejects(
    service.infer({ task: "", fields: {} }),
    /task must be a non-empty string: found ""/,
  );
  await assert.rejects(
    service.infer({ task: "sent", version: 0, fields: {} }),
    /version must be an integer >= 1 when given: found 0/,
  );
});

Deno.test("a task's cached prompt prefix is used by its requests and forgotten with its slot", async () => {
  const { service, scheduler, engine } = setup(1, [], 64);
  const req = { task: "sent", fields: { sentence: "good" }, options: { maxNewTokens: 1 } };
  await service.infer(req);
  engine.calls.length = 0;
  await service.infer({ ...req, fields: { sentence: "bad" } });
  // sent v2 has 5 virtual tokens: its second request feeds only " bad sentiment:".
  assert.equal(engine.calls[0].seqs[0].length, tokenizer.encode(" bad sentiment:").length);
  assert.deepEqual(scheduler.prefixCache, { rows: 5, entries: 1, maxRows: 64 });
  // One slot: "other" takes it, and sent's prefix goes with the slot.
  await service.infer({ ...req, task: "other" });
  assert.deepEqual(scheduler.prefixCache, { rows: 8, entries: 1, maxRows: 64 });
});

Deno.test("active counts requests from acceptance to answer, before the scheduler sees them and in streams", async () => {
  const { service, scheduler } = setup();
  const req = { task: "sent", fields: { sentence: "good" }, options: { maxNewTokens: 2 } };
  const pending = service.infer(req);
  // Accepted: its table is still being read, and the scheduler has nothing yet.
  assert.equal(service.active, 1);
  assert.equal(scheduler.busy, false);
  const stream = service.inferStream(req);
  const first = await stream.next();
  assert.equal(first.done, false);
  assert.equal(service.active, 2);
  for await (const _ of stream) { /* to the end */ }
  await pending;
  assert.equal(service.active, 0);
  // A refused request counts for nothing once refused.
  await assert.rejects(service.infer({ ...req, task: "missing" }), /does not exist/);
  assert.equal(service.active, 0);
});
