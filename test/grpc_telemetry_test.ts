/**
 * Telemetry: configuration from the standard OTEL_* variables, and spans/metrics arriving at a
 * tiny OTLP/HTTP receiver on loopback.
 */
import { PromptLearningClient } from "../client/client.ts";
import { createGrpcServer } from "../server/rpc/server.ts";
import { createTelemetry, telemetryConfigFromEnv } from "../server/telemetry/mod.ts";
import { assert, assertEquals } from "./assert.ts";
import { createTestServices, SENTIMENT_TEMPLATE, table } from "./support/test_service.ts";
import { toStruct } from "../client/struct.ts";

const envOf = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("telemetryConfigFromEnv: off unless an endpoint or exporter says so; OTEL_SDK_DISABLED wins", () => {
  assertEquals(telemetryConfigFromEnv(envOf({})).tracesEndpoint, undefined);
  assertEquals(telemetryConfigFromEnv(envOf({})).metricsEndpoint, undefined);
  const on = telemetryConfigFromEnv(
    envOf({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318/" }),
  );
  assertEquals(on.tracesEndpoint, "http://127.0.0.1:4318/v1/traces");
  assertEquals(on.metricsEndpoint, "http://127.0.0.1:4318/v1/metrics");
  const tracesOff = telemetryConfigFromEnv(envOf({
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
    OTEL_TRACES_EXPORTER: "none",
  }));
  assertEquals(tracesOff.tracesEndpoint, undefined);
  assertEquals(tracesOff.metricsEndpoint, "http://127.0.0.1:4318/v1/metrics");
  assertEquals(
    telemetryConfigFromEnv(envOf({ OTEL_TRACES_EXPORTER: "otlp" })).tracesEndpoint,
    "http://localhost:4318/v1/traces",
  );
  const disabled = telemetryConfigFromEnv(envOf({
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
    OTEL_SDK_DISABLED: "true",
  }));
  assertEquals([disabled.tracesEndpoint, disabled.metricsEndpoint], [undefined, undefined]);
  let err: unknown;
  try {
    telemetryConfigFromEnv(envOf({ OTEL_TRACES_EXPORTER: "zipkin" }));
  } catch (e) {
    err = e;
  }
  assert(err instanceof RangeError && err.message.includes("OTEL_TRACES_EXPORTER"));
});

const TRAIN_YAML = `
name: telemetry
trainer: { max_steps: 1, max_epochs: 1 }
model:
  virtual_prompt_style: prompt-tuning
  new_tasks: [sentiment]
  global_batch_size: 2
  micro_batch_size: 2
  task_templates:
    - taskname: sentiment
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
      total_virtual_tokens: 2
      virtual_token_splits: [2]
      answer_only_loss: true
      answer_field: label
  prompt_tuning: { new_prompt_init_methods: [text], new_prompt_init_text: [sentiment] }
  optim: { name: fused_adam, lr: 0.01 }
`;
const RECORDS = [
  toStruct({ taskname: "sentiment", sentence: "good", label: "positive" }),
  toStruct({ taskname: "sentiment", sentence: "bad", label: "negative" }),
];

interface OtlpAttr {
  key: string;
  value: { stringValue?: string; intValue?: number | string; doubleValue?: number };
}
interface OtlpSpan {
  name: string;
  attributes: OtlpAttr[];
  status?: { code?: number };
}

function attrs(span: OtlpSpan): Record<string, string | number | undefined> {
  const out: Record<string, string | number | undefined> = {};
  for (const a of span.attributes) {
    const v = a.value;
    out[a.key] = v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : v.doubleValue);
  }
  return out;
}

Deno.test("RPC, training-step and inference-batch spans and metrics reach an OTLP receiver", async () => {
  const spans: OtlpSpan[] = [];
  const metricNames = new Set<string>();
  const receiver = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.json();
    const path = new URL(req.url).pathname;
    if (path === "/v1/traces") {
      for (const rs of body.resourceSpans ?? []) {
        for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
      }
    } else if (path === "/v1/metrics") {
      for (const rm of body.resourceMetrics ?? []) {
        for (const sm of rm.scopeMetrics ?? []) {
          for (const metric of sm.metrics ?? []) metricNames.add(metric.name);
        }
      }
    }
    return Response.json({});
  });
  const base = `http://127.0.0.1:${receiver.addr.port}`;
  const telemetry = createTelemetry(
    telemetryConfigFromEnv(envOf({ OTEL_EXPORTER_OTLP_ENDPOINT: base })),
  );
  const services = await createTestServices();
  const server = createGrpcServer(services, {
    port: 0,
    interceptors: [telemetry.rpcInterceptor()],
    shutdownGraceMs: 500,
  });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  let trainEvents = 0;
  try {
    await client.registerTask({
      name: "t",
      template: SENTIMENT_TEMPLATE,
      table: { rows: 2, hidden: 256, values: table(2, 256) },
    });
    await client.infer([{ task: "t", fields: { sentence: "x" }, maxNewTokens: 1 }]);
    await client.getTask("nope").catch(() => {});
    for await (
      const e of client.train({ configYaml: TRAIN_YAML, extraTrainRecords: { records: RECORDS } })
    ) {
      trainEvents++;
      assert(e.event !== "failed", e.failed?.reason);
    }
    telemetry.trainingStep({ jobId: "job-1", step: 3, epoch: 0, loss: 0.25, tokensPerSecond: 900 });
    telemetry.inferenceBatch({
      batchSize: 5,
      queueDepth: 2,
      prefillTokens: 40,
      decodeTokens: 5,
      tokensPerSecond: 1200,
      durationMs: 12,
    });
    await telemetry.flush();
  } finally {
    client.close();
    await server.shutdown();
    await services.dispose();
    await telemetry.shutdown();
    await receiver.shutdown();
  }

  const byName = (n: string) => spans.filter((s) => s.name === n).map(attrs);
  const infer = byName("promptlearning.v1.PromptLearning/Infer");
  assertEquals(infer.length, 1);
  assertEquals(infer[0]["rpc.system"], "grpc");
  assertEquals(infer[0]["rpc.service"], "promptlearning.v1.PromptLearning");
  assertEquals(infer[0]["rpc.method"], "Infer");
  assertEquals(infer[0]["rpc.grpc.status_code"], 0);
  const get = byName("promptlearning.v1.PromptLearning/GetTask");
  assertEquals(get[0]["rpc.grpc.status_code"], 5);
  const train = byName("promptlearning.v1.PromptLearning/Train");
  assertEquals([train[0]["rpc.grpc.status_code"], train[0]["rpc.messages_sent"]], [0, trainEvents]);
  assertEquals(byName("training.step")[0]["training.loss"], 0.25);
  assertEquals(byName("inference.batch")[0]["inference.batch_size"], 5);
  for (
    const name of [
      "rpc.server.duration",
      "promptlearning.inference.queue_depth",
      "promptlearning.inference.batch_size",
      "promptlearning.inference.tokens_per_second",
      "promptlearning.training.tokens_per_second",
    ]
  ) {
    assert(metricNames.has(name), `metric ${name} missing from ${[...metricNames].join(", ")}`);
  }
});

Deno.test("With telemetry off, the interceptor passes calls through and nothing is sent", async () => {
  const telemetry = createTelemetry(telemetryConfigFromEnv(envOf({})));
  assertEquals([telemetry.tracesEnabled, telemetry.metricsEnabled], [false, false]);
  const services = await createTestServices();
  const server = createGrpcServer(services, {
    port: 0,
    interceptors: [telemetry.rpcInterceptor()],
  });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  try {
    const r = await client.infer([{ task: "t", fields: { a: "b" } }]);
    assertEquals(r[0].error!.code, 5); // NOT_FOUND: the call went through to the service

    telemetry.trainingStep({ jobId: "j", step: 1, epoch: 0, loss: 1, tokensPerSecond: 1 });
    await telemetry.flush();
  } finally {
    client.close();
    await server.shutdown();
    await services.dispose();
    await telemetry.shutdown();
  }
});
