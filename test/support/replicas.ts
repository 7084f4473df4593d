/**
 * Replicas of the real service (server/main.ts processes) on one PostgreSQL database, for the
 * multi-replica tests: each on its own loopback port with its own runs directory, its log kept so
 * a failing test can show it.
 */
import { PromptLearningClient } from "../../client/client.ts";

const root = new URL("../../", import.meta.url).pathname;

export interface Replica {
  name: string;
  address: string;
  client: PromptLearningClient;
  child: Deno.ChildProcess;
  /** Everything the process wrote so far (stdout and stderr). */
  log(): string;
  /** SIGKILL: no shutdown code runs. */
  kill(): Promise<void>;
  /** SIGTERM and wait. */
  stop(): Promise<Deno.CommandStatus>;
}

/** A small file system of its own (tmpfs) mounted over `dir` for one replica: a disk to fill. */
export interface SmallDisk {
  dir: string;
  /** tmpfs's size option: "256k", "1m". */
  size: string;
}

/**
 * `databaseUrl` null: the embedded backend (then pass REGISTRY_DIR, and RUNS_DIR to keep it).
 * `disks`: tmpfs mounts the process sees (in a mount namespace of its own, `unshare -rm`, so the
 * test needs no privileges and leaves nothing mounted).
 */
export async function startReplica(
  name: string,
  databaseUrl: string | null,
  env: Record<string, string> = {},
  disks: SmallDisk[] = [],
): Promise<Replica> {
  const runs = await Deno.makeTempDir({ prefix: `plt-runs-${name}-` });
  const deno = [Deno.execPath(), "run", "-A", `${root}server/main.ts`];
  const mounts = disks.map((d) => `mount -t tmpfs -o size=${d.size} tmpfs '${d.dir}'`);
  const [cmd, ...args] = disks.length
    ? ["unshare", "-rm", "sh", "-ec", `${mounts.join(" && ")} && exec "$@"`, "sh", ...deno]
    : deno;
  const child = new Deno.Command(cmd, {
    args,
    env: {
      PORT: "0",
      HOST: "127.0.0.1",
      OPENBLAS_CORETYPE: Deno.env.get("OPENBLAS_CORETYPE") ?? "Haswell",
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
      RUNS_DIR: runs,
      DATA_DIR: root,
      THREADS: "1",
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) text += chunk;
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  let exited = false;
  child.status.then(() => exited = true);
  const deadline = Date.now() + 120_000;
  let address = "";
  while (!address) {
    const m = /"msg":"serving","address":"([^"]+)"/.exec(text);
    if (m) address = m[1];
    else if (exited) throw new Error(`replica ${name} exited before serving:\n${text}`);
    else if (Date.now() > deadline) throw new Error(`replica ${name} did not serve:\n${text}`);
    else await new Promise((r) => setTimeout(r, 50));
  }
  const client = new PromptLearningClient({ address });
  const cleanup = async () => {
    client.close();
    await drained.catch(() => {});
    await Deno.remove(runs, { recursive: true }).catch(() => {});
  };
  return {
    name,
    address,
    client,
    child,
    log: () => text,
    async kill() {
      if (!exited) child.kill("SIGKILL");
      await child.status;
      await cleanup();
    },
    async stop() {
      if (!exited) child.kill("SIGTERM");
      // A process that does not exit in time is killed, so a hang fails a test, never stalls it.
      const timer = setTimeout(() => {
        if (!exited) child.kill("SIGKILL");
      }, 60_000);
      const status = await child.status;
      clearTimeout(timer);
      await cleanup();
      return status;
    },
  };
}

/**
 * Calls `probe` until it returns a value other than undefined, or throws after `timeoutMs` with
 * `what` and the last error; returns the value and the time it took.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 10_000,
  everyMs = 20,
): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  let last: unknown;
  while (performance.now() - t0 < timeoutMs) {
    try {
      const v = await probe();
      if (v !== undefined) return { value: v, ms: performance.now() - t0 };
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms (last error: ${last})`);
}
