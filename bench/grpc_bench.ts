/**
 * What the gRPC layer costs and how unary Infer latency behaves under concurrency. One process
 * holds the service (runtime, app, gRPC server on a loopback port) and the clients:
 * - direct: the same request through the domain (InferenceService) with no gRPC;
 * - grpc, 1 client: sequential unary Infer calls, one request each: cold (the first calls after
 *   start) and in steady state (after 1,000 warm-up calls, in rounds alternating with the same
 *   server with Prometheus metrics on);
 * - grpc, 50 clients: 50 channels calling concurrently.
 * Reports p50/p99 latency (ms), calls/s, and the per-call overhead: for each 1-client call, its
 * latency minus the time spent inside InferenceService (both on one clock, so the engine's own
 * variation cancels; the difference of the gRPC and direct medians, also given, moves by a
 * millisecond or more between runs with it). Where the overhead goes: the request path (the
 * client's call to the handler reaching InferenceService) and the response path (its answer to
 * the client's receipt), and the same gRPC stack with the answer given at once (`echo`: the last
 * result again, no engine work). With the answer given after an idle wait instead of engine work,
 * the paths cost what they cost around real inference: the stack's work, spread over a dozen
 * event-loop turns (the response's HEADERS, DATA and trailers leave in three separate writes),
 * runs about twice as slowly once the loop has idled as it does back to back. And the transport
 * alone (`http2_round_trip_p50_ms`: bare node:http2, the same exchange's shape, no gRPC) for the
 * floor under it, answered at once, after a 10 ms idle wait, and after the same one-request
 * inference (the state the gRPC calls' answers start from).
 * Run: deno run -A bench/grpc_bench.ts [--quick]. Prints one JSON line.
 */
import { Buffer } from "node:buffer";
import http2 from "node:http2";
import { parseArgs } from "node:util";
import { PromptLearningClient } from "../client/client.ts";
import { openRuntime } from "../server/bootstrap.ts";
import { validateTemplate } from "../server/prompts/template.ts";
import { createGrpcServer } from "../server/rpc/server.ts";
import { createServices } from "../server/services.ts";
import { createTelemetry } from "../server/telemetry/mod.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: { quick: { type: "boolean", default: false } },
});
const N = args.quick ? 40 : 200;
/** Warm-up calls per server before the steady-state rounds, and the rounds. */
const WARM = args.quick ? 200 : 1000, ROUNDS = args.quick ? 2 : 3;
const CLIENTS = 50, PER_CLIENT = args.quick ? 2 : 6;

const dir = await Deno.makeTempDir();
const rt = await openRuntime({ registryDir: dir });
const services = await createServices(rt, {
  dataDir: Deno.cwd(),
  servingLimits: { maxBatchSize: 64 },
});
services.training.start();
const server = createGrpcServer(services, { host: "127.0.0.1", port: 0 });
const { port } = await server.start();
// The same service with Prometheus metrics on (METRICS_PORT): what recording costs a call.
const telemetry = createTelemetry({
  env: () => undefined,
  metrics: { host: "127.0.0.1", port: 0 },
});
const metered = createGrpcServer(services, {
  host: "127.0.0.1",
  port: 0,
  interceptors: [telemetry.rpcInterceptor()],
});
const meteredPort = (await metered.start()).port;
const metricsAt = (await telemetry.listen())!;
const C = rt.model.config.nEmbd;
const template = validateTemplate({
  taskname: "bench",
  prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  total_virtual_tokens: 10,
  virtual_token_splits: [10],
}, "bench template");
await rt.store.put("bench", {
  template,
  totalVirtualTokens: 10,
  hiddenSize: C,
  table: rt.engine.embed(Array.from({ length: 10 }, (_, i) => 100 + i)),
  fingerprint: rt.fingerprint,
  source: "register",
});
const fields = { sentence: "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn ." };

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor(p * s.length))] * 100) / 100;
};
const summary = (lat: number[], wallMs: number) => ({
  calls: lat.length,
  p50_ms: pct(lat, 0.5),
  p99_ms: pct(lat, 0.99),
  calls_per_s: Math.round(lat.length / (wallMs / 1000) * 10) / 10,
});

