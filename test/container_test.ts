/**
 * The service image, run as the Kubernetes pod runs it (k8s/base/deployment.yaml, with the ConfigMap's
 * settings): non-root, read-only root filesystem, all capabilities dropped, a tmpfs /tmp, an auth token set. It must answer
 * grpc.health.v1.Health (Watch, then Check) with SERVING on the loopback port PORT names, with no
 * token (kubelet's gRPC probes send none), serve PromptLearning (ListTasks on the empty registry
 * volume; DeleteTask refused without the token, NOT_FOUND with it), and exit 0 on SIGTERM well
 * within the grace period.
 * On PostgreSQL (issue 13's backend), the same image given DATABASE_URL keeps a task registered
 * through it as a row of that database (a throwaway cluster on loopback, test/support/postgres.ts).
 *
 * Needs a Docker daemon at DOCKER_HOST (default unix:///var/run/docker.sock) and the image
 * (default promptlearning:<package.json version>, override with CONTAINER_IMAGE), built with
 *   scripts/build-image.sh
 * Without either the test is skipped with the reason printed, unless CONTAINER_TEST=required,
 * which turns the skip into a failure (CI sets it where it starts dockerd).
 * The container uses host networking (a daemon started with --bridge=none has no other network).
 * Ryuk is disabled unless TESTCONTAINERS_RYUK_DISABLED says otherwise: its image can't be pulled
 * offline, and the test stops and removes its container itself. TESTCONTAINERS_HOST_OVERRIDE
 * defaults to 127.0.0.1 (no bridge network to find a gateway on).
 */
import { IN_CI } from "./support/required_tool.ts";
import { createDatabase, postgresTool, startPostgres } from "./support/postgres.ts";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { StartedTestContainer } from "testcontainers";
import { parse } from "yaml";
import { PromptLearningClient, type RpcCallError } from "../client/client.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";

const root = new URL("../", import.meta.url);
const pkg = JSON.parse(await Deno.readTextFile(new URL("package.json", root)));
const DOCKER_HOST = Deno.env.get("DOCKER_HOST") || "unix:///var/run/docker.sock";
const IMAGE = Deno.env.get("CONTAINER_IMAGE") || `promptlearning:${pkg.version}`;
const REQUIRED = Deno.env.get("CONTAINER_TEST") === "required";
/** The image's user (Dockerfile USER, k8s runAsUser). */
const APP_UID = 10001;
/** Model load and first compile included; generous for a loaded CI machine. */
const STARTUP_MS = 180_000;
const TOKEN = "container-test-token";
const PG = postgresTool("test/container_test.ts");
/** k8s/base/deployment.yaml terminationGracePeriodSeconds. */
const GRACE_S = 30;

interface DockerResponse {
  status: number;
  body: string;
}

/**
 * One HTTP/1.0 request to the Docker Engine API at DOCKER_HOST (unix:// or tcp://), or null when
 * nothing answers within `timeoutMs`.
 */
async function docker(
  method: string,
  path: string,
  timeoutMs = 5_000,
): Promise<DockerResponse | null> {
  const url = new URL(DOCKER_HOST);
  let conn: Deno.Conn | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), timeoutMs);
  });
  const request = (async (): Promise<DockerResponse | null> => {
    conn = url.protocol === "unix:"
      ? await Deno.connect({ transport: "unix", path: url.pathname })
      : await Deno.connect({ hostname: url.hostname, port: Number(url.port || 2375) });
    const head = `${method} ${path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n`;
    await conn.write(new TextEncoder().encode(head));
    const raw = new TextDecoder().decode(
      await new Response(conn.readable).arrayBuffer(),
    );
    conn = undefined; // the readable closed it
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
    if (!m) return null;
    const split = raw.indexOf("\r\n\r\n");
    return { status: Number(m[1]), body: split < 0 ? "" : raw.slice(split + 4) };
  })().catch(() => null);
  try {
    return await Promise.race([request, timeout]);
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // already closed
    }
  }
}

async function skipReason(): Promise<string | null> {
  const ping = await docker("GET", "/_ping");
  if (ping?.status !== 200) return `no Docker daemon answers at DOCKER_HOST=${DOCKER_HOST}`;
  const image = await docker("GET", `/images/${encodeURIComponent(IMAGE)}/json`);
  if (image?.status !== 200) {
    return `image ${IMAGE} not found at ${DOCKER_HOST}: build it with scripts/build-image.sh`;
  }
  return null;
}

const reason = await skipReason();
if (reason && !REQUIRED) {
  console.warn(`test/container_test.ts skipped: ${reason} (CONTAINER_TEST=required fails instead)`);
}

/** k8s/base/configmap.yaml's data: the environment the pod gets. */
async function configMapData(): Promise<Record<string, string>> {
  const cm = parse(await Deno.readTextFile(new URL("k8s/base/configmap.yaml", root)));
  return cm.data;
}

function freeLoopbackPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = l.addr as Deno.NetAddr;
  l.close();
  return port;
}

type ServingStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";
interface HealthResponse {
  status: ServingStatus;
}
interface HealthStub extends grpc.Client {
  Check(
    req: { service: string },
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: HealthResponse) => void,
  ): grpc.ClientUnaryCall;
  Watch(req: { service: string }, opts: grpc.CallOptions): grpc.ClientReadableStream<
    HealthResponse
  >;
}

function healthClient(address: string): HealthStub {
  const def = protoLoader.loadSync(
    new URL("proto/grpc/health/v1/health.proto", root).pathname,
    { enums: String, defaults: true },
  );
  const pkgDef = grpc.loadPackageDefinition(def) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  const Health = pkgDef.grpc.health.v1.Health;
  return new Health(address, grpc.credentials.createInsecure()) as unknown as HealthStub;
}

function waitForReady(client: grpc.Client, deadline: Date): Promise<void> {
  return new Promise((resolve, reject) =>
    client.waitForReady(deadline, (err) => err ? reject(err) : resolve())
  );
}

/** Resolves at the first SERVING that Health/Watch streams (the server may start NOT_SERVING). */
function watchUntilServing(client: HealthStub, deadline: Date): Promise<ServingStatus[]> {
  return new Promise((resolve, reject) => {
    const seen: ServingStatus[] = [];
    const call = client.Watch({ service: "" }, { deadline });
    call.on("data", (res: HealthResponse) => {
      seen.push(res.status);
      if (res.status === "SERVING") {
        call.cancel();
        resolve(seen);
      }
    });
    call.on("error", (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
    call.on("end", () => reject(new Error(`Watch ended before SERVING: saw ${seen.join(",")}`)));
  });
}

function check(client: HealthStub, deadline: Date): Promise<ServingStatus> {
  return new Promise((resolve, reject) =>
    client.Check(
      { service: "" },
      { deadline },
      (err, res) => err ? reject(err) : resolve(res!.status),
    )
  );
}

async function inspectState(id: string): Promise<{ ExitCode: number; OOMKilled: boolean }> {
  const res = await docker("GET", `/containers/${id}/json`);
  assert(res?.status === 200, `inspect ${id}: ${res?.status} ${res?.body}`);
  return JSON.parse(res.body).State;
}

Deno.test({
  name:
    "container: the image serves Health SERVING on PORT as the pod runs it, then exits 0 on SIGTERM",
  ignore: reason !== null && !REQUIRED && !IN_CI,
  // grpc-js timers and the Docker client's sockets outlive single calls.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (reason) throw new Error(`CONTAINER_TEST=required or CI=true, but ${reason}`);
    if (!Deno.env.get("DOCKER_HOST")) Deno.env.set("DOCKER_HOST", DOCKER_HOST);
    if (!Deno.env.get("TESTCONTAINERS_RYUK_DISABLED")) {
      Deno.env.set("TESTCONTAINERS_RYUK_DISABLED", "true");
    }
    // Inside a container testcontainers looks for the "bridge" network's gateway, which a
    // daemon started with --bridge=none lacks; the container shares the host network anyway.
    if (!Deno.env.get("TESTCONTAINERS_HOST_OVERRIDE")) {
      Deno.env.set("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1");
    }
    const { GenericContainer, Wait } = await import("testcontainers");

    const port = freeLoopbackPort();
    const logs: string[] = [];
    const definition = new GenericContainer(IMAGE)
      .withNetworkMode("host")
      .withEnvironment({
        // The pod's settings, so a value the server refuses fails here first.
        ...await configMapData(),
        HOST: "127.0.0.1",
        PORT: String(port),
        AUTH_TOKEN: TOKEN,
      })
      .withUser(`${APP_UID}:${APP_UID}`)
      .withDroppedCapabilities("ALL")
      .withSecurityOpt("no-new-privileges")
      .withTmpFs({ "/tmp": "rw,size=512m", "/data": `rw,size=256m,uid=${APP_UID}` })
      .withLogConsumer((stream) => stream.on("data", (line: unknown) => logs.push(String(line))))
      // The server's start-up line; the wait fails at once if the container exits first.
      .withWaitStrategy(Wait.forLogMessage(/"msg":"serving"/))
      .withStartupTimeout(STARTUP_MS);
    // testcontainers has no builder for a read-only root filesystem; k8s sets one.
    const hostConfig = (definition as unknown as { hostConfig?: { ReadonlyRootfs?: boolean } })
      .hostConfig;
    assert(hostConfig, "testcontainers' GenericContainer no longer has hostConfig");
    hostConfig.ReadonlyRootfs = true;

    let container: StartedTestContainer | undefined;
    try {
      container = await definition.start();
    } catch (e) {
      console.error(`container logs:\n${logs.join("")}`);
      throw e;
    }
    const id = container.getId();
    const client = healthClient(`127.0.0.1:${port}`);
    try {
      const deadline = new Date(Date.now() + STARTUP_MS);
      await waitForReady(client, deadline);
      const seen = await watchUntilServing(client, deadline);
      assertEquals(seen.at(-1), "SERVING");
      assertEquals(await check(client, new Date(Date.now() + 10_000)), "SERVING");

      // The service itself answers, and the token from the environment guards mutations.
      const api = new PromptLearningClient({ address: `127.0.0.1:${port}` });
      try {
        const tasks = await api.listTasks({}, { deadline: 10_000 });
        assertEquals(tasks.tasks, [], "a fresh registry volume lists no tasks");
        const denied = await assertRejects(() => api.deleteTask("any", { deadline: 10_000 }));
        assertEquals((denied as RpcCallError).codeName, "UNAUTHENTICATED");
        const authed = new PromptLearningClient({ address: `127.0.0.1:${port}`, token: TOKEN });
        const missing = await assertRejects(() => authed.deleteTask("any", { deadline: 10_000 }));
        authed.close();
        assertEquals((missing as RpcCallError).codeName, "NOT_FOUND");
      } finally {
        api.close();
      }

      const uid = await container.exec(["id", "-u"]);
      assertEquals(uid.output.trim(), String(APP_UID), "the server runs as the app user");
      const rootfs = await container.exec(["touch", "/home/app/should-not-exist"]);
      assert(rootfs.exitCode !== 0, "the root filesystem is read-only (even $HOME)");

      client.close();
      // SIGTERM: the server drains and exits by itself, long before docker would SIGKILL.
      const t0 = performance.now();
      await container.stop({ timeout: GRACE_S * 1000, remove: false });
      const stopS = (performance.now() - t0) / 1000;
      const state = await inspectState(id);
      assertEquals(state.OOMKilled, false);
      assertEquals(state.ExitCode, 0, `exit code after SIGTERM (stop took ${stopS.toFixed(1)} s)`);
      assert(stopS < GRACE_S - 5, `stopped in ${stopS.toFixed(1)} s, grace is ${GRACE_S} s`);
      await docker("DELETE", `/containers/${id}?v=true`);
      container = undefined;
    } catch (e) {
      console.error(`container ${id} logs:\n${logs.join("")}`);
      throw e;
    } finally {
      client.close();
      if (container) await container.stop({ timeout: 1_000 }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "container: the image on PostgreSQL (DATABASE_URL over host networking) keeps its registry in the database",
  ignore: (reason !== null || PG.ignore) && !REQUIRED && !IN_CI,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (reason) throw new Error(`CONTAINER_TEST=required or CI=true, but ${reason}`);
    PG.check();
    if (!Deno.env.get("DOCKER_HOST")) Deno.env.set("DOCKER_HOST", DOCKER_HOST);
    if (!Deno.env.get("TESTCONTAINERS_RYUK_DISABLED")) {
      Deno.env.set("TESTCONTAINERS_RYUK_DISABLED", "true");
    }
    if (!Deno.env.get("TESTCONTAINERS_HOST_OVERRIDE")) {
      Deno.env.set("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1");
    }
    const { GenericContainer, Wait } = await import("testcontainers");
    const cluster = await startPostgres();
    const logs: string[] = [];
    let container: StartedTestContainer | undefined;
    try {
      const url = await createDatabase(cluster, "container_test");
      const port = freeLoopbackPort();
      container = await new GenericContainer(IMAGE)
        .withNetworkMode("host")
        .withEnvironment({
          ...await configMapData(),
          HOST: "127.0.0.1",
          PORT: String(port),
          AUTH_TOKEN: TOKEN,
          DATABASE_URL: url,
        })
        .withUser(`${APP_UID}:${APP_UID}`)
        .withDroppedCapabilities("ALL")
        .withSecurityOpt("no-new-privileges")
        .withTmpFs({ "/tmp": "rw,size=512m", "/data": `rw,size=256m,uid=${APP_UID}` })
        .withLogConsumer((stream) => stream.on("data", (line: unknown) => logs.push(String(line))))
        .withWaitStrategy(Wait.forLogMessage(/"msg":"serving"/))
        .withStartupTimeout(STARTUP_MS)
        .start();
      const api = new PromptLearningClient({ address: `127.0.0.1:${port}`, token: TOKEN });
      try {
        const hidden = 256; // the shipped model's n_embd
        const t = await api.registerTask({
          name: "in-postgres",
          template: {
            promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            totalVirtualTokens: 2,
            virtualTokenSplits: [2],
          },
          table: {
            rows: 2,
            hidden,
            values: Array.from({ length: 2 * hidden }, (_, i) => Math.sin(i) * 0.1),
          },
        }, { deadline: 30_000 });
        assertEquals([t.name, t.version], ["in-postgres", 1]);
      } finally {
        api.close();
      }
      // The version is a row of the database the pod was given, not a file in the container.
      const { default: pg } = await import("pg");
      const db = new pg.Client({ connectionString: url });
      await db.connect();
      try {
        const rows = await db.query("SELECT name, version FROM task_versions");
        assertEquals(rows.rows, [{ name: "in-postgres", version: 1 }]);
      } finally {
        await db.end();
      }
      await container.stop({ timeout: GRACE_S * 1000 });
      container = undefined;
    } catch (e) {
      console.error(`container logs:\n${logs.join("")}`);
      throw e;
    } finally {
      if (container) await container.stop({ timeout: 1_000 }).catch(() => {});
      await cluster.destroy();
    }
  },
});
