/**
 * How long a Health/Check waits while the model works: the service (shipped model, real services,
 * gRPC on loopback) runs a training job (batch 16 of sentiment examples) and, at the same time, a
 * full inference batch (32 requests x 32 tokens), while a client checks health every 10 ms. The
 * worst and p99 latencies are reported with the engine in a worker thread (the service's default)
 * and on the event loop, in the same run.
 *
 *   deno run -A bench/health_bench.ts [--steps 6]
 * Prints one JSON line last.
 */
import { parseArgs } from "node:util";
import { PromptLearningClient } from "../client/client.ts";
import { toStruct } from "../client/struct.ts";
import { openRuntime } from "../server/bootstrap.ts";
import { MemoryTaskStore } from "../server/registry/memory_store.ts";
import { createGrpcServer } from "../server/rpc/server.ts";
import { createServices } from "../server/services.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: { steps: { type: "string", default: "6" } },
});
const root = new URL("../", import.meta.url).pathname;
const records = Deno.readTextFileSync(`${root}data/splits/sentiment_train.jsonl`).split("\n")
  .filter((l) => l.trim()).slice(0, 64).map((l) => toStruct(JSON.parse(l)));
const HIDDEN_TABLE = (h: number) => Array.from({ length: 10 * h }, (_, i) => Math.sin(i) * 0.05);

async function measure(engineWorker: boolean) {
  const rt = await openRuntime({ registryDir: await Deno.makeTempDir(), engineWorker });
  const store = new MemoryTaskStore({ fingerprint: rt.fingerprint });
  const services = await createServices({ ...rt, store }, { dataDir: root, valGenerateLimit: 0 });
  services.training.start();
  const server = createGrpcServer(services, { port: 0 });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  const template = {
    promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
    totalVirtualTokens: 10,
    virtualTokenSplits: [10],
    answerField: "label",
  };
  await client.registerTask({
    name: "serve",
    template,
    table: { rows: 10, hidden: rt.model.config.nEmbd, values: HIDDEN_TABLE(rt.model.config.nEmbd) },
  });
  const latencies: number[] = [];
  let busy = true;
  const prober = (async () => {
    while (busy) {
      const t0 = performance.now();
      await client.health();
      latencies.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const t0 = performance.now();
  const training = (async () => {
    for await (
      const e of client.train({
        config: {
          name: "load",
          newTasks: ["sentiment"],
          taskTemplates: [{ ...template, taskname: "sentiment" }],
          virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_PROMPT_TUNING",
          promptTuning: { initMethod: "INIT_METHOD_TEXT", initText: "sentiment" },
          optim: { lr: 0.01 },
          maxSteps: Number(args.steps),
          maxEpochs: 100,
          globalBatchSize: 16,
          microBatchSize: 16,
          trainDs: { records },
        },
      })
    ) if (e.event === "failed") throw new Error(e.failed!.reason);
  })();
  const inference = client.infer(Array.from({ length: 32 }, (_, i) => ({
    task: "serve",
    fields: { sentence: `load ${i}` },
    maxNewTokens: 32,
    minNewTokens: 32,
  })));
  await Promise.all([training, inference]);
  const loadMs = performance.now() - t0;
  busy = false;
  await prober;
  client.close();
  await server.shutdown({ graceMs: 1000 });
  await services.close();
  rt.engine.dispose();
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    engine_worker: engineWorker,
    checks: sorted.length,
    worst_ms: Math.round(sorted.at(-1)! * 10) / 10,
    p99_ms: Math.round(sorted[Math.floor(sorted.length * 0.99)] * 10) / 10,
    p50_ms: Math.round(sorted[Math.floor(sorted.length / 2)] * 10) / 10,
    load_seconds: Math.round(loadMs / 100) / 10,
  };
}

const worker = await measure(true);
console.error(`engine in a worker: worst ${worker.worst_ms} ms, p99 ${worker.p99_ms} ms`);
const inline = await measure(false);
console.error(`engine on the event loop: worst ${inline.worst_ms} ms, p99 ${inline.p99_ms} ms`);
console.log(JSON.stringify({ worker, event_loop: inline }));
Deno.exit(0);
