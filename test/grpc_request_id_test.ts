/**
 * RegisterTask's and Train's request_id (AIP-155) end to end, through the typed client over
 * loopback: a retry gets the first call's version (or job) and writes nothing; the id reused for
 * another request is ALREADY_EXISTS; a malformed id is INVALID_ARGUMENT; and a call whose deadline
 * passed before its write committed leaves nothing behind, so its retry writes once.
 */
import * as grpc from "@grpc/grpc-js";
import { PromptLearningClient } from "../client/client.ts";
import { MemoryTaskStore } from "../server/registry/memory_store.ts";
import type { TaskStore } from "../server/registry/types.ts";
import { createGrpcServer } from "../server/rpc/server.ts";
import { createServices } from "../server/services.ts";
import { assertEquals, assertStringIncludes } from "./assert.ts";
import { rejectsWith } from "./support/rpc_assert.ts";
import {
  SENTIMENT_TEMPLATE,
  spawnTestServer,
  table,
  testRuntime,
  trainRequest,
} from "./support/test_service.ts";
import type { JobStore } from "../server/training/job_store.ts";
import { MemoryJobStore } from "../server/training/local_job_store.ts";

const HIDDEN = 256; // the shipped tiny model's n_embd
const TABLE = { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN) };
const OTHER_TABLE = { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN, 2) };
const ID = "3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b";

/** The real services and server on loopback, over `store` (default: a fresh memory store). */
async function withServer(
  fn: (client: PromptLearningClient) => Promise<void>,
  store?: (fresh: MemoryTaskStore) => TaskStore,
  jobs?: JobStore,
) {
  const rt = await testRuntime();
  const dataDir = await Deno.makeTempDir({ prefix: "plt-data-" });
  const mem = new MemoryTaskStore({ fingerprint: rt.fingerprint });
  // Awaited: createServices may build its job store asynchronously.
  const services = await createServices({ ...rt, store: store ? store(mem) : mem }, {
    dataDir,
    runsDir: `${dataDir}/runs`,
    jobs,
  });
  services.training.start();
  const server = createGrpcServer(services, { port: 0, shutdownGraceMs: 1000 });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  try {
    await fn(client);
  } finally {
    client.close();
    await server.shutdown();
    await services.close();
    await Deno.remove(dataDir, { recursive: true });
  }
}

Deno.test("RegisterTask with a request_id: the retry gets the same version and writes nothing", async () => {
  await withServer(async (client) => {
    const req = { name: "sent", template: SENTIMENT_TEMPLATE, table: TABLE, requestId: ID };
    const first = await client.registerTask(req);
    assertEquals([first.version, first.versions], [1, [1]]);
    const retry = await client.registerTask(req);
    assertEquals([retry.version, retry.versions], [1, [1]]);
    assertEquals(retry.createdAt, first.createdAt);
    // The id is a UUID, compared without regard to case.
    const upper = await client.registerTask({ ...req, requestId: ID.toUpperCase() });
    assertEquals(upper.version, 1);
    // Without an id (or with another) each call is a new version; the old id still answers.
    assertEquals((await client.registerTask({ ...req, requestId: "" })).version, 2);
    assertEquals(
      (await client.registerTask({ ...req, requestId: crypto.randomUUID() })).version,
      3,
    );
    const late = await client.registerTask(req);
    assertEquals([late.version, late.versions], [1, [1, 2, 3]]);
    // A create_only retry is its own first answer, not ALREADY_EXISTS.
    const once = { name: "once", template: SENTIMENT_TEMPLATE, table: TABLE, createOnly: true };
    const id = crypto.randomUUID();
    assertEquals((await client.registerTask({ ...once, requestId: id })).version, 1);
    assertEquals((await client.registerTask({ ...once, requestId: id })).version, 1);
    await rejectsWith(client.registerTask(once), grpc.status.ALREADY_EXISTS, "once");
  });
});

Deno.test("RegisterTask: a request_id reused for another request is ALREADY_EXISTS naming it", async () => {
  await withServer(async (client) => {
    await client.registerTask({
      name: "sent",
      template: SENTIMENT_TEMPLATE,
      table: TABLE,
      requestId: ID,
    });
    for (
      const other of [
        { table: OTHER_TABLE },
        { table: TABLE, template: { ...SENTIMENT_TEMPLATE, addEos: false } },
        { table: TABLE, createOnly: true },
      ]
    ) {
      await rejectsWith(
        client.registerTask({
          name: "sent",
          template: SENTIMENT_TEMPLATE,
          ...other,
          requestId: ID,
        }),
        grpc.status.ALREADY_EXISTS,
        "request_id",
        "version 1",
      );
    }
    assertEquals((await client.getTask("sent")).versions, [1]);
  });
});

