import assert from "node:assert/strict";
import { EngineShare, sliceLossInput } from "./engine_share.ts";
import { FakeEngine } from "./_fake_engine.ts";
import { loadModel } from "../model/mod.ts";
import { createTestEngine } from "../model/testing/engine_probe.ts";
import { type Engine, forwardPicked, type LossInput } from "../model/engine.ts";
import type { RowPicked } from "../model/decoding/pick.ts";
import { type SamplingParams, SequenceSampler } from "../model/decoding/sampler.ts";

const GREEDY_PARAMS: SamplingParams = {
  maxNewTokens: 1,
  minNewTokens: 0,
  doSample: false,
  temperature: 1,
  topK: 0,
  topP: 1,
  seed: 0,
  repetitionPenalty: 1,
  stop: [],
  logprobs: false,
};

/** A share on a clock that moves only when told (sleeping moves it too). */
function setup(min: number) {
  let now = 0, busy = false;
  const share = new EngineShare({
    servingBusy: () => busy,
    minTrainingShare: min,
    windowMs: 1000,
    pollMs: 10,
    now: () => now,
    sleep: (ms) => {
      now += ms;
      return Promise.resolve();
    },
  });
  return {
    share,
    setBusy: (b: boolean) => (busy = b),
    advance: (ms: number) => (now += ms),
    get now() {
      return now;
    },
  };
}

Deno.test("training goes at once while serving is idle, and waits for its share while it is busy", async () => {
  const s = setup(0.2);
  // Idle serving: training runs back to back.
  for (let i = 0; i < 3; i++) {
    const done = await s.share.turn();
    s.advance(300);
    done();
  }
  assert.equal(s.share.waits, 0);
  assert.ok(s.share.trainingShare() > 0.8);
  // Busy serving: the next call waits until training's use of the last second is below 20%.
  s.setBusy(true);
  const before = s.now;
  const done = await s.share.turn();
  assert.equal(s.share.waits, 1);
  const waited = s.now - before;
  // Training used [0, 900] ms; at time t the last second holds 900 - (t - 1000) ms of it, under
  // 200 ms once t passes 1700: 800 ms after `before` (900), to the next poll.
  assert.ok(waited >= 800 && waited <= 810, `waited ${waited} ms`);
  done();
});

Deno.test("under continuous serving load, training still gets about its minimum share", async () => {
  const s = setup(0.15);
  s.setBusy(true);
  const start = s.now;
  let trained = 0;
  while (s.now - start < 20_000) {
    const done = await s.share.turn();
    s.advance(50); // a 50 ms micro-batch
    trained += 50;
    done();
  }
  const share = trained / (s.now - start);
  assert.ok(share >= 0.14 && share <= 0.2, `training got ${share} of the engine`);
});

Deno.test("forTraining() passes calls through after their turn and never ends the engine", async () => {
  const s = setup(0.5);
  const engine = new FakeEngine();
  const polite = s.share.forTraining(engine);
  const ids = [1, 2, 3];
  const out = await polite.forward({
    embeds: engine.embed(ids),
    seqs: [{ length: 3 }],
    logitRows: Int32Array.of(2),
  });
  assert.equal(out.logits.length, engine.config.vocabSize);
  polite.dispose();
  assert.equal(polite.name, engine.name);
  assert.throws(
    () => new EngineShare({ servingBusy: () => false, minTrainingShare: 2 }),
    /\[0, 1\]/,
  );
});

