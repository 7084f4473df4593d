/**
 * Telemetry in process: when the standard OTEL_* variables ask for it, and the interceptor's
 * pass-through when they do not. The SDK itself (exporters, protocols, resource attributes, trace
 * context from the caller) is tested on the real service process in service_e2e_test.ts, since it
 * registers process-wide providers.
 */
import { PromptLearningClient } from "../client/client.ts";
import { createGrpcServer } from "../server/rpc/server.ts";
import { createTelemetry, telemetryWanted } from "../server/telemetry/mod.ts";
import { assertEquals } from "./assert.ts";
import { createTestServices } from "./support/test_service.ts";

const envOf = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("telemetryWanted: off unless an endpoint or exporter says so; OTEL_SDK_DISABLED wins", () => {
  assertEquals(telemetryWanted(envOf({})), false);
  assertEquals(
    telemetryWanted(envOf({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" })),
    true,
  );
  assertEquals(
    telemetryWanted(envOf({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://c:4317" })),
    true,
  );
  assertEquals(telemetryWanted(envOf({ OTEL_TRACES_EXPORTER: "otlp" })), true);
  assertEquals(telemetryWanted(envOf({ OTEL_TRACES_EXPORTER: "none" })), false);
  assertEquals(telemetryWanted(envOf({ OTEL_METRICS_EXPORTER: "prometheus" })), true);
  assertEquals(
    telemetryWanted(envOf({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
      OTEL_SDK_DISABLED: "true",
    })),
    false,
  );
});

Deno.test("With telemetry off, the interceptor passes calls through and nothing is sent", async () => {
  const telemetry = createTelemetry({ env: envOf({}) });
  assertEquals(telemetry.enabled, false);
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
