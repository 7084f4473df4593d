/**
 * What `WEIGHTS=int8` changes on tuned tasks (issue 25): for each task of a registry (by default
 * the walk-through's, `scripts/walkthrough.sh` writes /tmp/walkthrough/registry) and its test
 * split, the same serving path twice, on the checkpoint's weights and on their int8
 * quantisation, both with fp32 products (PRECISION=fp32):
 * - the answer loss: each record's gold answer scored as a candidate (`choices`), its mean
 *   negative log-probability per token (the answer-only cross-entropy training minimises);
 * - the greedy answers: the share generated identically, and the task's metric on each.
 *
 * Run: deno run -A bench/int8_quality.ts [--registry DIR] [--tasks sentiment,intent_and_slot,squad]
 *        [--limit N] [--data-dir data/splits]
 * Prints a table and, last, one JSON line.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../server/bootstrap.ts";
import { evaluate } from "../server/evaluation/evaluate.ts";
import type { WeightMode } from "../server/model/int8.ts";
import { loadDataset } from "../server/prompts/dataset.ts";
import { createInference } from "../server/services.ts";
import { defaultMetricKind } from "../server/training/metrics.ts";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    registry: { type: "string", default: "/tmp/walkthrough/registry" },
    tasks: { type: "string", default: "sentiment,intent_and_slot,squad" },
    limit: { type: "string", default: "300" },
    "data-dir": { type: "string", default: `${root}data/splits` },
  },
});
const limit = Number(args.limit);
if (!Number.isInteger(limit) || limit < 1) {
  throw new RangeError("--limit must be a positive integer");
}
// Both runs in fp32, so the difference is the weights' alone (auto picks bf16 on some CPUs).
Deno.env.set("PRECISION", "fp32");
const MAX_NEW: Record<string, number> = { sentiment: 3, intent_and_slot: 32, squad: 32 };

interface Run {
  metric: Record<string, number>;
  answers: string[];
  nll: number[];
}

async function runAll(weights: WeightMode): Promise<Record<string, Run>> {
  const rt = await openRuntime({ registryDir: args.registry, weights, backend: "onednn" });
  // Gold answers are scored whole: intent_and_slot's run past the default 32 choice tokens.
  const served = createInference(rt, {
    servingLimits: { maxBatchSize: 32, maxNewTokens: 256, maxChoiceTokens: 256 },
  });
  const out: Record<string, Run> = {};
  try {
    for (const task of args.tasks.split(",")) {
      const tv = await rt.store.describe(task);
      const ds = await loadDataset(
        `${args["data-dir"]}/${task}_test.jsonl`,
        new Map([[task, tv.template]]),
        rt.tokenizer,
        { forInference: true },
      );
      const records = ds.records.slice(0, limit);
      const answerField = tv.template.answer_field;
      const outcome = await evaluate((reqs) => served.inference.inferMany(reqs), {
        task,
        version: tv.version,
        answerField,
        records,
        metric: defaultMetricKind(task),
        options: { maxNewTokens: MAX_NEW[task] ?? 32 },
        batch: 32,
      });
      // The gold answer as the one candidate: its log-probability under the task's prompt.
      const fields = (r: Record<string, string>) => {
        const f = { ...r };
        delete f[answerField];
        delete f.taskname;
        return f;
      };
      const nll: number[] = [];
      for (let at = 0; at < records.length; at += 64) {
        const part = records.slice(at, at + 64);
        const scored = await served.inference.inferMany(
          part.map((r) => ({
            task,
            version: tv.version,
            fields: fields(r),
            choices: [r[answerField]],
          })),
        );
        scored.forEach((s, i) => {
          if (!s.ok || !s.result.choices) {
            throw new Error(`${task} record ${at + i + 1}: scoring failed: ${JSON.stringify(s)}`);
          }
          nll.push(-s.result.choices[0].logprobPerToken);
        });
      }
      out[task] = {
        metric: outcome.metrics,
        answers: outcome.generated.map((g) => g.text),
        nll,
      };
      console.error(`${weights} ${task}: ${records.length} records`);
    }
  } finally {
    await served.scheduler.close();
    rt.engine.dispose();
  }
  return out;
}

const mean = (a: number[]) => a.reduce((s, x) => s + x, 0) / a.length;
const r4 = (x: number) => Math.round(x * 1e4) / 1e4;
const stored = await runAll("stored");
const int8 = await runAll("int8");
const result: Record<string, unknown> = { registry: args.registry, limit };
const lines: string[] = [];
for (const task of Object.keys(stored)) {
  const a = stored[task], b = int8[task];
  const same = a.answers.filter((x, i) => x === b.answers[i]).length;
  const dn = a.nll.map((x, i) => Math.abs(x - b.nll[i]));
  const entry = {
    records: a.answers.length,
    answer_loss_stored: r4(mean(a.nll)),
    answer_loss_int8: r4(mean(b.nll)),
    answer_loss_mean_abs_diff: r4(mean(dn)),
    answer_loss_max_abs_diff: r4(Math.max(...dn)),
    greedy_identical: r4(same / a.answers.length),
    metrics_stored: Object.fromEntries(Object.entries(a.metric).map(([k, v]) => [k, r4(v)])),
    metrics_int8: Object.fromEntries(Object.entries(b.metric).map(([k, v]) => [k, r4(v)])),
  };
  result[task] = entry;
  lines.push(`${task}: ${JSON.stringify(entry)}`);
}
console.log(lines.join("\n"));
console.log(JSON.stringify(result));
