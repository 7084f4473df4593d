/**
 * Classification by scoring against free generation: one Infer of 64 sentiment requests, each
 * ranking the 3 labels (`choices`), against the same 64 requests generated greedily (up to 3
 * tokens: a label and its EOS), side by side in one run on the same scheduler, engine and task
 * (the PEFT soft prompt of test/fixtures/golden.safetensors as a sentiment task, on the shipped
 * model), over the first 64 sentences of the sentiment test split. Also reports each way's
 * accuracy on those sentences.
 *
 * Run: deno run -A bench/scoring_bench.ts [--backend fast] [--requests 64] [--repeat 5]
 * Prints one JSON line.
 */
import { parseArgs } from "node:util";
import { createEngine, loadModel } from "../server/model/mod.ts";
import { loadTokenizer } from "../server/model/tokenizer.ts";
import { goldenSentimentTask } from "../server/serving/testing/golden_task.ts";
import type { InferenceRequest } from "../server/serving/inference_service.ts";
import { fingerprintOf } from "../server/registry/fingerprint.ts";
import { MemoryTaskStore } from "../server/registry/memory_store.ts";
import { createInference } from "../server/services.ts";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string", default: "fast" },
    requests: { type: "string", default: "64" },
    repeat: { type: "string", default: "5" },
  },
});
const REQUESTS = Number(args.requests), REPEAT = Number(args.repeat);
const LABELS = ["positive", "negative", "neutral"];

const model = await loadModel(`${root}models/tiny-gpt2`);
const tokenizer = await loadTokenizer(`${root}models/tiny-gpt2`);
const engine = await createEngine(model, { backend: args.backend, precision: "fp32" });
const { task } = await goldenSentimentTask();
// The service's own serving path (createInference) over a registry holding the one task.
const fingerprint = fingerprintOf(model);
const store = new MemoryTaskStore({ fingerprint });
await store.put(task.name, {
  template: task.template,
  totalVirtualTokens: task.totalVirtualTokens,
  hiddenSize: model.config.nEmbd,
  table: task.table!,
  fingerprint,
  source: "register",
});
const { scheduler, inference: infer } = createInference({ model, tokenizer, engine, store }, {
  maxSlots: 2,
  maxVirtualTokens: 16,
  servingLimits: { maxBatchSize: REQUESTS },
  maxInferBatch: REQUESTS,
});
const records = Deno.readTextFileSync(`${root}data/splits/sentiment_test.jsonl`).trim().split("\n")
  .slice(0, REQUESTS).map((l) => JSON.parse(l) as { sentence: string; label: string });

const scored: InferenceRequest[] = records.map((r) => ({
  task: "sentiment",
  fields: { sentence: r.sentence },
  choices: LABELS,
}));
const generated: InferenceRequest[] = records.map((r) => ({
  task: "sentiment",
  fields: { sentence: r.sentence },
  options: { maxNewTokens: 3 },
}));

async function time(reqs: InferenceRequest[]): Promise<{ ms: number; texts: string[] }> {
  const t0 = performance.now();
  const out = await infer.inferMany(reqs);
  const ms = performance.now() - t0;
  return { ms, texts: out.map((o) => (o.ok ? o.result.text.trim() : "(error)")) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
await time(scored); // warm-up: the slot, the arena
await time(generated);
const runs = { choices: [] as number[], greedy: [] as number[] };
let last = { choices: [] as string[], greedy: [] as string[] };
for (let i = 0; i < REPEAT; i++) {
  // Alternated, so both see the same machine load.
  const a = await time(scored), b = await time(generated);
  runs.choices.push(a.ms);
  runs.greedy.push(b.ms);
  last = { choices: a.texts, greedy: b.texts };
}
const accuracy = (texts: string[]) =>
  texts.filter((t, i) => t === records[i].label).length / records.length;
await scheduler.close();
engine.dispose();
const result = {
  requests: REQUESTS,
  labels: LABELS,
  backend: engine.name,
  choices_ms: Math.round(median(runs.choices) * 10) / 10,
  greedy_ms: Math.round(median(runs.greedy) * 10) / 10,
  choices_vs_greedy: Math.round((median(runs.choices) / median(runs.greedy)) * 100) / 100,
  choices_accuracy: accuracy(last.choices),
  greedy_accuracy: accuracy(last.greedy),
  repeat: REPEAT,
};
console.log(JSON.stringify(result));
