import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { ServiceError } from "../errors.ts";
import { createEngine, loadModel } from "../model/mod.ts";
import type { TrainingEvent } from "./events.ts";
import { initialTable, stepsPerEpochOf, Trainer, type TrainPlan } from "./trainer.ts";
import { encoderTables } from "./prompt_params.ts";

const root = new URL("../../", import.meta.url).pathname;
const model = await loadModel(`${root}models/tiny-gpt2`);
const engine = await createEngine(model, { backend: "fast" });
const V = model.config.vocabSize;

const plan: TrainPlan = {
  style: "prompt-tuning",
  newTasks: [{ task: "t", virtualTokens: 3, init: { method: "vocab" } }],
  optim: { lr: 0.01, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, decoupled: true, gradClip: 0 },
  schedule: { kind: "constant", lr: 0.01 },
  maxEpochs: 1,
  maxSteps: 3,
  batchSize: 1,
  valInterval: 0,
  valGenerateLimit: 0,
  maxAnswerTokens: 1,
  seed: 1,
};
/** What every trainer here needs besides its events: the model and no text or metrics. */
const DEPS = {
  engine,
  encode: () => [1],
  decode: () => "",
  eosId: 50256,
  newMetrics: () => ({ add() {}, result: () => ({}) }),
};

// [v0 v1 v2] 464 3290 | 318 (answer)
const example = {
  taskname: "t",
  ids: Int32Array.of(V, V + 1, V + 2, 464, 3290, 318),
  answerStart: 5,
};

Deno.test("Trainer gives the event loop a turn between steps that take long", async () => {
  let clock = 0;
  let timerRanBeforeStep2: boolean | undefined;
  let fired = false;
  const onEvent = (e: TrainingEvent) => {
    if (e.type !== "step") return;
    if (e.step === 1) setTimeout(() => (fired = true), 0);
    if (e.step === 2) timerRanBeforeStep2 = fired;
  };
  const trainer = new Trainer(plan, {
    ...DEPS,
    onEvent,
    now: () => (clock += 100), // every step "takes" 100 ms
  });
  const res = await trainer.run([example, example, example], []);
  assertEquals(res.steps, 3);
  assertEquals(timerRanBeforeStep2, true);
});

Deno.test("Trainer's micro-batches give the step the whole batch would", async () => {
  // Two examples with answers of different lengths, so the weighting matters.
  const a = { taskname: "t", ids: Int32Array.of(V, V + 1, V + 2, 464, 3290, 318), answerStart: 5 };
  const b = {
    taskname: "t",
    ids: Int32Array.of(V, V + 1, V + 2, 3290, 318, 257, 1110),
    answerStart: 4,
  };
  const run = async (microBatchSize: number) => {
    const trainer = new Trainer({ ...plan, batchSize: 2, microBatchSize, maxSteps: 2 }, {
      ...DEPS,
      onEvent: () => {},
    });
    return (await trainer.run([a, b], [])).tables.get("t")!;
  };
  const whole = await run(2), split = await run(1);
  let err = 0;
  for (let i = 0; i < whole.length; i++) err = Math.max(err, Math.abs(whole[i] - split[i]));
  assertEquals(err < 1e-5, true, `max difference ${err}`);
});

Deno.test("Trainer stops early when validation loss stops improving by min_delta", async () => {
  const events: TrainingEvent[] = [];
  const val = [{ ...example, answer: "", record: {} }];
  const trainer = new Trainer(
    {
      ...plan,
      optim: { ...plan.optim, lr: 0 },
      schedule: { kind: "constant", lr: 0 }, // nothing moves: the loss cannot improve
      maxSteps: 10,
      maxEpochs: 10,
      batchSize: 1,
      valInterval: 1,
      earlyStopping: { patience: 2, minDelta: 0.001 },
    },
    {
      ...DEPS,
      onEvent: (e) => events.push(e),
    },
  );
  const res = await trainer.run([example], val);
  // Validation 1 sets the best; 2 and 3 fail to improve it: patience 2 is used up at step 3.
  assertEquals(events.filter((e) => e.type === "validation").length, 3);
  assertEquals(res.earlyStopped, true);
  assertEquals(res.steps, 3);
});

Deno.test("Trainer decays weights as its optimiser says: Adam with L2 (NeMo's adam) differs from AdamW", async () => {
  const run = async (decoupled: boolean) => {
    const trainer = new Trainer({
      ...plan,
      optim: { ...plan.optim, weightDecay: 0.5, decoupled },
      maxSteps: 2,
    }, {
      ...DEPS,
      onEvent: () => {},
    });
    return (await trainer.run([example], [])).tables.get("t")!;
  };
  const adamw = await run(true), adamL2 = await run(false);
  let diff = 0;
  for (let i = 0; i < adamw.length; i++) diff = Math.max(diff, Math.abs(adamw[i] - adamL2[i]));
  // Before, the trainer always ran AdamW whatever optim.name said: the two were identical.
  assertEquals(diff > 1e-6, true, `max difference ${diff}`);
});

