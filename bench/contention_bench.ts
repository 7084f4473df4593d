/**
 * Inference first: Infer latency under load, with and without a training job running beside it.
 * The real services in-process (the shipped model, the default engine), three tasks; 50 clients
 * each make 40 Infer calls (the load of issue 25) of 4 requests (2 new tokens), all at once:
 * - idle: no training;
 * - training, inference first: a training job runs (TRAINING_MIN_SHARE 10%, the default);
 * - training, no priority: the same with training never waiting (share 100%: the state before);
 * - idle, engine worker: no training, the engine in a worker thread (the service's default,
 *   ENGINE_WORKER) instead of on the event loop: what the worker costs at this load.
 * Reports p50/p99 per call and requests/s, and the training steps done while each load ran.
 *
 * Run: deno run -A bench/contention_bench.ts [--clients 50] [--calls 40]. Prints one JSON line.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../server/bootstrap.ts";
import { validateTemplate } from "../server/prompts/template.ts";
import { createServices } from "../server/services.ts";
import type { InferenceRequest } from "../server/serving/inference_service.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    clients: { type: "string", default: "50" },
    calls: { type: "string", default: "40" },
  },
});
const CLIENTS = Number(args.clients), CALLS = Number(args.calls);
const root = new URL("../", import.meta.url).pathname;

const dir = await Deno.makeTempDir();
const inProcess = await openRuntime({ registryDir: `${dir}/registry` });
let rt = inProcess;
const C = rt.model.config.nEmbd;
const TASKS = ["five", "ten", "twenty"];
for (const [i, name] of TASKS.entries()) {
  const n = [5, 10, 20][i];
  await inProcess.store.put(name, {
    template: validateTemplate({
      taskname: name,
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      total_virtual_tokens: n,
      virtual_token_splits: [n],
    }, "bench"),
    totalVirtualTokens: n,
    hiddenSize: C,
    table: inProcess.engine.embed(Array.from({ length: n }, (_, k) => 100 + 7 * k + i)),
    fingerprint: rt.fingerprint,
    source: "register",
  });
}
const sentences = Deno.readTextFileSync(`${root}data/splits/sentiment_test.jsonl`).trim()
  .split("\n").slice(0, 40).map((l) => JSON.parse(l).sentence as string);
const trainRecords = Deno.readTextFileSync(`${root}data/splits/sentiment_train.jsonl`).trim()
  .split("\n").slice(0, 64).map((l) => JSON.parse(l));

const CONFIG = `
name: contention
trainer: { max_steps: 100000, max_epochs: 100000, val_check_interval: 100000 }
exp_manager: { create_checkpoint_callback: false }
model:
  virtual_prompt_style: prompt-tuning
  new_tasks: [sentiment]
  task_templates:
    - taskname: sentiment
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
      total_virtual_tokens: 10
      virtual_token_splits: [10]
      truncate_field: sentence
  prompt_tuning: { new_prompt_init_methods: [vocab], new_prompt_init_text: [null] }
  global_batch_size: 16
  micro_batch_size: 8
  optim: { name: adamw, lr: 0.01 }
`;

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor(p * s.length))]);
};

async function load(withTraining: boolean, share?: number) {
  const services = await createServices(rt, {
    dataDir: dir,
    runsDir: `${dir}/runs`,
    servingLimits: { maxBatchSize: 64 },
    trainingMinShare: share,
  });
  services.training.start();
  let steps = 0;
  let jobId: string | undefined;
  if (withTraining) {
    const job = await services.training.submit({
      config: { kind: "yaml", text: CONFIG },
      inline: { train: trainRecords, validation: [] },
    });
    jobId = job.id;
    // Training is under way before the load starts.
    while ((await services.training.get(job.id)).step < 2) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const before = jobId ? (await services.training.get(jobId)).step : 0;
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = 0; i < CALLS; i++) {
      const reqs: InferenceRequest[] = Array.from({ length: 4 }, (_, k) => ({
        task: TASKS[(c + i + k) % 3],
        fields: { sentence: sentences[(c * 7 + i * 3 + k) % sentences.length] },
        options: { maxNewTokens: 2 },
      }));
      const s = performance.now();
      const out = await services.inference.inferMany(reqs);
      if (!out.every((o) => o.ok)) throw new Error("an Infer request failed");
      lat.push(performance.now() - s);
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  if (jobId) {
    steps = (await services.training.get(jobId)).step - before;
    await services.training.cancel(jobId);
  }
  await services.close();
  return {
    p50_ms: pct(lat, 0.5),
    p99_ms: pct(lat, 0.99),
    requests_per_s: Math.round((lat.length * 4) / wall),
    wall_s: Math.round(wall * 10) / 10,
    ...(withTraining
      ? { training_steps: steps, training_steps_per_s: Math.round(steps / wall * 10) / 10 }
      : {}),
  };
}

// Warm-up: JIT and engine buffers.
await load(false);
const idle = await load(false);
const first = await load(true);
const before = await load(true, 1);
rt = await openRuntime({ registryDir: `${dir}/registry`, engineWorker: true });
await load(false);
const worker = await load(false);
rt.engine.dispose();
await Deno.remove(dir, { recursive: true });
console.log(JSON.stringify({
  bench: "contention",
  engine: inProcess.engine.name,
  load: `${CLIENTS} clients x ${CALLS} Infer calls of 4 requests (3 tasks), 2 new tokens`,
  idle,
  training_inference_first: first,
  training_no_priority: before,
  idle_engine_worker: worker,
  worker_vs_in_process_requests: Math.round(worker.requests_per_s / idle.requests_per_s * 100) /
    100,
  p99_with_training_vs_idle: Math.round(first.p99_ms / idle.p99_ms * 100) / 100,
  p99_no_priority_vs_idle: Math.round(before.p99_ms / idle.p99_ms * 100) / 100,
}));
Deno.exit(0);
