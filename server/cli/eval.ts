/**
 * `deno task eval --task NAME --data FILE.jsonl`: generates each record's answer with the task's
 * stored prompt (greedy, KV cache) and reports the task's metrics as JSON. `--min KEY=VALUE`
 * turns a metric into a pass/fail check (exit 1 below it): accuracy checks live here, not in the
 * default test run.
 */
import { openRuntime } from "../bootstrap.ts";
import { flag, parseArgs, runCommand } from "./args.ts";
import { greedyGenerate } from "../model/generate.ts";
import { loadDataset } from "../prompts/dataset.ts";
import { embedWithPrompt } from "../training/batch.ts";
import { MetricAccumulator, type MetricKind } from "../training/metrics.ts";

const USAGE =
  `usage: deno task eval --task NAME --data FILE.jsonl [--version N] [--limit N] [--max-new N]
       [--metric exact_match|squad|intent_slot] [--min METRIC=VALUE] [--model DIR] [--registry DIR] [--backend B]`;

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv, [
    "task",
    "data",
    "version",
    "limit",
    "max-new",
    "metric",
    "min",
    "model",
    "registry",
    "backend",
    "batch",
  ], ["help"]);
  if (args.flags.has("help")) {
    console.log(USAGE);
    return 0;
  }
  const task = flag(args, "task"), data = flag(args, "data");
  if (!task || !data) throw new RangeError(`--task and --data are required\n${USAGE}`);
  const rt = await openRuntime({
    modelDir: flag(args, "model", "MODEL_DIR"),
    registryDir: flag(args, "registry", "REGISTRY_DIR"),
    backend: flag(args, "backend", "BACKEND"),
  });
  const version = flag(args, "version");
  const tv = await rt.store.get(task, version ? Number(version) : undefined);
  const templates = new Map([[task, tv.template]]);
  const ds = await loadDataset(data, templates, rt.tokenizer, { forInference: true });
  const limit = Number(flag(args, "limit") ?? ds.examples.length);
  const examples = ds.examples.slice(0, limit);
  const started = performance.now();
  const prompts = examples.map((e) => embedWithPrompt(rt.engine, e.ids, tv.table, task));
  const outs = await greedyGenerate(rt.engine, prompts, {
    maxNewTokens: Number(flag(args, "max-new") ?? 32),
    eosId: rt.tokenizer.eosId,
    batchSize: Number(flag(args, "batch") ?? 32),
  });
  const acc = new MetricAccumulator({
    [task]: {
      answerField: tv.template.answer_field,
      metric: flag(args, "metric") as MetricKind | undefined,
    },
  });
  outs.forEach((ids, i) =>
    acc.add(task, rt.tokenizer.decode(ids.filter((t) => t !== rt.tokenizer.eosId)), ds.records[i])
  );
  const metrics = acc.result()[task];
  const seconds = (performance.now() - started) / 1000;
  console.log(
    JSON.stringify({
      task,
      version: tv.version,
      data,
      examples: examples.length,
      dropped: ds.dropped,
      seconds: Math.round(seconds * 10) / 10,
      metrics,
    }),
  );
  const min = flag(args, "min");
  if (min) {
    const [key, value] = min.split("=");
    if (!(key in metrics)) {
      throw new RangeError(
        `--min: metric "${key}" is not among ${Object.keys(metrics).join(", ")}`,
      );
    }
    if (metrics[key] < Number(value)) {
      console.error(`eval: ${task} ${key} ${metrics[key].toFixed(4)} is below ${value}`);
      return 1;
    }
  }
  return 0;
}

if (import.meta.main) await runCommand("eval", main);
