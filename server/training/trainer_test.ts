import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { ServiceError } from "../errors.ts";
import { createEngine, loadModel } from "../model/mod.ts";
import type { TrainingEvent } from "./events.ts";
import {
  initialTable,
  stepsPerEpochOf,
  Trainer,
  type TrainPlan,
  type ValidationExample,
} from "./trainer.ts";
import type { Engine } from "../model/engine.ts";
import { createSchedule } from "./schedule.ts";
import { encoderTables } from "./encoder_params.ts";

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

Deno.test("NeMo parity: a step's loss and gradient are the mean over micro-batches of each one's token mean", async () => {
  // NeMo: megatron_gpt_model.py v1.20.0:918-923 (loss_func) takes the token mean of a micro-batch,
  // sum(losses * loss_mask) / loss_mask.sum(); Megatron core's forward_step
  // (megatron/core/pipeline_parallel/schedules.py) backpropagates `loss / num_microbatches`; and
  // megatron_gpt_prompt_learning_model.py v1.20.0:320-324 reports `loss_tensor.mean()` over them.
  // Two examples whose answers differ in length (1 and 3 scored tokens), so the weighting shows.
  const a = { taskname: "t", ids: Int32Array.of(V, V + 1, V + 2, 464, 3290, 318), answerStart: 5 };
  const b = {
    taskname: "t",
    ids: Int32Array.of(V, V + 1, V + 2, 3290, 318, 257, 1110),
    answerStart: 4,
  };
  const C = engine.config.nEmbd;
  const table = initialTable(plan.newTasks[0], { engine, encode: () => [1] }, plan.seed);
  /** Each example alone: its token-mean loss and the gradient of its prompt table. */
  const alone = async (e: typeof a) => {
    const embeds = new Float32Array(e.ids.length * C);
    embeds.set(table);
    embeds.set(engine.embed(e.ids.subarray(3)), 3 * C);
    const rows = Int32Array.from(
      { length: e.ids.length - e.answerStart },
      (_, k) => e.answerStart - 1 + k,
    );
    const out = await engine.lossAndGrad({
      embeds,
      seqs: [{ length: e.ids.length }],
      lossRows: rows,
      targets: Int32Array.from(rows, (r) => e.ids[r + 1]),
    });
    return { loss: out.loss, grad: out.gradEmbeds.subarray(0, 3 * C), n: rows.length };
  };
  const [la, lb] = [await alone(a), await alone(b)];
  const norm = (g: (i: number) => number) => {
    let s = 0;
    for (let i = 0; i < 3 * C; i++) s += g(i) ** 2;
    return Math.sqrt(s);
  };
  /** The first step's loss and gradient norm with `microBatchSize` (clipping on, far away). */
  const firstStep = async (microBatchSize: number) => {
    let first: Extract<TrainingEvent, { type: "step" }> | undefined;
    const trainer = new Trainer({
      ...plan,
      optim: { ...plan.optim, gradClip: 1e9 },
      batchSize: 2,
      microBatchSize,
      maxSteps: 1,
      shuffle: false,
    }, { ...DEPS, onEvent: (e) => e.type === "step" && (first ??= e) });
    await trainer.run([a, b], []);
    return first!;
  };
  const close = (x: number, want: number, what: string) =>
    assert(Math.abs(x - want) <= 1e-5 * Math.abs(want), `${what}: ${x} vs ${want}`);
  // Two micro-batches: the plain mean of the two token means (before: weighted 1:3 by tokens).
  const split = await firstStep(1);
  close(split.loss, (la.loss + lb.loss) / 2, "loss, two micro-batches");
  close(split.gradNorm, norm((i) => (la.grad[i] + lb.grad[i]) / 2), "gradient, two micro-batches");
  // One micro-batch: the token mean over both.
  const whole = await firstStep(2);
  const w = (x: { n: number }) => x.n / (la.n + lb.n);
  close(whole.loss, la.loss * w(la) + lb.loss * w(lb), "loss, one micro-batch");
  close(
    whole.gradNorm,
    norm((i) => la.grad[i] * w(la) + lb.grad[i] * w(lb)),
    "gradient, one micro-batch",
  );
});

