/**
 * Scoring and evaluation over gRPC, on the real domain services (the shipped tiny model, the
 * in-memory store): Infer with choices and allowed answers, and Evaluate jobs on the training
 * queue whose results GetTask shows.
 */
import { status } from "@grpc/grpc-js";
import { PromptLearningClient } from "../client/client.ts";
import { toStruct } from "../client/struct.ts";
import type { TrainEvent__Output } from "../proto/gen/promptlearning/v1/TrainEvent.ts";
import { createGrpcServer } from "../server/rpc/server.ts";
import { assert, assertEquals } from "./assert.ts";
import { rejectsWith } from "./support/rpc_assert.ts";
import { createTestServices, SENTIMENT_TEMPLATE, table } from "./support/test_service.ts";

const HIDDEN = 256;
const LABELS = ["positive", "negative", "neutral"];
const root = new URL("../", import.meta.url).pathname;
const all = Deno.readTextFileSync(`${root}data/splits/sentiment_test.jsonl`).trim().split("\n")
  .map((l) => JSON.parse(l) as Record<string, string>);
// 4 positive, 3 negative and 3 neutral records, interleaved.
const records = [0, 1, 2, 3].flatMap((i) => LABELS.map((l) => all.filter((r) => r.label === l)[i]))
  .slice(0, 10);

async function withServer(fn: (client: PromptLearningClient, dataDir: string) => Promise<void>) {
  const services = await createTestServices();
  const server = createGrpcServer(services, { port: 0, shutdownGraceMs: 1000 });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  try {
    await client.registerTask({
      name: "sentiment",
      template: { ...SENTIMENT_TEMPLATE, taskname: "sentiment" },
      table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN) },
    });
    await fn(client, services.dataDir);
  } finally {
    client.close();
    await server.shutdown();
    await services.dispose();
  }
}

async function collect(it: AsyncIterable<TrainEvent__Output>): Promise<TrainEvent__Output[]> {
  const out: TrainEvent__Output[] = [];
  for await (const x of it) out.push(x);
  return out;
}

Deno.test("Infer ranks choices and keeps generation to allowed answers, over gRPC", async () => {
  await withServer(async (client) => {
    const [scored, constrained, free] = await client.infer([
      { task: "sentiment", fields: { sentence: records[0].sentence }, choices: LABELS },
      { task: "sentiment", fields: { sentence: records[0].sentence }, allowed: LABELS },
      { task: "sentiment", fields: { sentence: records[0].sentence }, maxNewTokens: 2 },
    ]);
    const c = scored.completion!;
    assertEquals(c.finishReason, "FINISH_REASON_CHOICE");
    assertEquals(c.choices.map((x) => x.text), LABELS);
    const sum = c.choices.reduce((s, x) => s + x.probability, 0);
    assert(Math.abs(sum - 1) < 1e-6, `probabilities sum to ${sum}`);
    const best = c.choices.reduce((a, b) => (b.logprob > a.logprob ? b : a));
    assertEquals(c.text, best.text);
    assert(c.choices.every((x) => x.tokenIds.length >= 2), "each label with its EOS");
    assertEquals(constrained.completion!.finishReason, "FINISH_REASON_CHOICE");
    assert(LABELS.includes(constrained.completion!.text));
    assertEquals(free.completion!.choices, []);
    // Too many candidates: that item alone is refused, naming the limit.
    const [tooMany] = await client.infer([{
      task: "sentiment",
      fields: { sentence: "x" },
      choices: Array.from({ length: 17 }, (_, i) => `c${i}`),
    }]);
    assertEquals(tooMany.error?.code, status.INVALID_ARGUMENT);
    assert(tooMany.error!.message.includes("max_choices"), tooMany.error!.message);
  });
});