// Warm-up: JIT, slots, channels.
for (let i = 0; i < 5; i++) {
  await services.inference.infer({ task: "bench", fields, options: { maxNewTokens: 2 } });
}

const direct: number[] = [];
let t0 = performance.now();
for (let i = 0; i < N; i++) {
  const s = performance.now();
  await services.inference.infer({ task: "bench", fields, options: { maxNewTokens: 2 } });
  direct.push(performance.now() - s);
}
const directSummary = summary(direct, performance.now() - t0);

// The domain call inside each gRPC call, timed (client and server share this clock); with
// `echo`, answered at once with the last result.
const inferMany = services.inference.inferMany.bind(services.inference);
let echo = false, entered = 0, left = 0;
let last: Awaited<ReturnType<typeof inferMany>> | undefined;
services.inference.inferMany = async (reqs, signal) => {
  entered = performance.now();
  if (!echo || !last) last = await inferMany(reqs, signal);
  left = performance.now();
  return last;
};
const one = new PromptLearningClient({ address: `127.0.0.1:${port}` });
const oneMetered = new PromptLearningClient({ address: `127.0.0.1:${meteredPort}` });
for (const c of [one, oneMetered]) {
  await c.waitForReady();
  for (let i = 0; i < 5; i++) await c.infer([{ task: "bench", fields, maxNewTokens: 2 }]);
}
/** Raw timings of consecutive one-request calls, to be summarised (possibly over rounds). */
interface Timings {
  lat: number[];
  request: number[];
  response: number[];
  outside: number[];
  wallMs: number;
}

async function timeCalls(
  client: PromptLearningClient,
  n: number,
  into?: Timings,
): Promise<Timings> {
  const t = into ?? { lat: [], request: [], response: [], outside: [], wallMs: 0 };
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    const [r] = await client.infer([{ task: "bench", fields, maxNewTokens: 2 }]);
    const e = performance.now();
    if (r.outcome !== "completion") throw new Error(JSON.stringify(r));
    t.lat.push(e - s);
    t.request.push(entered - s);
    t.response.push(e - left);
    t.outside.push(e - s - (left - entered));
  }
  t.wallMs += performance.now() - t0;
  return t;
}

function summarise(t: Timings) {
  return {
    ...summary(t.lat, t.wallMs),
    request_path_p50_ms: pct(t.request, 0.5),
    response_path_p50_ms: pct(t.response, 0.5),
    overhead_p50_ms: pct(t.outside, 0.5),
    overhead_p99_ms: pct(t.outside, 0.99),
  };
}

async function sequential(client = one) {
  return summarise(await timeCalls(client, N));
}

// Cold: the first calls after start, before V8 has optimised the call path (the JIT needs
// hundreds of calls); a running service is past this within seconds.
const coldSummary = await sequential();
// Steady state: after a warm-up, the plain and the metered server alternate in rounds, so both
// see the same machine and neither gains from running second.
for (let i = 0; i < WARM; i++) {
  await timeCalls(one, 1);
  await timeCalls(oneMetered, 1);
}
const plainT = await timeCalls(one, 0), meteredT = await timeCalls(oneMetered, 0);
for (let r = 0; r < ROUNDS; r++) {
  await timeCalls(one, N, plainT);
  await timeCalls(oneMetered, N, meteredT);
}
const singleSummary = summarise(plainT);
const meteredSummary = summarise(meteredT);
echo = true;
const echoSummary = await sequential();
echo = false;
one.close();
oneMetered.close();
// A scrape of what the metered calls recorded.
const scrapeMs: number[] = [];
let scrapeBytes = 0;
for (let i = 0; i < 20; i++) {
  const s = performance.now();
  scrapeBytes = (await (await fetch(`http://127.0.0.1:${metricsAt.port}/metrics`)).text()).length;
  scrapeMs.push(performance.now() - s);
}

