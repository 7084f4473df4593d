/**
 * The real service as a process (server/main.ts on the shipped model, a temporary registry),
 * driven through the typed client the way another service would: train a task from inline
 * records while watching the event stream, reconnect a watcher, register a PEFT adapter, infer a
 * batch mixing both tasks, and stop with SIGTERM.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { PromptLearningClient, RpcCallError } from "../client/client.ts";
import { toStruct } from "../client/struct.ts";
import { startService } from "./support/service_process.ts";

const root = new URL("../", import.meta.url).pathname;
const TOKEN = "e2e-secret-token";

function startServer(registry: string, extraEnv: Record<string, string> = {}) {
  return startService({
    REGISTRY_DIR: registry,
    RUNS_DIR: `${registry}/runs`,
    AUTH_TOKEN: TOKEN,
    DATA_DIR: root,
    ...extraEnv,
  });
}

/** Registers the reference PEFT adapter (test/fixtures) as the task "peft_sentiment". */
function registerPeftSentiment(client: PromptLearningClient) {
  const peftDir = `${root}test/fixtures/peft_prompt_tuning_sentiment`;
  return client.registerTask({
    name: "peft_sentiment",
    template: { promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}" },
    peft: {
      adapterConfigJson: Deno.readFileSync(`${peftDir}/adapter_config.json`),
      adapterSafetensors: Deno.readFileSync(`${peftDir}/adapter_model.safetensors`),
    },
  });
}

/** SIGTERM, then the exit status once its pipes are closed; the registry is removed. */
async function stopServer(
  { child, reader }: Awaited<ReturnType<typeof startServer>>,
  registry: string,
): Promise<Deno.CommandStatus> {
  child.kill("SIGTERM");
  const status = await child.status;
  await reader.cancel();
  await child.stderr.cancel();
  await Deno.remove(registry, { recursive: true });
  return status;
}

function records(file: string, n: number) {
  return Deno.readTextFileSync(`${root}data/splits/${file}`).split("\n").slice(0, n).map((l) =>
    JSON.parse(l)
  );
}

Deno.test("the service trains, streams progress, registers a PEFT adapter and serves a mixed batch", async () => {
  const registry = await Deno.makeTempDir();
  const server = await startServer(registry);
  const client = new PromptLearningClient({ address: server.address, token: TOKEN });
  const anonymous = new PromptLearningClient({ address: server.address });
  try {
    await client.waitForReady();
    // Mutating calls need the token.
    const denied = await assertRejects(() => anonymous.deleteTask("sentiment"), RpcCallError);
    assertEquals((denied as RpcCallError).code, 16); // UNAUTHENTICATED

    const events = [];
    for await (
      const ev of client.train({
        config: {
          name: "e2e",
          newTasks: ["sentiment"],
          virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_PROMPT_TUNING",
          taskTemplates: [{
            taskname: "sentiment",
            promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            promptTemplateFields: ["sentence", "label"],
            totalVirtualTokens: 10,
            virtualTokenSplits: [10],
            truncateField: "sentence",
            answerField: "label",
          }],
          promptTuning: { initMethod: "INIT_METHOD_SAMPLED_VOCAB" },
          optim: { name: "adamw", lr: 0.03 },
          maxSteps: 3,
          globalBatchSize: 4,
          microBatchSize: 4,
          valCheckInterval: 3,
          logEveryNSteps: 1,
          trainDs: { records: records("sentiment_train.jsonl", 12).map(toStruct) },
          validationDs: { records: records("sentiment_val.jsonl", 4).map(toStruct) },
        },
      })
    ) events.push(ev);
    const kinds = events.map((e) => e.event);
    if (kinds.includes("failed")) throw new Error(JSON.stringify(events.at(-1)));
    assertEquals(kinds[0], "queued");
    assert(kinds.includes("started") && kinds.includes("validation"), kinds.join(","));
    assertEquals(kinds.filter((k) => k === "step").length, 3);
    assertEquals(kinds.at(-1), "completed");
    const seqs = events.map((e) => Number(e.sequence));
    assert(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `sequences increase: ${seqs}`);
    const jobId = events[0].jobId;
    // A watcher reconnecting after the third event gets exactly the rest, the job's steps
    // included (a finished job keeps all its events).
    const rest = [];
    for await (const ev of client.watchJob(jobId, seqs[2])) rest.push(Number(ev.sequence));
    assertEquals(rest, seqs.slice(3));
    const job = await client.getJob(jobId);
    assertEquals(job.state, "JOB_STATE_SUCCEEDED");

    // A second task from PEFT adapter bytes.
    const peft = await registerPeftSentiment(client);
    assertEquals([peft.name, peft.version, peft.totalVirtualTokens], ["peft_sentiment", 1, 10]);

    const sentence = "Net sales increased by 18.5 % to EUR 167.7 mn .";
    const results = await client.infer([
      { task: "sentiment", fields: { sentence }, maxNewTokens: 3 },
      { task: "peft_sentiment", fields: { sentence }, maxNewTokens: 3 },
      { task: "missing_task", fields: { sentence } },
      { task: "sentiment", fields: { sentence }, maxNewTokens: 100000 },
    ]);
    assertEquals(results.map((r) => r.outcome), ["completion", "completion", "error", "error"]);
    assertEquals(results[2].error?.code, 5); // NOT_FOUND
    assertEquals(results[3].error?.code, 3); // INVALID_ARGUMENT
    assert(results[3].error!.message.includes("max_new_tokens"), results[3].error!.message);
    for (const r of results.slice(0, 2)) assert(r.completion!.tokenIds.length > 0);

    const listed = await client.listTasks();
    assertEquals(listed.tasks.map((t) => t.name).sort(), ["peft_sentiment", "sentiment"]);
    const deleted = await client.deleteTask("peft_sentiment");
    assertEquals(deleted.versionsDeleted, [1]);
  } finally {
    client.close();
    anonymous.close();
    assertEquals((await stopServer(server, registry)).code, 0);
  }
});