Deno.test("RegisterTask: a malformed request_id is INVALID_ARGUMENT naming request_id", async () => {
  await withServer(async (client) => {
    for (const bad of ["not-a-uuid", "3f2b8c1e9a4d4e6f8b7a0c1d2e3f4a5b", `${ID}x`, ` ${ID}`]) {
      await rejectsWith(
        client.registerTask({
          name: "sent",
          template: SENTIMENT_TEMPLATE,
          table: TABLE,
          requestId: bad,
        }),
        grpc.status.INVALID_ARGUMENT,
        "request_id",
      );
    }
    await rejectsWith(client.getTask("sent"), grpc.status.NOT_FOUND);
  });
});

Deno.test("RegisterTask whose deadline passes before its write commits writes nothing; the retry writes once", async () => {
  const entered = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const settled = Promise.withResolvers<void>();
  let gated = true;
  let inner!: MemoryTaskStore;
  // The registry stalls (a frozen database) until the caller's deadline has passed.
  const stalled = (mem: MemoryTaskStore): TaskStore => {
    inner = mem;
    return {
      put: async (name, draft, options) => {
        if (!gated) return await mem.put(name, draft, options);
        entered.resolve();
        await release.promise;
        try {
          return await mem.put(name, draft, options);
        } finally {
          settled.resolve();
        }
      },
      get: (name, version) => mem.get(name, version),
      describe: (name, version) => mem.describe(name, version),
      list: (options) => mem.list(options),
      versions: (name) => mem.versions(name),
      delete: (name) => mem.delete(name),
      deleteVersion: (name, version) => mem.deleteVersion(name, version),
      has: (name) => mem.has(name),
      addEvaluation: (name, version, e) => mem.addEvaluation(name, version, e),
      evaluations: (name, version) => mem.evaluations(name, version),
    };
  };
  await withServer(async (client) => {
    const req = { name: "slow", template: SENTIMENT_TEMPLATE, table: TABLE, requestId: ID };
    const call = client.registerTask(req, { deadline: 300 });
    await entered.promise;
    await rejectsWith(call, grpc.status.DEADLINE_EXCEEDED);
    await new Promise((r) => setTimeout(r, 100)); // the server's own deadline timer, too
    release.resolve();
    await settled.promise;
    assertEquals(await inner.has("slow"), false);
    gated = false;
    const retry = await client.registerTask(req);
    assertEquals([retry.version, retry.versions], [1, [1]]);
  }, stalled);
});

