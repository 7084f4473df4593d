import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { testRuntime } from "../../test/support/test_service.ts";
import { ServiceError } from "../errors.ts";
import { createInference } from "../services.ts";
import { goldenSentimentTask } from "../serving/testing/golden_task.ts";
import { evaluate } from "./evaluate.ts";

const root = new URL("../../", import.meta.url).pathname;
const rt = await testRuntime();
// The golden soft prompt (PEFT's, 10 rows) as a sentiment task.
const { task } = await goldenSentimentTask();
await rt.store.put("sentiment", {
  template: task.template,
  totalVirtualTokens: 10,
  hiddenSize: rt.model.config.nEmbd,
  table: task.table!,
  fingerprint: rt.fingerprint,
  source: "register",
});
const records = Deno.readTextFileSync(`${root}data/splits/sentiment_test.jsonl`).trim().split("\n")
  .slice(0, 24).map((l) => JSON.parse(l) as Record<string, string>);
const LABELS = ["positive", "negative", "neutral"];

Deno.test("evaluate() scores generated answers and, with labels, ranks them: accuracy, confusion, ECE", async () => {
  const { inference, scheduler } = createInference(rt);
  try {
    const progress: [number, number][] = [];
    const out = await evaluate(
      (reqs, signal) => inference.inferMany(reqs, signal),
      {
        task: "sentiment",
        version: 1,
        answerField: "label",
        records,
        metric: "exact_match",
        labels: LABELS,
        options: { maxNewTokens: 3 },
        batch: 16,
      },
      (done, total) => progress.push([done, total]),
    );
    // 24 generations then 24 scorings, in batches of 16.
    assertEquals(progress, [[16, 48], [32, 48], [48, 48]]);
    assertEquals(out.generated.length, 24);
    assertEquals(out.metrics.count, 24);
    // The same ranking, asked for one record at a time, gives the same answers.
    let hits = 0;
    const predicted: string[] = [];
    for (const r of records) {
      const one = await inference.infer({
        task: "sentiment",
        fields: { sentence: r.sentence },
        choices: LABELS,
      });
      predicted.push(one.text);
      if (one.text === r.label) hits++;
    }
    assertEquals(out.metrics.choice_accuracy, hits / records.length);
    assertEquals(out.labels, LABELS);
    const confusion = LABELS.map((g) =>
      LABELS.map((p) => records.filter((r, i) => r.label === g && predicted[i] === p).length)
    );
    assertEquals(out.confusion, confusion);
    assert(out.metrics.ece >= 0 && out.metrics.ece <= 1, `ece ${out.metrics.ece}`);
  } finally {
    await scheduler.close();
  }
});

Deno.test("evaluate() refuses a record whose answer is not a label, naming the record", async () => {
  const { inference, scheduler } = createInference(rt);
  try {
    const err = await assertRejects(
      () =>
        evaluate((reqs) => inference.inferMany(reqs), {
          task: "sentiment",
          version: 1,
          answerField: "label",
          records: [records[0], { ...records[1], label: "mixed" }],
          metric: "exact_match",
          labels: LABELS,
        }),
      ServiceError,
      'record 2: field "label" is not among the labels ("positive", "negative", "neutral")',
    );
    assertEquals((err as ServiceError).kind, "invalid_argument");
  } finally {
    await scheduler.close();
  }
});
