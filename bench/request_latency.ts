/**
 * One request at a time, as a client sees it: steady-state unary Infer (one request, 2 new tokens)
 * through gRPC on loopback, with the engine in a worker thread (the service's default) and on the
 * event loop. For each: latency p50, the time inside InferenceService, and what is outside it (the
 * gRPC overhead, as bench/grpc_bench.ts defines it); then the gRPC stack's own rate: 16 clients'
 * calls answered at once with a stored result (no engine work), so calls/s is the stack's CPU cost.
 *
 * `--root DIR` measures another checkout of this project (its server and client code, this
 * script's timing), so a change is compared with the state before it on the same machine:
 *   git worktree add /tmp/before <rev> && deno run -A bench/request_latency.ts --root /tmp/before
 *   deno run -A bench/request_latency.ts
 * (the worktree needs node_modules and server/model/onednn/build: link or copy them). Alternate
 * the two runs a few times: figures move by about 5% between processes on a 2-core machine.
 * Prints one JSON line.
 *
 * `--profile SECONDS`: only the engine-worker calls, for a profiler to attach to (see
 * scripts/profile-infer.sh): after the warm-up it writes `steady` to stderr, calls for SECONDS,
 * and prints the calls made and their p50s.
 */
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    root: { type: "string", default: new URL("../", import.meta.url).pathname },
    warm: { type: "string", default: "1000" },
    calls: { type: "string", default: "600" },
    profile: { type: "string" },
  },
});
const root = args.root.replace(/\/?$/, "/");
const WARM = Number(args.warm), CALLS = Number(args.calls);

const { PromptLearningClient } = await import(`${root}client/client.ts`);
const { openRuntime } = await import(`${root}server/bootstrap.ts`);
const { validateTemplate } = await import(`${root}server/prompts/template.ts`);
const { createGrpcServer } = await import(`${root}server/rpc/server.ts`);
const { createServices } = await import(`${root}server/services.ts`);

const fields = { sentence: "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn ." };
const request = [{ task: "bench", fields, maxNewTokens: 2 }];
const p50 = (xs: number[]) =>
  Math.round([...xs].sort((a, b) => a - b)[xs.length >> 1] * 1000) / 1000;

/** The service with one task, its gRPC server, and InferenceService's calls timed. */
async function open(engineWorker: boolean) {
  const dir = await Deno.makeTempDir();
  const rt = await openRuntime({ registryDir: dir, engineWorker });
  const services = await createServices(rt, {
    dataDir: root,
    servingLimits: { maxBatchSize: 64 },
  });
  const server = createGrpcServer(services, { host: "127.0.0.1", port: 0 });
  const { port } = await server.start();
  await rt.store.put("bench", {
    template: validateTemplate({
      taskname: "bench",
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      total_virtual_tokens: 10,
      virtual_token_splits: [10],
    }, "bench template"),
    totalVirtualTokens: 10,
    hiddenSize: rt.model.config.nEmbd,
    table: rt.engine.embed(Array.from({ length: 10 }, (_, i) => 100 + i)),
    fingerprint: rt.fingerprint,
    source: "register",
  });
  const inferMany = services.inference.inferMany.bind(services.inference);
  const timing = { entered: 0, left: 0, echo: false, last: undefined as unknown };
  services.inference.inferMany = async (reqs: unknown, signal: unknown) => {
    timing.entered = performance.now();
    if (!timing.echo || !timing.last) timing.last = await inferMany(reqs, signal);
    timing.left = performance.now();
    return timing.last;
  };
  const close = async () => {
    await server.shutdown({ graceMs: 1000 });
    await services.close();
    rt.engine.dispose();
    await Deno.remove(dir, { recursive: true });
  };
  return { engine: rt.engine.name as string, port, timing, close };
}

async function sequential(engineWorker: boolean, profileMs?: number) {
  const s = await open(engineWorker);
  const client = new PromptLearningClient({ address: `127.0.0.1:${s.port}` });
  await client.waitForReady();
  const lat: number[] = [], inside: number[] = [], outside: number[] = [];
  // With profileMs: warm up, then call until that much time has passed.
  let until = Infinity;
  for (let i = 0; profileMs === undefined ? i < WARM + CALLS : performance.now() < until; i++) {
    if (profileMs !== undefined && i === WARM) {
      console.error("steady");
      until = performance.now() + profileMs;
    }
    const t0 = performance.now();
    const [r] = await client.infer(request);
    const t1 = performance.now();
    if (r.outcome !== "completion") throw new Error(JSON.stringify(r));
    if (i < WARM) continue;
    lat.push(t1 - t0);
    inside.push(s.timing.left - s.timing.entered);
    outside.push(t1 - t0 - (s.timing.left - s.timing.entered));
  }
  client.close();
  await s.close();
  return {
    engine: s.engine,
    calls: lat.length,
    latency_p50_ms: p50(lat),
    inside_p50_ms: p50(inside),
    grpc_overhead_p50_ms: p50(outside),
  };
}

async function echoRate() {
  const s = await open(false);
  s.timing.echo = true;
  const clients = Array.from(
    { length: 16 },
    () => new PromptLearningClient({ address: `127.0.0.1:${s.port}` }),
  );
  await Promise.all(clients.map((c) => c.waitForReady()));
  const round = async (per: number) => {
    const t0 = performance.now();
    await Promise.all(clients.map(async (c) => {
      for (let i = 0; i < per; i++) await c.infer(request);
    }));
    return clients.length * per / ((performance.now() - t0) / 1000);
  };
  await round(200);
  const rates: number[] = [];
  for (let i = 0; i < 5; i++) rates.push(await round(200));
  for (const c of clients) c.close();
  await s.close();
  return Math.round([...rates].sort((a, b) => a - b)[2]);
}

if (args.profile !== undefined) {
  const seconds = Number(args.profile);
  if (!(seconds > 0)) throw new RangeError(`--profile takes seconds > 0: found ${args.profile}`);
  console.log(
    JSON.stringify({
      bench: "request_latency",
      profile_s: seconds,
      ...await sequential(true, seconds * 1000),
    }),
  );
  Deno.exit(0);
}
const worker = await sequential(true);
const eventLoop = await sequential(false);
const echo = await echoRate();
console.log(JSON.stringify({
  bench: "request_latency",
  root,
  request: "one Infer request, 2 new tokens, one call at a time after warm-up",
  engine_worker: worker,
  engine_on_event_loop: eventLoop,
  echo_16_clients_calls_per_s: echo,
}));
Deno.exit(0);