Deno.test("forTraining() keeps the engine's forwardPicked (rows reduced where the logits are), after its turn", async () => {
  const s = setup(0.2);
  const engine = new FakeEngine();
  const picked: RowPicked[] = [{ tokenId: 7 }];
  // An engine that reduces its own rows (the worker engine does): its logits must not be asked.
  engine.forward = () => Promise.reject(new Error("logits were asked for"));
  const withPicks: Engine = Object.assign(engine, { forwardPicked: () => Promise.resolve(picked) });
  const polite = s.share.forTraining(withPicks);
  const input = { embeds: engine.embed([1]), seqs: [{ length: 1 }], logitRows: Int32Array.of(0) };
  const token = { token: new SequenceSampler(GREEDY_PARAMS, [], 10, 0).spec() };
  assert.deepEqual(await forwardPicked(polite, input, [token]), picked);
  // It takes its turn: with serving busy and training over its share, it waits.
  s.setBusy(true);
  const done = await s.share.turn();
  s.advance(900);
  done();
  assert.equal(s.share.waits, 0);
  await forwardPicked(polite, input, [token]);
  assert.equal(s.share.waits, 1);
});

/** Four sequences of 7, 12, 5 and 9 rows of the demo model, scoring the last 3 rows of each. */
async function lossCase() {
  const model = await loadModel(new URL("../../models/tiny-gpt2", import.meta.url).pathname);
  const engine = await createTestEngine("fast", model);
  const lengths = [7, 12, 5, 9];
  const ids = lengths.flatMap((n, s) => Array.from({ length: n }, (_, i) => 11 + 97 * s + 13 * i));
  const lossRows: number[] = [], targets: number[] = [];
  let row = 0;
  for (const n of lengths) {
    for (let i = n - 4; i < n - 1; i++) lossRows.push(row + i), targets.push(ids[row + i + 1]);
    row += n;
  }
  const input: LossInput = {
    embeds: engine.embed(ids),
    seqs: lengths.map((length) => ({ length })),
    lossRows: Int32Array.from(lossRows),
    targets: Int32Array.from(targets),
  };
  return { engine, input, C: model.config.nEmbd };
}

Deno.test("sliceLossInput cuts whole sequences within the row budget and weighs them by scored tokens", async () => {
  const { input, C, engine } = await lossCase();
  const slices = sliceLossInput(input, C, 20);
  // 7+12 fit in 20; 5+9 fit in 20.
  assert.deepEqual(slices.map((s) => [s.row, s.rows, s.input.seqs.length]), [[0, 19, 2], [
    19,
    14,
    2,
  ]]);
  assert.deepEqual(slices.map((s) => s.weight), [0.5, 0.5]);
  assert.deepEqual([...slices[1].input.lossRows], [1, 2, 3, 10, 11, 12]);
  // A sequence longer than the budget goes alone; no slice is empty.
  assert.deepEqual(sliceLossInput(input, C, 4).map((s) => s.rows), [7, 12, 5, 9]);
  engine.dispose();
});

Deno.test("a training loss call sliced while serving is busy gives the whole call's loss and gradient", async () => {
  const { engine, input } = await lossCase();
  const whole = await engine.lossAndGrad(input);
  let busy = false;
  // Each slice of about 1 ms: after the first (whole) call has measured its rows' cost.
  const share = new EngineShare({ servingBusy: () => busy, minTrainingShare: 0.99, sliceMs: 1e-9 });
  const polite = share.forTraining(engine);
  await polite.lossAndGrad(input);
  assert.equal(share.slicedCalls, 0);
  busy = true;
  const sliced = await polite.lossAndGrad(input);
  assert.equal(share.slicedCalls, 1);
  assert.ok(
    Math.abs(sliced.loss - whole.loss) < 1e-5 * Math.abs(whole.loss),
    `${sliced.loss} ${whole.loss}`,
  );
  let max = 0, err = 0;
  for (let i = 0; i < whole.gradEmbeds.length; i++) {
    max = Math.max(max, Math.abs(whole.gradEmbeds[i]));
    err = Math.max(err, Math.abs(sliced.gradEmbeds[i] - whole.gradEmbeds[i]));
  }
  assert.ok(max > 0 && err <= 1e-5 * max, `gradient error ${err} of ${max}`);
  assert.equal(sliced.gradEmbeds.length, input.embeds.length);
  engine.dispose();
});
