/**
 * The real domain services for the gRPC tests: the shipped tiny model on the fast engine (loaded
 * once per process), with the in-memory task store and a scratch data directory, so a test of
 * CancelJob, queue positions or errors tests the code users run.
 *
 * Run as a program, it serves them (for the subprocess, soak and Python tests):
 *   deno run -A test/support/test_service.ts [--port 0] [--token T] [--no-filter]
 * It prints `LISTENING <port>` once bound and shuts down on SIGTERM or when stdin closes.
 */
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