/**
 * The transport alone: node:http2 on this runtime, client and server in this process, one
 * exchange shaped like a unary call (request HEADERS and DATA; response HEADERS, DATA, trailers),
 * answered at once or after an idle wait. Its round trip minus the wait is the floor any gRPC
 * stack on it starts from.
 */
async function http2Floor(before: "nothing" | "idle" | "inference"): Promise<number> {
  let waited = 0;
  const h2 = http2.createServer();
  h2.on("stream", (stream: http2.ServerHttp2Stream) => {
    stream.on("data", () => {});
    stream.on("end", () => {
      const answer = () => {
        stream.respond({ ":status": 200, "content-type": "application/grpc" }, {
          waitForTrailers: true,
        });
        stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(Buffer.alloc(41, 1));
      };
      if (before === "nothing") return answer();
      const t = performance.now();
      const done = () => {
        waited = performance.now() - t;
        answer();
      };
      if (before === "idle") setTimeout(done, 10);
      else void inferMany([{ task: "bench", fields, options: { maxNewTokens: 2 } }]).then(done);
    });
  });
  await new Promise<void>((r) => h2.listen(0, "127.0.0.1", () => r()));
  const client = http2.connect(`http://127.0.0.1:${(h2.address() as { port: number }).port}`);
  const exchange = () =>
    new Promise<void>((resolve, reject) => {
      const req = client.request({ ":method": "POST", ":path": "/x" });
      req.on("data", () => {});
      req.on("end", () => resolve());
      req.on("error", reject);
      req.end(Buffer.alloc(84, 2));
    });
  const lat: number[] = [];
  for (let i = 0; i < N + 10; i++) {
    const s = performance.now();
    await exchange();
    if (i >= 10) lat.push(performance.now() - s - waited);
  }
  client.close();
  h2.close();
  return pct(lat, 0.5);
}
const floorAtOnce = await http2Floor("nothing");
const floorAfterIdle = await http2Floor("idle");
// The same one-request inference as the gRPC calls', then the answer: what the transport alone
// costs on the caches and CPU state that inference leaves.
const floorAfterInference = await http2Floor("inference");

const clients = Array.from(
  { length: CLIENTS },
  () => new PromptLearningClient({ address: `127.0.0.1:${port}` }),
);
await Promise.all(clients.map((c) => c.waitForReady()));
const concurrent: number[] = [];
t0 = performance.now();
await Promise.all(clients.map(async (c) => {
  for (let i = 0; i < PER_CLIENT; i++) {
    const s = performance.now();
    const [r] = await c.infer([{ task: "bench", fields, maxNewTokens: 2 }]);
    if (r.outcome !== "completion") throw new Error(JSON.stringify(r));
    concurrent.push(performance.now() - s);
  }
}));
const concurrentSummary = summary(concurrent, performance.now() - t0);
for (const c of clients) c.close();

await server.shutdown({ graceMs: 1000 });
await metered.shutdown({ graceMs: 1000 });
await telemetry.shutdown();
await services.close();
await Deno.remove(dir, { recursive: true });
console.log(JSON.stringify({
  bench: "grpc",
  engine: rt.engine.name,
  request: "one Infer request, 2 new tokens",
  direct: directSummary,
  grpc_1_client: singleSummary,
  grpc_1_client_cold: coldSummary,
  grpc_1_client_echo: echoSummary,
  grpc_1_client_with_metrics: meteredSummary,
  metrics_scrape: { p50_ms: pct(scrapeMs, 0.5), bytes: scrapeBytes },
  grpc_50_clients: concurrentSummary,
  http2_round_trip_p50_ms: {
    at_once: floorAtOnce,
    after_10ms_idle: floorAfterIdle,
    after_inference: floorAfterInference,
  },
  grpc_overhead_p50_ms: singleSummary.overhead_p50_ms,
  grpc_p50_minus_direct_p50_ms: Math.round((singleSummary.p50_ms - directSummary.p50_ms) * 100) /
    100,
}));
Deno.exit(0);
