/**
 * The serving path on the real model (models/tiny-gpt2): a request's greedy output must not
 * depend on what else shares its batches. Engines under test come from ENGINES (comma list of
 * backends, or cuda-emulated; default: fast and wasm).
 */
import assert from "node:assert/strict";
import { type Engine, loadModel } from "../model/mod.ts";
import { createTestEngine } from "../model/testing/engine_probe.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import { type InferenceRequest, InferenceService } from "./inference_service.ts";
import { PromptSlots } from "./prompt_slots.ts";
import { sentimentTask, tableFromVocab } from "./testing/sentiment_task.ts";
import { type GenerationResult, Scheduler, type StepStats } from "./scheduler.ts";

const dir = new URL("../../models/tiny-gpt2", import.meta.url).pathname;
const model = await loadModel(dir);
const tokenizer = await loadTokenizer(dir);
const { nEmbd: C, vocabSize: V } = model.config;
const peftDir = new URL("../../test/fixtures/peft_prompt_tuning_sentiment/", import.meta.url);
const peftTable = readFloat32(
  parseSafetensors(await Deno.readFile(new URL("adapter_model.safetensors", peftDir)), "adapter"),
  "prompt_embeddings",
); // [10, C]
const peftReference: { input_ids: number[]; last_logits_top5: [number, number][] }[] = JSON.parse(
  await Deno.readTextFile(new URL("reference_outputs.json", peftDir)),
);
const names = (Deno.env.get("ENGINES") ?? "fast,wasm").split(",");

/** A task whose table is rows of wte (plus noise): realistic scale, different per task. */
const task = (name: string, virtual: number, seed: number) =>
  sentimentTask(name, tableFromVocab(model.weights.wte, V, C, virtual, seed), C);

const TASKS = new Map([["five", 5], ["ten", 10], ["twenty", 20]].map(([n, v], i) => [
  n as string,
  task(n as string, v as number, i + 1),
]));

const SENTENCES = [
  "The company reported a net profit of EUR 5 million .",
  "Operating profit fell to EUR 1.2 mn from EUR 3.4 mn .",
  "Sales rose sharply in the third quarter .",
  "The board did not comment .",
  "Shares dropped after the announcement .",
  "Net sales increased by 10 percent .",
];

function service(engine: Engine, onStep?: (s: StepStats) => void, prefixCacheRows = 0) {
  const slots = new PromptSlots({
    vocabSize: V,
    hidden: C,
    wte: model.weights.wte,
    maxSlots: 4,
    maxVirtualTokens: 32,
  });
  const scheduler = new Scheduler({
    engine,
    embedder: slots,
    decode: (ids) => tokenizer.decode(ids),
    eosId: tokenizer.eosId,
    limits: { maxBatchSize: 4 },
    onStep,
    prefixCacheRows,
  });
  const getTask = (name: string, _version?: number) => Promise.resolve(TASKS.get(name)!);
  return {
    scheduler,
    infer: new InferenceService({
      describeTask: getTask,
      loadTable: async (name, version) => (await getTask(name, version)).table!,
      tokenizer,
      slots,
      scheduler,
    }),
  };
}

const requests: InferenceRequest[] = SENTENCES.map((sentence, i) => ({
  task: ["five", "ten", "twenty"][i % 3],
  fields: { sentence },
  // min = max: EOS cannot end them early, so batches really do change while they decode.
  options: { maxNewTokens: 4 + (i % 3) * 3, minNewTokens: 4 + (i % 3) * 3 },
}));

