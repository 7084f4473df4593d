/**
 * The real domain services for the gRPC tests: the shipped tiny model on the fast engine (loaded
 * once per process), with the in-memory task store and a scratch data directory, so a test of
 * CancelJob, queue positions or errors tests the code users run.
 *
 * Run as a program, it serves them (for the subprocess, soak and Python tests):
 *   deno run -A test/support/test_service.ts [--port 0] [--token T] [--no-filter]
 * It prints `LISTENING <port>` once bound and shuts down on SIGTERM or when stdin closes.
 */
import { toStruct } from "../../client/struct.ts";
import type { TrainRequest } from "../../proto/gen/promptlearning/v1/TrainRequest.ts";
import { openRuntime, type Runtime } from "../../server/bootstrap.ts";
import { MemoryTaskStore } from "../../server/registry/memory_store.ts";
import { createGrpcServer, type GrpcServerOptions } from "../../server/rpc/server.ts";
import { createServices, type Services, type ServicesOptions } from "../../server/services.ts";

let shared: Promise<Runtime> | undefined;

/** Model, tokenizer and engine, loaded once per process; each caller gets its own empty store. */
export async function testRuntime(): Promise<Runtime> {
  shared ??= (async () => {
    const scratch = await Deno.makeTempDir({ prefix: "plt-registry-" });
    const rt = await openRuntime({ registryDir: scratch, backend: "fast", threads: 1 });
    await Deno.remove(scratch, { recursive: true });
    return rt;
  })();
  const rt = await shared;
  return { ...rt, store: new MemoryTaskStore({ fingerprint: rt.fingerprint }) };
}

export interface TestServices extends Services {
  runtime: Runtime;
  /** The data directory Train dataset paths resolve in (a fresh temp dir). */
  dataDir: string;
  /** Where jobs checkpoint (a fresh temp dir). */
  runsDir: string;
  /** Closes the services and removes the scratch directories. */
  dispose(): Promise<void>;
}

export async function createTestServices(
  opts: Partial<ServicesOptions> = {},
): Promise<TestServices> {
  const runtime = await testRuntime();
  const dataDir = await Deno.makeTempDir({ prefix: "plt-data-" });
  const runsDir = await Deno.makeTempDir({ prefix: "plt-runs-" });
  const services = await createServices(runtime, {
    dataDir,
    runsDir,
    valGenerateLimit: 4,
    ...opts,
  });
  services.training.start();
  return {
    ...services,
    runtime,
    dataDir,
    runsDir,
    async dispose() {
      await services.close();
      await Deno.remove(dataDir, { recursive: true });
      await Deno.remove(runsDir, { recursive: true });
    },
  };
}

/** The sentiment template of the tutorial with 2 virtual tokens, as proto fields. */
export const SENTIMENT_TEMPLATE = {
  promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  promptTemplateFields: ["sentence", "label"],
  totalVirtualTokens: 2,
  virtualTokenSplits: [2],
  answerField: "label",
};

/** A [rows, hidden] table of small deterministic values. */
export function table(rows: number, hidden: number, seed = 1): number[] {
  return Array.from({ length: rows * hidden }, (_, i) => Math.sin(seed * 7 + i) * 0.1);
}

export interface Served {
  port: number;
  proc: Deno.ChildProcess;
  stderr: Promise<string>;
  stop(): Promise<Deno.CommandStatus>;
}

/** This program in a Deno subprocess; it exits when its stdin closes. */
export async function spawnTestServer(args: string[] = []): Promise<Served> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { OPENBLAS_CORETYPE: Deno.env.get("OPENBLAS_CORETYPE") ?? "Haswell" },
  }).spawn();
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/LISTENING (\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited before listening: ${text}`);
    text += value;
  }
  const port = Number(/LISTENING (\d+)/.exec(text)![1]);
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  const stderr = new Response(proc.stderr).text();
  const writer = proc.stdin.getWriter();
  return {
    port,
    proc,
    stderr,
    async stop() {
      await writer.close().catch(() => {});
      return await proc.status;
    },
  };
}

if (import.meta.main) {
  const args = Deno.args;
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const services = await createTestServices();
  const opts: GrpcServerOptions = {
    host: arg("--host") ?? "127.0.0.1",
    port: Number(arg("--port") ?? 0),
    authToken: arg("--token"),
    filterGoaway: !args.includes("--no-filter"),
    shutdownGraceMs: 2000,
  };
  const server = createGrpcServer(services, opts);
  const { port } = await server.start();
  console.log(`LISTENING ${port}`);
  const stop = async () => {
    await server.shutdown();
    await services.dispose();
    console.log(`STATS ${JSON.stringify(server.stats())}`);
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  // Ends with the parent: stdin closes when the test process goes away.
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* drain */ }
    await stop();
  })();
}

/** Six labelled sentences of the sentiment task, as proto records. */
export const RECORDS = [
  ["the film was wonderful", "positive"],
  ["a dull, tiring mess", "negative"],
  ["great acting and a fine story", "positive"],
  ["i hated every minute", "negative"],
  ["a joy from start to end", "positive"],
  ["boring and far too long", "negative"],
].map(([sentence, label]) => toStruct({ taskname: "sentiment", sentence, label }));

/** A short prompt-tuning run of `sentiment` on inline records. */
/** A two-step prompt-tuning Train of the sentiment task on RECORDS. */
export function trainRequest(over: { name?: string; maxSteps?: number } = {}): TrainRequest {
  return {
    config: {
      name: over.name ?? "grpc-test",
      newTasks: ["sentiment"],
      taskTemplates: [{ ...SENTIMENT_TEMPLATE, taskname: "sentiment", maxSeqLength: 64 }],
      virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_PROMPT_TUNING",
      promptTuning: { initMethod: "INIT_METHOD_TEXT", initText: "classify the sentiment" },
      optim: { lr: 0.01 },
      maxSteps: over.maxSteps ?? 2,
      maxEpochs: 100,
      globalBatchSize: 3,
      microBatchSize: 3,
      valCheckInterval: 2,
      logEveryNSteps: 1,
      trainDs: { records: RECORDS },
      // One whole validation batch (NeMo drops a partial one: validation_drop_last).
      validationDs: { records: RECORDS.slice(0, 3) },
    },
  };
}
