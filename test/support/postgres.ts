/**
 * A throwaway PostgreSQL cluster for tests: `initdb` in a temp directory, `pg_ctl` on 127.0.0.1
 * at a free port, trust authentication on loopback only. PostgreSQL refuses to run as root, so
 * when the tests run as root the cluster runs as the `postgres` user (Debian's package creates
 * it) through `runuser`. Where the binaries are missing the tests are skipped with the reason on
 * a developer's machine and fail in CI (required_tool.ts).
 */
import { requireTool } from "./required_tool.ts";

/** Debian's layout first (binaries are not on PATH there), then whatever PATH has. */
function findBinDir(): string | null {
  const candidates: string[] = [];
  try {
    const versions = [...Deno.readDirSync("/usr/lib/postgresql")].map((e) => e.name)
      .sort((a, b) => Number(b) - Number(a));
    for (const v of versions) candidates.push(`/usr/lib/postgresql/${v}/bin`);
  } catch { /* not Debian's layout */ }
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) if (dir) candidates.push(dir);
  for (const dir of candidates) {
    try {
      Deno.statSync(`${dir}/initdb`);
      Deno.statSync(`${dir}/pg_ctl`);
      return dir;
    } catch { /* next */ }
  }
  return null;
}

const BIN = findBinDir();

/** The `ignore`/`check` pair of a test that needs a PostgreSQL cluster. */
export function postgresTool(file: string) {
  return requireTool(
    BIN ? null : "PostgreSQL's initdb/pg_ctl are missing (apt-get install postgresql)",
    file,
  );
}

const IS_ROOT = Deno.uid() === 0;

async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<void> {
  const [exe, argv] = IS_ROOT ? ["runuser", ["-u", "postgres", "--", cmd, ...args]] : [cmd, args];
  const out = await new Deno.Command(exe, {
    args: argv,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const dec = new TextDecoder();
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${dec.decode(out.stderr)}${
        dec.decode(out.stdout)
      }`,
    );
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

export interface PgCluster {
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  url: string;
  port: number;
  /** Stops the server at once (clients see their connections cut), keeping the data. */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** Stops it and removes the data directory. */
  destroy(): Promise<void>;
}

export async function startPostgres(): Promise<PgCluster> {
  if (!BIN) throw new Error("PostgreSQL's initdb/pg_ctl are missing");
  const dir = await Deno.makeTempDir({ prefix: "plt-pg-" });
  if (IS_ROOT) {
    // The postgres user owns the cluster; the temp dir's parent is world-traversable.
    await Deno.chmod(dir, 0o755);
    const { uid, gid } = await userIds("postgres");
    await Deno.chown(dir, uid, gid);
  }
  const data = `${dir}/data`;
  await run(`${BIN}/initdb`, [
    "-D",
    data,
    "-U",
    "postgres",
    "--auth=trust",
    "--no-sync",
    "-E",
    "UTF8",
    "--locale=C",
  ]);
  const port = freePort();
  const opts = [
    `-c listen_addresses=127.0.0.1`,
    `-c port=${port}`,
    `-c unix_socket_directories=${dir}`,
    `-c fsync=off`,
    `-c max_connections=200`,
  ].join(" ");
  const start = () =>
    run(`${BIN}/pg_ctl`, ["-D", data, "-o", opts, "-l", `${dir}/log`, "-w", "-t", "60", "start"]);
  const stop = () => run(`${BIN}/pg_ctl`, ["-D", data, "-m", "immediate", "-w", "stop"]);
  await start();
  let running = true;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    async stop() {
      await stop();
      running = false;
    },
    async start() {
      await start();
      running = true;
    },
    async destroy() {
      if (running) await stop().catch(() => {});
      running = false;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A fresh database on the cluster, so tests sharing a cluster do not see each other's rows. */
export async function createDatabase(cluster: PgCluster, name: string): Promise<string> {
  const { default: pg } = await import("pg");
  const c = new pg.Client({ connectionString: cluster.url });
  await c.connect();
  try {
    await c.query(`CREATE DATABASE "${name}"`);
  } finally {
    await c.end();
  }
  return cluster.url.replace(/\/postgres$/, `/${name}`);
}

async function userIds(user: string): Promise<{ uid: number; gid: number }> {
  const line = (await Deno.readTextFile("/etc/passwd")).split("\n")
    .find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`running as root, and there is no "${user}" user to run PostgreSQL`);
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

/**
 * Tests that each run on a throwaway cluster of their own: `test(name, database, fn)` registers a
 * Deno test that starts a cluster, creates `database` in it, calls `fn(url, cluster)` and destroys
 * the cluster whatever happens (processes and pools `fn` starts are its to stop). Skipped where
 * PostgreSQL is missing, failed in CI (`postgresTool`).
 */
export function postgresTests(file: string) {
  const tool = postgresTool(file);
  return {
    tool,
    test(
      name: string,
      database: string,
      fn: (url: string, cluster: PgCluster) => Promise<void>,
    ): void {
      Deno.test(
        { name, ignore: tool.ignore, sanitizeResources: false, sanitizeOps: false },
        async () => {
          tool.check();
          const cluster = await startPostgres();
          try {
            await fn(await createDatabase(cluster, database), cluster);
          } finally {
            await cluster.destroy();
          }
        },
      );
    },
  };
}