for (const name of names) {
  let engine: Engine;
  try {
    engine = await createTestEngine(name, model);
  } catch (e) {
    Deno.test({ name: `[${name}] engine loads`, ignore: true, fn() {} });
    console.warn(`engine ${name} unavailable: ${(e as Error).message}`);
    continue;
  }

  Deno.test(`[${name}] greedy output is the same alone and in staggered mixed-task batches`, async () => {
    const alone: GenerationResult[] = [];
    for (const r of requests) alone.push(await service(engine).infer.infer(r));
    let secondStep = () => {};
    const stepped = new Promise<void>((resolve) => (secondStep = resolve));
    const { infer } = service(engine, (s) => s.step === 2 && secondStep());
    const mixed = requests.slice(0, 3).map((r) => infer.infer(r));
    // The rest join while the first ones decode (batch limit 4 keeps some waiting too).
    await stepped;
    mixed.push(...requests.slice(3).map((r) => infer.infer(r)));
    const results = await Promise.all(mixed);
    const strip = (r: GenerationResult) => ({
      text: r.text,
      tokenIds: r.tokenIds,
      finishReason: r.finishReason,
      promptTokens: r.promptTokens,
    });
    for (const [i, r] of results.entries()) {
      assert.deepEqual(strip(r), strip(alone[i]), `request ${i} (${requests[i].task})`);
    }
  });

  Deno.test(`[${name}] the prefix cache changes no token, log-probability or candidate score`, async () => {
    // Each task's prefix is its virtual tokens (its template starts "<|VIRTUAL_PROMPT_0|> {...").
    const withLogprobs = requests.map((r) => ({ ...r, options: { ...r.options, logprobs: true } }));
    const scored = SENTENCES.map((sentence, i) => ({
      task: ["five", "ten", "twenty"][i % 3],
      fields: { sentence },
      choices: ["positive", "negative", "neutral"],
    }));
    const run = async (rows: number) => {
      const prefixed: number[] = [];
      const { infer, scheduler } = service(engine, (s) => prefixed.push(s.prefixTokens), rows);
      // Twice: the second round finds every prefix the first computed.
      const first = await infer.inferMany([...withLogprobs, ...scored]);
      const second = await infer.inferMany([...withLogprobs, ...scored]);
      await scheduler.close();
      return { out: [...first, ...second], prefixed: prefixed.reduce((a, b) => a + b, 0) };
    };
    const off = await run(0), on = await run(1024);
    assert.equal(off.prefixed, 0);
    assert.ok(on.prefixed >= (5 + 10 + 20) * 2, `prefix rows reused: ${on.prefixed}`);
    for (const [i, a] of on.out.entries()) {
      const b = off.out[i];
      assert.ok(a.ok && b.ok);
      assert.deepEqual(a.result.tokenIds, b.result.tokenIds, `request ${i}`);
      const close = (x: number[] | undefined, y: number[] | undefined) =>
        (x ?? []).every((v, k) => Math.abs(v - y![k]) < 1e-4);
      assert.ok(close(a.result.logprobs, b.result.logprobs), `request ${i}: log-probabilities`);
      assert.ok(
        close(a.result.choices?.map((c) => c.logprob), b.result.choices?.map((c) => c.logprob)),
        `request ${i}: candidate scores`,
      );
    }
  });

  Deno.test(`[${name}] a seeded sampled request repeats itself whatever shares its batch`, async () => {
    const options = { maxNewTokens: 6, doSample: true, seed: 11, topP: 0.9, temperature: 0.9 };
    const req = { task: "ten", fields: { sentence: SENTENCES[0] }, options };
    const alone = await service(engine).infer.infer(req);
    const { infer } = service(engine);
    const out = await infer.inferMany([
      { ...req, task: "twenty", options: { ...options, seed: 1 } },
      req,
      { ...req, task: "five", fields: { sentence: SENTENCES[1] } },
    ]);
    assert.ok(out[1].ok);
    assert.deepEqual(out[1].result.tokenIds, alone.tokenIds);
  });

  Deno.test(`[${name}] the PEFT adapter's reference top-1 comes first, batched with other tasks`, async () => {
    const slots = new PromptSlots({
      vocabSize: V,
      hidden: C,
      wte: model.weights.wte,
      maxSlots: 2,
      maxVirtualTokens: 32,
    });
    const peft = slots.acquire({
      name: "peft",
      version: 1,
      totalVirtualTokens: 10,
      table: peftTable,
    });
    const other = slots.acquire(TASKS.get("twenty")!);
    const scheduler = new Scheduler({
      engine,
      embedder: slots,
      decode: (ids) => tokenizer.decode(ids),
    });
    const virtual = (n: number) => Array.from({ length: n }, (_, k) => V + k);
    const runs = peftReference.flatMap((ref) => [
      scheduler.submit({
        promptIds: peft.toGlobalIds([...virtual(10), ...ref.input_ids]),
        options: { maxNewTokens: 1, logprobs: true },
      }),
      scheduler.submit({
        promptIds: other.toGlobalIds([...virtual(20), ...ref.input_ids]),
        options: { maxNewTokens: 2 },
      }),
    ]);
    const results = await Promise.all(runs);
    for (const [i, ref] of peftReference.entries()) {
      const r = results[2 * i];
      assert.equal(r.tokenIds[0], ref.last_logits_top5[0][0], `reference ${i}`);
      // The top-5 hold part of the mass, so log-softmax over them bounds the true value above.
      const top = ref.last_logits_top5.map(([, l]) => l);
      const bound = -Math.log(top.reduce((sum, l) => sum + Math.exp(l - top[0]), 0));
      assert.ok(r.logprobs![0] <= bound + 1e-3 && r.logprobs![0] > -10, `reference ${i}`);
    }
  });
}