Deno.test("NeMo parity: the validation loss is the mean over global batches of their micro-batches' token means", async () => {
  // megatron_gpt_prompt_learning_model.py v1.20.0:371 (validation_step: fwd_bwd_step, the mean of
  // the micro-batch means, :320-324) and :432 (validation_epoch_end: the mean over the steps).
  const short = { ...numbered(0), answer: "", record: {} };
  const long = {
    taskname: "t",
    ids: Int32Array.of(V, V + 1, V + 2, 3290, 318, 257, 1110),
    answerStart: 4,
    answer: "",
    record: {},
  };
  const tables = new Map([["t", initialTable(plan.newTasks[0], { engine, encode: () => [1] }, 1)]]);
  const evaluate = (
    examples: ValidationExample[],
    globalBatchSize: number,
    microBatchSize: number,
  ) =>
    new Trainer({
      ...plan,
      validation: { globalBatchSize, microBatchSize, dropLast: false },
    }, { ...DEPS, onEvent: () => {} }).evaluate(tables, examples);
  const ls = (await evaluate([short], 1, 1)).loss, ll = (await evaluate([long], 1, 1)).loss;
  const mixed = (await evaluate([short, long, long, long], 2, 1)).loss;
  // Batches [short, long] and [long, long]: ((ls + ll) / 2 + ll) / 2. Before: tokens weighted alike.
  const want = ((ls + ll) / 2 + ll) / 2;
  assert(Math.abs(mixed - want) <= 1e-5 * want, `${mixed} vs ${want}`);
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
      earlyStopping: {
        monitor: "val_loss",
        mode: "min",
        strict: true,
        patience: 2,
        minDelta: 0.001,
      },
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

/** Four steps at a constant learning rate, validated after each: losses that move. */
const VALIDATED_RUN = {
  optim: { ...plan.optim, lr: 0.05 },
  schedule: { kind: "constant" as const, lr: 0.05 },
  maxSteps: 4,
  maxEpochs: 10,
  valInterval: 1,
};

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
    ...VALIDATED_RUN,
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

/** The same engine, recording the first target of every training call (which example ran). */
function recordingEngine(seen: number[]): Engine {
  return new Proxy(engine, {
    get(target, key, receiver) {
      if (key === "lossAndGrad") {
        return (b: Parameters<Engine["lossAndGrad"]>[0]) => {
          seen.push(b.targets[0]);
          return target.lossAndGrad(b);
        };
      }
      const v = Reflect.get(target, key, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** Example k answers token 400 + k after the same prompt. */
const numbered = (k: number) => ({
  taskname: "t",
  ids: Int32Array.of(V, V + 1, V + 2, 464, 400 + k),
  answerStart: 4,
});

Deno.test("model.data.shuffle: false trains in file order every epoch; true reshuffles", async () => {
  const order = async (shuffle: boolean) => {
    const seen: number[] = [];
    const trainer = new Trainer(
      { ...plan, shuffle, maxSteps: -1, maxEpochs: 2 },
      { ...DEPS, engine: recordingEngine(seen), onEvent: () => {} },
    );
    await trainer.run([0, 1, 2, 3, 4, 5].map(numbered), []);
    return seen.map((t) => t - 400);
  };
  assertEquals(await order(false), [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]);
  // Before, the data was shuffled whatever the configuration said.
  const shuffled = await order(true);
  assert(shuffled.join() !== [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5].join(), `${shuffled}`);
  assertEquals([...shuffled].sort().join(), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5].join());
});

/** The steps a 10-step run reports with log_every_n_steps 4 when each step takes `stepMs`. */
async function reportedSteps(stepMs: number): Promise<number[]> {
  let clock = 0;
  // The clock moves only in the engine's work: each step "takes" stepMs.
  const slow: Engine = {
    name: engine.name,
    config: engine.config,
    embed: (ids) => engine.embed(ids),
    newCache: () => engine.newCache(),
    forkCache: (c) => engine.forkCache(c),
    forward: (input) => engine.forward(input),
    lossAndGrad: (input) => {
      clock += stepMs;
      return engine.lossAndGrad(input);
    },
    dispose: () => {},
  };
  const steps: number[] = [];
  const trainer = new Trainer({ ...plan, maxSteps: 10, maxEpochs: 10, logEveryNSteps: 4 }, {
    ...DEPS,
    engine: slow,
    now: () => clock,
    onEvent: (e) => e.type === "step" && steps.push(e.step),
  });
  await trainer.run([example], []);
  return steps;
}

Deno.test("NeMo parity: the schedule spans trainer.max_steps when it is set, even when the epochs end the run first", async () => {
  // NeMo modelPT.py v1.20.0:616-632 (setup_optimization): `if self.trainer.max_steps < 0:` the
  // scheduler's length is computed from max_epochs, `else: optim_config['sched']['max_steps'] =
  // self._trainer.max_steps`. Three examples, batch 1, one epoch: 3 steps of a 100-step schedule.
  const lrs: number[] = [];
  const linear = { kind: "linear" as const, lr: 0.01, warmupSteps: 0, minLr: 0 };
  const trainer = new Trainer({ ...plan, maxSteps: 100, maxEpochs: 1, schedule: linear }, {
    ...DEPS,
    onEvent: (e) => e.type === "step" && lrs.push(e.learningRate),
  });
  await trainer.run([example, example, example], []);
  const nemo = createSchedule({ ...linear, maxSteps: 100 });
  // Before: a 3-step schedule, down to 0 at the third step (0.01, 0.00667, 0.00333).
  assertEquals(lrs, [0, 1, 2].map((s) => nemo.lrAt(s)));
});

Deno.test("trainer.log_every_n_steps: a step event every n steps and at the last", async () => {
  assertEquals(await reportedSteps(0), [4, 8, 10]); // before: every step
});

Deno.test("progress: a step event at least once a second whatever log_every_n_steps is, each step when steps are slower", async () => {
  // 400 ms steps: a second has passed at steps 3 and 7; 4 and 8 are logged steps.
  assertEquals(await reportedSteps(400), [3, 4, 7, 8, 10]);
  // Before: [4, 8, 10], 1.6 s without progress between them.
  assertEquals(await reportedSteps(1500), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

Deno.test("validation batches: validation_drop_last leaves out the last partial global batch", async () => {
  const val: ValidationExample[] = [0, 1, 2].map((k) => ({
    ...numbered(k),
    answer: "",
    record: {},
  }));
  const tables = new Map([["t", initialTable(plan.newTasks[0], { engine, encode: () => [1] }, 1)]]);
  const evaluate = (validation: TrainPlan["validation"], examples = val) =>
    new Trainer({ ...plan, validation }, { ...DEPS, onEvent: () => {} }).evaluate(tables, examples);
  const all = await evaluate({ globalBatchSize: 2, microBatchSize: 1, dropLast: false });
  const dropped = await evaluate({ globalBatchSize: 2, microBatchSize: 1, dropLast: true });
  const firstTwo = await evaluate(
    { globalBatchSize: 2, microBatchSize: 2, dropLast: false },
    val.slice(0, 2),
  );
  // Before, every validation example counted whatever validation_drop_last said.
  assert(Math.abs(all.loss - dropped.loss) > 1e-4, `${all.loss} ${dropped.loss}`);
  // Same examples in different micro-batches: equal up to float32 summation order (the products
  // of a few rows and of many take different kernels).
  assert(
    Math.abs(dropped.loss - firstTwo.loss) < 1e-6 * Math.abs(firstTwo.loss),
    `${dropped.loss} ${firstTwo.loss}`,
  );
});

/** Training pushes towards 318 while validation expects 257: the loss rises after step 1. */
function risingValidation(): ValidationExample[] {
  return [{
    ...example,
    ids: Int32Array.of(V, V + 1, V + 2, 464, 3290, 257),
    answer: "",
    record: {},
  }];
}

const CHECKPOINT = {
  monitor: "val_loss" as const,
  mode: "min" as const,
  saveTopK: 1,
  saveBestModel: true,
  saveLast: true,
  filename: "{val_loss:.3f}-{step}",
};

Deno.test("checkpoint monitor mode and save_best_model choose the tables the run returns", async () => {
  const run = async (checkpoint: TrainPlan["checkpoint"]) => {
    const losses: number[] = [];
    const trainer = new Trainer({
      ...plan,
      ...VALIDATED_RUN,
      checkpoint,
    }, { ...DEPS, onEvent: (e) => e.type === "validation" && losses.push(e.loss) });
    const res = await trainer.run([example], risingValidation());
    return { res, losses };
  };
  const min = await run(CHECKPOINT);
  assertEquals(min.res.bestValLoss, Math.min(...min.losses));
  // mode max keeps the highest val_loss (before, the best was always the lowest).
  const max = await run({ ...CHECKPOINT, mode: "max" });
  assertEquals(max.res.bestValLoss, Math.max(...max.losses));
  // save_best_model false: the last step's tables, with the last validation's loss.
  const last = await run({ ...CHECKPOINT, saveBestModel: false });
  assertEquals(last.res.bestValLoss, last.losses.at(-1));
  const differ = (a: Float32Array, b: Float32Array) => a.some((x, i) => Math.abs(x - b[i]) > 1e-7);
  assert(differ(min.res.tables.get("t")!, last.res.tables.get("t")!));
});

Deno.test("save_top_k keeps the k best checkpoints by the monitor, named by filename", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const losses: number[] = [];
    const trainer = new Trainer({
      ...plan,
      ...VALIDATED_RUN,
      checkpoint: { ...CHECKPOINT, saveTopK: 2, filename: "tune--{val_loss:.3f}-{step}" },
    }, {
      ...DEPS,
      checkpointDir: dir,
      onEvent: (e) => e.type === "validation" && losses.push(e.loss),
    });
    await trainer.run([example], risingValidation());
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) =>
      n.startsWith("tune--")
    ).sort();
    const expected = losses.map((l, i) => ({
      l,
      name: `tune--val_loss=${l.toFixed(3)}-step=${i + 1}`,
    }))
      .sort((a, b) => a.l - b.l).slice(0, 2).map((x) => x.name).sort();
    assertEquals(names, expected); // before: only "best" and "latest"
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("validation generates answers only with report_validation_metric, decoding as model.inference says", async () => {
  const texts: string[] = [];
  const val = [{ ...example, answer: "x", record: {} }];
  const run = async (generation: TrainPlan["generation"]) => {
    texts.length = 0;
    const trainer = new Trainer({ ...plan, maxSteps: 1, valInterval: 1, generation }, {
      ...DEPS,
      decode: (ids) => ids.join(","),
      newMetrics: () => ({ add: (_t, pred) => texts.push(pred), result: () => ({}) }),
      onEvent: () => {},
    });
    await trainer.run([example], val);
    return [...texts];
  };
  // Before, answers were generated (greedily) at every validation.
  assertEquals(await run(undefined), []);
  const sampling = {
    minNewTokens: 0,
    doSample: false,
    temperature: 1,
    topK: 0,
    topP: 1,
    seed: 7,
    repetitionPenalty: 1,
    stop: [],
    logprobs: false,
  };
  const greedy = await run({ limit: 8, maxNewTokens: 6, batchSize: 1, sampling });
  assertEquals(greedy.length, 1);
  const sampled = await run({
    limit: 8,
    maxNewTokens: 6,
    batchSize: 1,
    sampling: { ...sampling, doSample: true, temperature: 5 },
  });
  assert(sampled[0] !== greedy[0], `sampling at temperature 5 gave the greedy answer ${greedy[0]}`);
  // min_tokens_to_generate: EOS is suppressed until that many tokens exist (the answer is all
  // of them when generation continues the whole prompt).
  const long = await run({
    limit: 8,
    maxNewTokens: 6,
    batchSize: 1,
    sampling: { ...sampling, minNewTokens: 6 },
    match: "answer",
  });
  assertEquals(long[0].split(",").length, 6);
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

Deno.test("NeMo parity: an LSTM encoder's dropout acts in each micro-batch's training pass, never in validation", async () => {
  // NeMo prompt_encoder.py v1.20.0:339-349: in training every forward runs the encoder again
  // (nn.LSTM in train mode: dropout between its layers, :237-244); in eval the table is computed
  // once with dropout off, and that is what validation and inference use.
  // One scored token each, so micro-batch means and the batch's token mean agree.
  const b = { ...example, ids: Int32Array.of(V, V + 1, V + 2, 3290, 318, 257), answerStart: 5 };
  const val = [{ ...example, answer: "", record: {} }];
  const run = async (dropout: number, microBatchSize: number) => {
    const events: TrainingEvent[] = [];
    const trainer = new Trainer({
      ...plan,
      style: "p-tuning",
      encoder: { kind: "lstm", hiddenSize: 8, numLayers: 2, dropout },
      maxSteps: 1,
      valInterval: 1,
      batchSize: 2,
      microBatchSize,
      shuffle: false,
    }, { ...DEPS, onEvent: (e) => events.push(e) });
    const res = await trainer.run([example, b], val);
    const loss = (type: "step" | "validation") =>
      events.flatMap((e) => (e.type === type ? [e.loss] : []))[0];
    return { trainer, res, stepLoss: loss("step"), valLoss: loss("validation") };
  };
  const plain1 = await run(0, 1), plain2 = await run(0, 2);
  const drop1 = await run(0.5, 1), drop2 = await run(0.5, 2);
  // Without dropout, splitting the batch in two micro-batches of one changes nothing here...
  assert(
    Math.abs(plain1.stepLoss - plain2.stepLoss) < 1e-5,
    `${plain1.stepLoss} vs ${plain2.stepLoss}`,
  );
  // ...dropout changes the training loss, and each micro-batch draws its own masks.
  assert(Math.abs(drop1.stepLoss - plain1.stepLoss) > 1e-4, "dropout left the training pass alone");
  assert(
    Math.abs(drop1.stepLoss - drop2.stepLoss) > 1e-4,
    "two micro-batches shared one dropout draw",
  );
  // Validation measured the eval-mode tables the run returns, which the stored encoder gives.
  const again = await drop1.trainer.evaluate(drop1.res.tables, val);
  assert(Math.abs(again.loss - drop1.valLoss) < 1e-6, `${again.loss} vs ${drop1.valLoss}`);
  const st = drop1.res.encoderState!;
  assertEquals(st.config.dropout, 0.5);
  const p = encoderTables([{ task: "t", virtualTokens: 3 }], {
    kind: "lstm",
    hiddenSize: 8,
    numLayers: 2,
    dropout: 0.5,
    seed: 0,
    hidden: engine.config.nEmbd,
    state: st.tensors,
  });
  const fromEncoder = p.tables().get("t")!;
  p.dispose();
  assertEquals(fromEncoder, drop1.res.tables.get("t"));
});
