/**
 * Resident memory of the service's pieces: the model loaded with its engine, then with 1,000
 * registered tasks (10 virtual tokens each) stored in a registry and resident in prompt slots.
 * Run: deno run -A bench/memory_bench.ts [--tasks N] [--backend fast]. Prints one JSON line.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../server/bootstrap.ts";
import { validateTemplate } from "../server/prompts/template.ts";
import { PromptSlots } from "../server/serving/prompt_slots.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    tasks: { type: "string", default: "1000" },
    backend: { type: "string", default: "fast" },
  },
});
const N = Number(args.tasks);
const mib = (b: number) => Math.round(b / 2 ** 20 * 10) / 10;
const rss = () => Deno.memoryUsage().rss;

const base = rss();
const dir = await Deno.makeTempDir();
try {
  const rt = await openRuntime({ registryDir: dir, backend: args.backend });
  const loaded = rss();
  const C = rt.model.config.nEmbd, V = 10;
  const template = validateTemplate({
    taskname: "t",
    prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
    total_virtual_tokens: V,
    virtual_token_splits: [V],
  }, "bench template");
  for (let i = 0; i < N; i++) {
    const name = `task_${i}`;
    await rt.store.put(name, {
      template: { ...template, taskname: name },
      totalVirtualTokens: V,
      hiddenSize: C,
      table: Float32Array.from({ length: V * C }, (_, k) => Math.sin(i + k)),
      fingerprint: rt.fingerprint,
      source: "register",
    });
  }
  const registered = rss();
  const slots = new PromptSlots({
    vocabSize: rt.model.config.vocabSize,
    hidden: C,
    wte: rt.model.weights.wte,
    maxSlots: N,
    maxVirtualTokens: V,
  });
  for (let i = 0; i < N; i++) slots.acquire(await rt.store.get(`task_${i}`)).release();
  const resident = rss();
  console.log(JSON.stringify({
    bench: "memory",
    engine: rt.engine.name,
    rss_start_mib: mib(base),
    rss_model_loaded_mib: mib(loaded),
    rss_after_registering_mib: mib(registered),
    rss_with_resident_tasks_mib: mib(resident),
    tasks: N,
    table_bytes_each: V * C * 4,
    per_task_kib: Math.round((resident - loaded) / N / 1024 * 10) / 10,
  }));
} finally {
  await Deno.remove(dir, { recursive: true });
}