Deno.test("with the engine in a worker, sampling and scoring run there: every kind of request answers as in process, and no logits cross", async () => {
  const inProcess = await createTestEngine("fast", model);
  const worker = await createTestEngine("fast-worker", model);
  // The scheduler must reduce rows in the worker: its plain forward (logits back) is refused.
  worker.forward = () => Promise.reject(new Error("logits were asked of the worker"));
  const sentence = SENTENCES[1];
  const kinds: InferenceRequest[] = [
    { task: "ten", fields: { sentence }, options: { maxNewTokens: 5, logprobs: true } },
    {
      task: "five",
      fields: { sentence },
      options: {
        maxNewTokens: 6,
        doSample: true,
        temperature: 0.8,
        topK: 40,
        topP: 0.9,
        seed: 7,
        logprobs: true,
      },
    },
    {
      task: "twenty",
      fields: { sentence },
      options: { maxNewTokens: 6, minNewTokens: 4, repetitionPenalty: 1.3, logprobs: true },
    },
    { task: "ten", fields: { sentence }, allowed: ["positive", "negative", "neutral"] },
    { task: "five", fields: { sentence }, choices: ["positive", "negative", "neutral"] },
  ];
  try {
    const want = await service(inProcess).infer.inferMany(kinds);
    const got = await service(worker).infer.inferMany(kinds);
    for (const [i, w] of want.entries()) {
      const g = got[i];
      assert.ok(w.ok && g.ok, `request ${i}: ${JSON.stringify([w, g])}`);
      assert.deepEqual(g.result.tokenIds, w.result.tokenIds, `request ${i}: tokens`);
      assert.equal(g.result.text, w.result.text, `request ${i}: text`);
      assert.equal(g.result.finishReason, w.result.finishReason, `request ${i}: finish reason`);
      for (const [t, lp] of (w.result.logprobs ?? []).entries()) {
        assert.ok(Math.abs(g.result.logprobs![t] - lp) < 1e-5, `request ${i}: logprob ${t}`);
      }
      for (const [k, c] of (w.result.choices ?? []).entries()) {
        assert.ok(Math.abs(g.result.choices![k].logprob - c.logprob) < 1e-5, `choice ${k}`);
      }
    }
    assert.equal(want[3].ok && want[3].result.finishReason, "choice");
    assert.equal(want[4].ok && want[4].result.choices?.length, 3);
  } finally {
    inProcess.dispose();
    worker.dispose();
  }
});