Deno.test("Evaluate runs a job on the queue, reports progress, and GetTask keeps its result", async () => {
  await withServer(async (client, dataDir) => {
    await Deno.writeTextFile(
      `${dataDir}/test.jsonl`,
      records.slice(5).map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    const events = await collect(client.evaluate({
      task: "sentiment",
      data: {
        files: ["test.jsonl"],
        records: records.slice(0, 5).map((r) => toStruct(r)),
      },
      labels: LABELS,
      maxNewTokens: 2,
    }));
    assertEquals(events[0].event, "queued");
    assert(events.some((e) => e.event === "evaluating"), "a progress event");
    const last = events.at(-1)!;
    assertEquals(last.event, "completed", JSON.stringify(last));
    const ev = last.completed!.evaluation!;
    assertEquals(last.completed!.written, [{ task: "sentiment", version: 1 }]);
    assertEquals([ev.examples, ev.dataset], [10, "test.jsonl, data.records"]);
    assertEquals(ev.labels, LABELS);
    const counts = ev.confusion.map((r) => r.predicted);
    assertEquals(counts.flat().reduce((a, b) => a + b, 0), 10);
    // Rows are gold labels: their sums are the records' label counts.
    assertEquals(
      counts.map((r) => r.reduce((a, b) => a + b, 0)),
      LABELS.map((l) => records.filter((r) => r.label === l).length),
    );
    const diagonal = counts.reduce((s, r, i) => s + r[i], 0);
    assert(Math.abs(ev.metrics.choice_accuracy - diagonal / 10) < 1e-9);
    assert(ev.metrics.ece >= 0 && ev.metrics.ece <= 1);
    assert("exact_match" in ev.metrics);
    const job = await client.getJob(last.jobId);
    assertEquals([job.kind, job.state], ["JOB_KIND_EVALUATE", "JOB_STATE_SUCCEEDED"]);
    const task = await client.getTask("sentiment");
    assertEquals(task.evaluations.map((e) => [e.id, e.examples]), [[last.jobId, 10]]);
    assertEquals(task.evaluations[0].metrics, ev.metrics);
  });
});

Deno.test("Evaluate refuses bad requests at submission, naming the field", async () => {
  await withServer(async (client) => {
    const ask = (over: Record<string, unknown>) =>
      collect(client.evaluate({
        task: "sentiment",
        data: { records: records.slice(0, 2).map((r) => toStruct(r)) },
        ...over,
      }));
    await rejectsWith(ask({ task: "nope" }), status.NOT_FOUND, 'task "nope"');
    await rejectsWith(
      ask({ labels: ["mixed", "other"] }),
      status.INVALID_ARGUMENT,
      'field "label" is not among the labels',
    );
    await rejectsWith(
      ask({ data: { files: ["../outside.jsonl"] } }),
      status.INVALID_ARGUMENT,
      'data.files[0]: "../outside.jsonl" must be a path inside the data directory',
    );
    await rejectsWith(
      ask({ data: {} }),
      status.INVALID_ARGUMENT,
      "data must name files or hold records",
    );
    await rejectsWith(ask({ metric: "bleu" }), status.INVALID_ARGUMENT, "metric must be one of");
    assertEquals((await client.listJobs()).jobs, []);
  });
});

Deno.test("an Evaluate job is cancelled like a training job, and keeps nothing", async () => {
  await withServer(async (client) => {
    const many = Array.from({ length: 400 }, (_, i) => all[i % all.length]);
    const stream = client.evaluate({
      task: "sentiment",
      data: { records: many.map((r) => toStruct(r)) },
      labels: LABELS,
      maxNewTokens: 8,
    });
    const first = await stream.next();
    const jobId = first.value!.jobId;
    const cancelled = await client.cancelJob(jobId);
    assert(["JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"].includes(cancelled.state));
    const rest = await collect(stream);
    assertEquals(rest.at(-1)?.event, "cancelled");
    assertEquals((await client.getJob(jobId)).state, "JOB_STATE_CANCELLED");
    assertEquals((await client.getTask("sentiment")).evaluations, []);
  });
});

Deno.test("Evaluate scores SQuAD against every gold answer of a raw file under DATA_DIR", async () => {
  await withServer(async (client, dataDir) => {
    await client.registerTask({
      name: "squad",
      template: {
        taskname: "squad",
        promptTemplate:
          "<|VIRTUAL_PROMPT_0|> Context: {context}\n\nQuestion: {question}\n\nAnswer:{answer}",
        promptTemplateFields: ["context", "question", "answer"],
        totalVirtualTokens: 2,
        virtualTokenSplits: [2],
        answerField: "answer",
        truncateField: "context",
        maxSeqLength: 512,
      },
      table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN) },
    });
    const lines = Deno.readTextFileSync(`${root}data/splits/squad_test.jsonl`).split("\n").slice(
      0,
      4,
    );
    await Deno.writeTextFile(`${dataDir}/sq.jsonl`, lines.join("\n") + "\n");
    await Deno.copyFile(
      `${root}data/raw/squad_v2/dev-v2.0.reconstructed_from_explorer.json`,
      `${dataDir}/raw.json`,
    );
    const events = await collect(client.evaluate({
      task: "squad",
      data: { files: ["sq.jsonl"] },
      metric: "squad",
      squadGold: "raw.json",
      maxNewTokens: 4,
    }));
    const last = events.at(-1)!;
    assertEquals(last.event, "completed", JSON.stringify(last));
    const m = last.completed!.evaluation!.metrics;
    assert("squad_em" in m && "squad_f1" in m, JSON.stringify(m));
    assertEquals(last.completed!.evaluation!.examples, 4);
    await rejectsWith(
      collect(client.evaluate({
        task: "squad",
        data: { files: ["sq.jsonl", "sq.jsonl"] },
        metric: "squad",
        squadGold: "raw.json",
      })),
      status.INVALID_ARGUMENT,
      "squad_gold applies to the squad metric over one data file",
    );
    await rejectsWith(
      collect(client.evaluate({
        task: "squad",
        data: { files: ["sq.jsonl"] },
        metric: "squad",
        squadGold: "missing.json",
      })),
      status.INVALID_ARGUMENT,
      "squad_gold: file not found",
    );
  });
});
