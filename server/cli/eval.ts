/**
 * `deno task eval --task NAME --data FILE.jsonl`: generates each record's answer with the task's
 * stored prompt (greedy, KV cache) and reports the task's metrics as JSON. `--min KEY=VALUE`
 * turns a metric into a pass/fail check (exit 1 below it): accuracy checks live here, not in the
 * default test run.
 *
 * SQuAD (the task's metric is "squad"): a prepared record carries one gold answer (the first), but
 * the official scorer takes the best over all of them, so eval reads every gold answer from the raw
 * SQuAD v2.0 file (`--squad-gold FILE`, default `data/raw/squad_v2/dev-v2.0...json`; `none` scores
 * against the record's answer alone). `--predictions-out FILE` writes `{question id: answer}` as
 * the official `evaluate-v2.0.py` reads it (no-answer = ""), whose `exact`/`f1` then equal our
 * `squad_em`/`squad_f1` times 100.
 */
import { parseWeightMode } from "../model/int8.ts";
import { openRuntime } from "../bootstrap.ts";
import { flag, parseArgs, runCommand } from "./args.ts";
import { loadTrainingConfig, samplingOf } from "../training/config.ts";
import { loadDataset } from "../prompts/dataset.ts";
import { parseSquad } from "../prompts/raw_sources.ts";
import { type SquadGold, squadGoldsFor } from "../evaluation/squad_golds.ts";
import { evaluate, type EvaluationOutcome } from "../evaluation/evaluate.ts";
import { createInference } from "../services.ts";
import { defaultMetricKind, type MetricKind } from "../training/metrics.ts";

const USAGE =
  `usage: deno task eval --task NAME --data FILE.jsonl [--version N] [--limit N] [--max-new N]
       [--metric exact_match|squad|intent_slot] [--min METRIC=VALUE] [--model DIR] [--registry DIR] [--backend B] [--weights stored|int8]
       [--squad-gold RAW_SQUAD.json|none] [--predictions-out FILE.json]
       [--config TRAIN.yaml (its model.inference decides the decoding; default greedy)] [--outputs-out FILE.jsonl]
       [--labels a,b,c (classification: each record's labels are scored as candidate answers too,
        giving choice_accuracy, ece and the confusion matrix)]`;

/** The raw SQuAD v2.0 file the squad splits were prepared from (data/README.md). */
export const DEFAULT_SQUAD_GOLD = new URL(
  "../../data/raw/squad_v2/dev-v2.0.reconstructed_from_explorer.json",
  import.meta.url,
).pathname;

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
    "weights",
    "batch",
    "squad-gold",
    "predictions-out",
    "config",
    "outputs-out",
    "labels",
  ], ["help"]);
  if (args.flags.has("help")) {
    console.log(USAGE);
    return 0;
  }
  const task = flag(args, "task"), data = flag(args, "data");
  if (!task || !data) throw new RangeError(`--task and --data are required\n${USAGE}`);
  const metric = (flag(args, "metric") ?? defaultMetricKind(task)) as MetricKind;
  const goldFlag = flag(args, "squad-gold");
  const predictionsOut = flag(args, "predictions-out");
  if (metric !== "squad" && (goldFlag !== undefined || predictionsOut !== undefined)) {
    throw new RangeError(
      `--squad-gold and --predictions-out apply to the squad metric only: task "${task}" is scored with ${metric}`,
    );
  }
  const goldFile = metric === "squad" && goldFlag !== "none"
    ? (goldFlag ?? DEFAULT_SQUAD_GOLD)
    : undefined;
  if (predictionsOut !== undefined && goldFile === undefined) {
    throw new RangeError(
      "--predictions-out needs the question ids of the raw SQuAD file: drop --squad-gold none",
    );
  }
  const rt = await openRuntime({
    modelDir: flag(args, "model", "MODEL_DIR"),
    registryDir: flag(args, "registry", "REGISTRY_DIR"),
    backend: flag(args, "backend", "BACKEND"),
    weights: parseWeightMode(flag(args, "weights", "WEIGHTS") ?? "stored", "--weights (WEIGHTS)"),
  });
  const version = flag(args, "version");
  const tv = await rt.store.describe(task, version ? Number(version) : undefined);
  const templates = new Map([[task, tv.template]]);
  const ds = await loadDataset(data, templates, rt.tokenizer, { forInference: true });
  const limit = Number(flag(args, "limit") ?? ds.examples.length);
  // Golds first: a record the raw file lacks fails before any generation.
  const records = ds.records.slice(0, limit);
  let golds: SquadGold[] | undefined;
  if (goldFile !== undefined) {
    const { questions } = parseSquad(await Deno.readTextFile(goldFile), goldFile);
    golds = squadGoldsFor(
      records,
      await Deno.readTextFile(data),
      tv.template.answer_field,
      questions,
      data,
      goldFile,
    );
  }
  // A training configuration's model.inference decides how answers are generated (greedy
  // without one); --max-new and --batch win over its tokens_to_generate and batch_size.
  const configFile = flag(args, "config");
  const trainConfig = configFile ? (await loadTrainingConfig(configFile)).config : undefined;
  const inference = trainConfig?.model.inference;
  const maxNewTokens = Number(flag(args, "max-new") ?? inference?.tokens_to_generate ?? 32);
  const batch = Number(flag(args, "batch") ?? inference?.batch_size ?? 32);
  const labels = flag(args, "labels")?.split(",");
  // The serving path, as Infer and Evaluate jobs run it.
  const served = createInference(rt, {
    servingLimits: { maxBatchSize: batch, maxNewTokens: Math.max(256, maxNewTokens) },
  });
  const started = performance.now();
  let outcome: EvaluationOutcome;
  try {
    outcome = await evaluate((reqs, signal) => served.inference.inferMany(reqs, signal), {
      task,
      version: tv.version,
      answerField: tv.template.answer_field,
      records,
      metric,
      labels,
      golds,
      options: {
        ...(inference ? samplingOf(inference, trainConfig!.model.seed) : {}),
        maxNewTokens,
      },
      batch,
    });
  } finally {
    await served.scheduler.close();
  }
  const { metrics, predictions } = outcome;
  const outputsOut = flag(args, "outputs-out");
  if (outputsOut !== undefined) {
    // One line per example: its answer, token ids and (compute_logprob) their log-probabilities.
    const lines = outcome.generated.map((o, i) =>
      JSON.stringify({ example: i + 1, text: o.text, token_ids: o.tokenIds, logprobs: o.logprobs })
    );
    await Deno.writeTextFile(outputsOut, lines.join("\n") + "\n");
  }
  if (predictionsOut !== undefined) {
    await Deno.writeTextFile(predictionsOut, JSON.stringify(predictions, null, 1) + "\n");
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    JSON.stringify({
      task,
      version: tv.version,
      data,
      examples: records.length,
      dropped: ds.dropped,
      squad_gold: goldFile ?? null,
      ...(predictionsOut !== undefined ? { predictions_out: predictionsOut } : {}),
      seconds: Math.round(seconds * 10) / 10,
      metrics,
      ...(outcome.labels ? { labels: outcome.labels, confusion: outcome.confusion } : {}),
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