Deno.test("Trainer returns the p-tuning encoder that produced its (best) tables, not the last step's", async () => {
  // Training pushes the answer towards token 318 while validation expects 257 after the same
  // prompt: validation loss rises after the first step, so the best point is not the last.
  const val = [{
    ...example,
    ids: Int32Array.of(V, V + 1, V + 2, 464, 3290, 257),
    answer: "",
    record: {},
  }];
  const events: TrainingEvent[] = [];
  const trainer = new Trainer({
    ...plan,
    style: "p-tuning",
    encoder: { kind: "mlp", hiddenSize: 16, numLayers: 2 },
    optim: { ...plan.optim, lr: 0.05 },
    schedule: { kind: "constant", lr: 0.05 },
    maxSteps: 4,
    maxEpochs: 10,
    valInterval: 1,
  }, {
    ...DEPS,
    onEvent: (e) => events.push(e),
  });
  const res = await trainer.run([example], val);
  const losses = events.flatMap((e) => (e.type === "validation" ? [e.loss] : []));
  const bestAt = losses.indexOf(Math.min(...losses));
  assert(bestAt < losses.length - 1, `the best validation must come before the last: ${losses}`);
  const st = res.encoderState!;
  const p = encoderTables([{ task: "t", virtualTokens: 3 }], {
    kind: st.kind,
    hiddenSize: 16,
    numLayers: 2,
    seed: 0,
    hidden: engine.config.nEmbd,
    state: st.tensors,
  });
  const fromEncoder = p.tables().get("t")!;
  p.dispose();
  const table = res.tables.get("t")!;
  let diff = 0;
  for (let k = 0; k < table.length; k++) diff = Math.max(diff, Math.abs(table[k] - fromEncoder[k]));
  // Before, the encoder was the last step's while the table was the best point's.
  assert(diff < 1e-5, `the returned encoder gives a table ${diff} away from the returned one`);
});

Deno.test("An epoch is whole batches only, as NeMo's sampler drops the last partial batch", async () => {
  assertEquals(stepsPerEpochOf(10, 4), 2); // before: 3, the last batch of 2
  assertEquals(stepsPerEpochOf(8, 4), 2);
  assertThrows(() => stepsPerEpochOf(3, 4), ServiceError, "larger than the training set");
  const events: TrainingEvent[] = [];
  const trainer = new Trainer({ ...plan, batchSize: 4, maxSteps: -1, maxEpochs: 1 }, {
    ...DEPS,
    onEvent: (e) => events.push(e),
  });
  const res = await trainer.run(Array.from({ length: 10 }, () => example), []);
  assertEquals(res.steps, 2);
  const started = events.find((e) => e.type === "started");
  assertEquals(started?.type === "started" ? started.totalSteps : -1, 2);
});

Deno.test("initialTable(): NeMo's random is Xavier normal, PEFT's N(0, 1); vocab samples the whole vocabulary", () => {
  const C = engine.config.nEmbd, n = 64;
  const stdOf = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
  const t = (method: "random" | "peft_random" | "vocab") =>
    initialTable(
      { task: "t", virtualTokens: n, init: { method } },
      { engine, encode: () => [] },
      3,
    );
  const xavier = Math.sqrt(2 / (n + C));
  assert(Math.abs(stdOf(t("random")) / xavier - 1) < 0.05, `random std ${stdOf(t("random"))}`);
  assert(
    Math.abs(stdOf(t("peft_random")) - 1) < 0.05,
    `peft_random std ${stdOf(t("peft_random"))}`,
  );
  // Every vocab row is a word embedding; before, only ids below 5000 were drawn.
  const rows = t("vocab");
  const V = engine.config.vocabSize;
  const wte = engine.embed(Array.from({ length: V }, (_, i) => i)); // [V, C]
  let above5000 = 0;
  for (let r = 0; r < n; r++) {
    let found = -1;
    for (let id = 0; id < V && found < 0; id++) {
      let same = true;
      for (let k = 0; k < C && same; k++) same = wte[id * C + k] === rows[r * C + k];
      if (same) found = id;
    }
    assert(found >= 0, `row ${r} is no word embedding`);
    if (found >= 5000) above5000++;
  }
  assert(above5000 > 0, "no row drawn from ids above 5000");
});

Deno.test("Trainer builds the plan's encoder kind with its initStd (NeMo's tpmlp)", async () => {
  const run = async (initStd?: number) => {
    const trainer = new Trainer({
      ...plan,
      style: "p-tuning",
      encoder: { kind: "tpmlp", hiddenSize: 16, numLayers: 2, initStd },
      // lr 0: the stored encoder is the initial one, so it shows how it was initialised.
      optim: { ...plan.optim, lr: 0 },
      schedule: { kind: "constant", lr: 0 },
      maxSteps: 1,
    }, { ...DEPS, onEvent: () => {} });
    return (await trainer.run([example], [])).encoderState!;
  };
  const wide = await run(0.5);
  assertEquals(wide.kind, "tpmlp");
  assertEquals(Object.keys(wide.tensors), [
    "embedding.weight",
    "tpmlp.first.weight",
    "tpmlp.first.bias",
    "tpmlp.second.weight",
    "tpmlp.second.bias",
  ]);
  assertEquals(wide.config.init_std, 0.5);
  const narrow = await run(undefined);
  assertEquals(narrow.config.init_std, 0.023);
  // Same seed, so the draws are the same numbers scaled by the std.
  const a = wide.tensors["tpmlp.first.weight"].data, b = narrow.tensors["tpmlp.first.weight"].data;
  for (let i = 0; i < a.length; i++) {
    assert(Math.abs(a[i] / 0.5 - b[i] / 0.023) < 1e-4, `weight ${i}: ${a[i]} vs ${b[i]}`);
  }
});