Deno.test("CLI register: --request-id makes a rerun answer with the same version; without it each run writes", async () => {
  const s = await spawnTestServer();
  const dir = await Deno.makeTempDir();
  const cli = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../client/cli.ts", import.meta.url).pathname,
        "--address",
        `127.0.0.1:${s.port}`,
        "register",
        "sent",
        "--template",
        `${dir}/t.json`,
        "--table",
        `${dir}/table.json`,
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  try {
    await Deno.writeTextFile(
      `${dir}/t.json`,
      JSON.stringify({
        prompt_template: SENTIMENT_TEMPLATE.promptTemplate,
        prompt_template_fields: SENTIMENT_TEMPLATE.promptTemplateFields,
        total_virtual_tokens: 2,
        virtual_token_splits: [2],
        answer_field: "label",
      }),
    );
    await Deno.writeTextFile(
      `${dir}/table.json`,
      JSON.stringify([table(1, HIDDEN, 1), table(1, HIDDEN, 2)]),
    );
    const versionOf = (r: { code: number; stdout: string; stderr: string }) => {
      assertEquals(r.code, 0, r.stderr);
      return JSON.parse(r.stdout).version;
    };
    assertEquals(versionOf(await cli("--request-id", ID)), 1);
    assertEquals(versionOf(await cli("--request-id", ID)), 1);
    assertEquals(versionOf(await cli()), 2);
    assertEquals(versionOf(await cli()), 3);
    const bad = await cli("--request-id", "nope");
    assertEquals(bad.code, 3);
    assertStringIncludes(bad.stderr, "INVALID_ARGUMENT");
    assertStringIncludes(bad.stderr, "request_id");
  } finally {
    await s.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A Train call's events, to the end. */
async function trainEvents(client: PromptLearningClient, req: Parameters<typeof client.train>[0]) {
  const events = [];
  for await (const e of client.train(req)) events.push(e);
  return events;
}

Deno.test("Train with a request_id: the retry streams the job the first call made and starts none", async () => {
  await withServer(async (client) => {
    const req = { ...trainRequest({ name: "once" }), requestId: ID };
    const first = await trainEvents(client, req);
    assertEquals(first.at(-1)!.event, "completed");
    const retry = await trainEvents(client, { ...req, requestId: ID.toUpperCase() });
    assertEquals(retry.map((e) => [e.jobId, e.sequence]), first.map((e) => [e.jobId, e.sequence]));
    assertEquals((await client.listJobs()).jobs.length, 1);
    assertEquals((await client.getTask("sentiment")).versions, [1], "trained once");
    // Without an id, each call is a new job.
    await trainEvents(client, { ...req, requestId: "" });
    assertEquals((await client.listJobs()).jobs.length, 2);
  });
});

Deno.test("Train: a request_id reused for another request is ALREADY_EXISTS; a malformed one INVALID_ARGUMENT", async () => {
  await withServer(async (client) => {
    const req = { ...trainRequest({ name: "first" }), requestId: ID };
    const [queued] = await trainEvents(client, req);
    await rejectsWith(
      trainEvents(client, { ...trainRequest({ name: "second" }), requestId: ID }),
      grpc.status.ALREADY_EXISTS,
      `request_id ${ID}`,
      queued.jobId,
    );
    await rejectsWith(
      trainEvents(client, { ...req, requestId: "42" }),
      grpc.status.INVALID_ARGUMENT,
      "request_id",
    );
    assertEquals((await client.listJobs()).jobs.length, 1);
  });
});

Deno.test("Train whose deadline passes before its job is stored stores none; the retry makes one", async () => {
  const entered = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const settled = Promise.withResolvers<void>();
  let gated = true;
  const mem = new MemoryJobStore();
  // The job store stalls (a frozen database) until the caller's deadline has passed.
  const stalled: JobStore = Object.assign(Object.create(null), {
    durable: false,
    get closed() {
      return mem.closed;
    },
    create: async (job: Parameters<JobStore["create"]>[0]) => {
      if (!gated) return await mem.create(job);
      entered.resolve();
      await release.promise;
      try {
        return await mem.create(job);
      } finally {
        settled.resolve();
      }
    },
    claim: (o: string, ms: number) => mem.claim(o, ms),
    renew: (id: string, o: string, ms: number) => mem.renew(id, o, ms),
    release: (id: string, o: string) => mem.release(id, o),
    append: (...a: Parameters<JobStore["append"]>) => mem.append(...a),
    finish: (...a: Parameters<JobStore["finish"]>) => mem.finish(...a),
    requestCancel: (id: string) => mem.requestCancel(id),
    get: (id: string) => mem.get(id),
    list: (n: number) => mem.list(n),
    counts: () => mem.counts(),
    events: (...a: Parameters<JobStore["events"]>) => mem.events(...a),
    saveCheckpoint: (...a: Parameters<JobStore["saveCheckpoint"]>) => mem.saveCheckpoint(...a),
    loadCheckpoint: (id: string) => mem.loadCheckpoint(id),
    forget: (keep: number, before: Date) => mem.forget(keep, before),
    onChange: (fn: (id: string | null) => void) => mem.onChange(fn),
    onClaimable: (fn: () => void) => mem.onClaimable(fn),
    close: () => mem.close(),
  });
  await withServer(
    async (client) => {
      const req = { ...trainRequest({ name: "slow" }), requestId: ID };
      const call = client.train(req, { deadline: 300 }).next();
      await entered.promise;
      await rejectsWith(call, grpc.status.DEADLINE_EXCEEDED);
      await new Promise((r) => setTimeout(r, 100)); // the server's own deadline timer, too
      release.resolve();
      await settled.promise;
      gated = false;
      assertEquals((await mem.list(10)).length, 0, "nothing stored");
      const retry = await trainEvents(client, req);
      assertEquals(retry.at(-1)!.event, "completed");
      assertEquals((await mem.list(10)).length, 1);
    },
    undefined,
    stalled,
  );
  await mem.close();
});