Deno.test("WEIGHTS=int8: the service quantises the model at start and serves a PEFT adapter tuned on the full weights", async () => {
  const registry = await Deno.makeTempDir();
  const server = await startServer(registry, { WEIGHTS: "int8" });
  const client = new PromptLearningClient({ address: server.address, token: TOKEN });
  try {
    assertEquals(server.serving.weights, "int8");
    await registerPeftSentiment(client);
    const [r] = await client.infer([{
      task: "peft_sentiment",
      fields: { sentence: "Net sales increased by 18.5 % to EUR 167.7 mn ." },
      maxNewTokens: 3,
    }]);
    assertEquals(r.outcome, "completion");
    assert(r.completion!.tokenIds.length > 0);
  } finally {
    client.close();
    assertEquals((await stopServer(server, registry)).code, 0);
  }
});

Deno.test("the service exports RPC spans, training-step and inference-batch telemetry over OTLP when OTEL_* says so, continuing the caller's trace", async () => {
  const spans: {
    name: string;
    traceId: string;
    parentSpanId?: string;
    attributes: { key: string; value: Record<string, unknown> }[];
  }[] = [];
  const resourceAttrs = new Map<string, unknown>();
  const metricNames = new Set<string>();
  const receiver = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.json();
    for (const rs of body.resourceSpans ?? []) {
      for (const a of rs.resource?.attributes ?? []) resourceAttrs.set(a.key, a.value.stringValue);
      for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
    }
    for (const rm of body.resourceMetrics ?? []) {
      for (const sm of rm.scopeMetrics ?? []) {
        for (const m of sm.metrics ?? []) metricNames.add(m.name);
      }
    }
    return Response.json({});
  });
  const registry = await Deno.makeTempDir();
  const { child, address, reader } = await startServer(registry, {
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.addr.port}`,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_SERVICE_NAME: "e2e",
    OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=e2e-test",
    OTEL_METRIC_EXPORT_INTERVAL: "500",
  });
  // The caller's W3C trace context: the service's spans must continue this trace.
  const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
  const CALLER_SPAN = "00f067aa0ba902b7";
  const traced = { metadata: { traceparent: `00-${TRACE}-${CALLER_SPAN}-01` } };
  const client = new PromptLearningClient({ address, token: TOKEN });
  try {
    await client.waitForReady();
    for await (
      const _ of client.train({
        config: {
          name: "otel",
          newTasks: ["sentiment"],
          virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_PROMPT_TUNING",
          taskTemplates: [{
            taskname: "sentiment",
            promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            totalVirtualTokens: 4,
            virtualTokenSplits: [4],
          }],
          optim: { name: "adamw", lr: 0.03 },
          maxSteps: 2,
          globalBatchSize: 2,
          microBatchSize: 2,
          trainDs: { records: records("sentiment_train.jsonl", 4).map(toStruct) },
        },
      }, traced)
    ) { /* until completed */ }
    const [r] = await client.infer([{
      task: "sentiment",
      fields: { sentence: "Sales rose ." },
      maxNewTokens: 2,
    }], traced);
    assertEquals(r.outcome, "completion");
  } finally {
    client.close();
    child.kill("SIGTERM"); // shutdown flushes the exporters
    await child.status;
    await reader.cancel();
    await child.stderr.cancel();
    await receiver.shutdown();
    await Deno.remove(registry, { recursive: true });
  }
  const names = new Set(spans.map((s) => s.name));
  for (
    const n of [
      "promptlearning.v1.PromptLearning/Train",
      "promptlearning.v1.PromptLearning/Infer",
      "training.step",
      "inference.batch",
    ]
  ) {
    assert(names.has(n), `span ${n} missing from ${[...names].join(", ")}`);
  }
  const infer = spans.find((s) => s.name === "promptlearning.v1.PromptLearning/Infer")!;
  const method = infer.attributes.find((a) => a.key === "rpc.method")?.value.stringValue;
  assertEquals(method, "Infer");
  assertEquals([infer.traceId, infer.parentSpanId], [TRACE, CALLER_SPAN]);
  const train = spans.find((s) => s.name === "promptlearning.v1.PromptLearning/Train")!;
  assertEquals([train.traceId, train.parentSpanId], [TRACE, CALLER_SPAN]);
  // The job's steps run in the Train call's span, so they belong to the caller's trace too.
  const step = spans.find((s) => s.name === "training.step")!;
  assertEquals(step.traceId, TRACE);
  assertEquals(resourceAttrs.get("service.name"), "e2e");
  assertEquals(resourceAttrs.get("deployment.environment"), "e2e-test");
  for (
    const m of [
      "rpc_server_duration_seconds",
      "promptlearning_inference_batch_size",
      "promptlearning_inference_time_to_first_token_seconds",
      "promptlearning_training_loss",
      "promptlearning_jobs_waiting",
      "promptlearning_jobs_running",
    ]
  ) {
    assert(metricNames.has(m), `metric ${m} missing from ${[...metricNames].join(", ")}`);
  }
});
