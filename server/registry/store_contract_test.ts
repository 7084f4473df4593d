/**
 * Behaviour every TaskStore shares, run against the memory store, the disk store and the
 * PostgreSQL store (on a throwaway cluster: test/support/postgres.ts).
 */

import { ServiceError } from "../errors.ts";
import { DiskTaskStore } from "./disk_store.ts";
import { FingerprintMismatchError, TaskNotFoundError } from "./errors.ts";
import { MemoryTaskStore } from "./memory_store.ts";
import { assert, assertEquals, assertNotEquals, assertRejects } from "../../test/assert.ts";
import { draft, FP, OTHER_FP, withEncoder } from "./_test_util.ts";
import type { ModelFingerprint, TaskStore } from "./types.ts";
import { PgTaskStore } from "./pg_store.ts";
import { Database } from "../util/db.ts";
import { type PgCluster, postgresTool, startPostgres } from "../../test/support/postgres.ts";

type Open = (
  fingerprint?: ModelFingerprint,
) => Promise<{ store: TaskStore; close(): Promise<void> }>;

const pgTool = postgresTool("server/registry/store_contract_test.ts");
/** One cluster for the file, started by the first PostgreSQL test; each test gets a fresh schema. */
let cluster: Promise<PgCluster> | undefined;

const KINDS: [string, Open][] = [
  ["MemoryTaskStore", (fingerprint) =>
    Promise.resolve({
      store: new MemoryTaskStore({ fingerprint }),
      close: () => Promise.resolve(),
    })],
  ["DiskTaskStore", async (fingerprint) => {
    const dir = await Deno.makeTempDir({ prefix: "registry_contract_" });
    return {
      store: await DiskTaskStore.open(dir, { fingerprint }),
      close: () => Deno.remove(dir, { recursive: true }),
    };
  }],
  ["PgTaskStore", async (fingerprint) => {
    pgTool.check();
    cluster ??= startPostgres();
    const c = await cluster;
    const db = await Database.open(c.url, { log: () => {} });
    await db.query("TRUNCATE task_versions CASCADE");
    return {
      store: await PgTaskStore.open(db, { fingerprint }),
      close: () => db.close(),
    };
  }],
];

for (const [kind, open] of KINDS) {
  const test = (name: string, fn: (store: TaskStore) => Promise<void>, fp?: ModelFingerprint) =>
    Deno.test({
      name: `${kind}.${name}`,
      ignore: kind === "PgTaskStore" && pgTool.ignore,
      sanitizeResources: kind !== "PgTaskStore",
      sanitizeOps: kind !== "PgTaskStore",
    }, async () => {
      const { store, close } = await open(fp);
      try {
        await fn(store);
      } finally {
        await close();
      }
    });

  test("put() assigns versions 1, 2, 3 and get() without a version returns the latest", async (s) => {
    for (let i = 1; i <= 3; i++) {
      const v = await s.put("sent", draft("sent", i));
      assertEquals(v.version, i);
      assertEquals(v.table, draft("sent", i).table);
    }
    assertEquals(await s.versions("sent"), [1, 2, 3]);
    const latest = await s.get("sent");
    assertEquals(latest.version, 3);
    assertEquals(latest.table, draft("sent", 3).table);
    assertEquals(latest.metrics, { accuracy: 0.503 });
    assertEquals(latest.source, "prompt_tuning");
    assertEquals(latest.fingerprint, FP);
    assertEquals(latest.template, draft("sent", 3).template);
    assert(!Number.isNaN(Date.parse(latest.createdAt)));
    assert(/^[0-9a-f]{64}$/.test(latest.checksum));
  });

  test("get() with a version returns that version unchanged by later puts", async (s) => {
    await s.put("t", draft("t", 1));
    const first = await s.get("t", 1);
    await s.put("t", draft("t", 2));
    const again = await s.get("t", 1);
    assertEquals(again, first);
    assertEquals(again.table, draft("t", 1).table);
    assertNotEquals((await s.get("t", 2)).checksum, first.checksum);
    assertEquals((await s.describe("t", 1)).checksum, first.checksum);
    assertEquals((await s.describe("t")).version, 2);
  });

  test("get() hands out copies: editing a result or the draft changes nothing stored", async (s) => {
    const d = draft("t", 1);
    const put = await s.put("t", d);
    d.table[0] = 99;
    put.table[1] = 99;
    const got = await s.get("t");
    got.table[2] = 99;
    got.template.taskname = "changed";
    const again = await s.get("t");
    assertEquals(again.table, draft("t", 1).table);
    assertEquals(again.template.taskname, "t");
  });

  test("get() of a missing task or version is TaskNotFoundError naming what exists", async (s) => {
    await assertRejects(() => s.get("nope"), TaskNotFoundError, 'task "nope" does not exist');
    await s.put("t", draft("t", 1));
    await assertRejects(() => s.get("t", 7), TaskNotFoundError, "has no version 7: it has 1");
    await assertRejects(() => s.get("t", 0), ServiceError, "version must be a positive integer");
    await assertRejects(() => s.versions("nope"), TaskNotFoundError);
  });

  test("delete() removes every version and a new put() starts again at version 1", async (s) => {
    await s.put("t", draft("t", 1));
    await s.put("t", draft("t", 2));
    await s.get("t", 1); // warms any cache
    await s.delete("t");
    assertEquals(await s.has("t"), false);
    await assertRejects(() => s.get("t"), TaskNotFoundError);
    await assertRejects(() => s.delete("t"), TaskNotFoundError);
    assertEquals((await s.list()).tasks, []);
    const v = await s.put("t", draft("t", 5));
    assertEquals(v.version, 1);
    assertEquals((await s.get("t", 1)).table, draft("t", 5).table);
  });

  test("name checks refuse path tricks in every method", async (s) => {
    for (const bad of ["", "../x", "a/b", "a\\b", ".hidden", "a..b", "-x", "x".repeat(65), "é"]) {
      await assertRejects(() => s.put(bad, draft(bad)), ServiceError, "must match");
      await assertRejects(() => s.get(bad), ServiceError, "must match");
      await assertRejects(() => s.has(bad), ServiceError, "must match");
      await assertRejects(() => s.delete(bad), ServiceError, "must match");
      await assertRejects(() => s.versions(bad), ServiceError, "must match");
    }
    const ok = "Ok_name-1.2" + "x".repeat(53);
    assertEquals((await s.put(ok, draft(ok))).version, 1);
  });

  test("list() pages through tasks in name order without repeats while tasks are added", async (s) => {
    const names = Array.from({ length: 25 }, (_, i) => `task${String(i).padStart(2, "0")}`);
    for (const n of names.toReversed()) await s.put(n, draft(n));
    await s.put("task03", draft("task03", 2));
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await s.list({ pageSize: 10, pageToken: token });
      seen.push(...page.tasks.map((t) => t.name));
      if (pages === 0) await s.put("task00a", draft("task00a")); // before the cursor: not seen
      if (pages === 0) await s.put("task99", draft("task99")); // after the cursor: seen
      token = page.nextPageToken;
      pages++;
    } while (token !== "");
    assertEquals(seen, [...names, "task99"]);
    const t3 = (await s.list({ pageSize: 1, pageToken: btoa("after:task02") })).tasks[0];
    assertEquals([t3.name, t3.latestVersion, t3.versionCount], ["task03", 2, 2]);
    assertEquals(t3.latest?.metrics, { accuracy: 0.502 });
    await assertRejects(() => s.list({ pageSize: -1 }), ServiceError, "page_size");
    await assertRejects(() => s.list({ pageSize: 1001 }), ServiceError, "page_size");
    await assertRejects(() => s.list({ pageToken: "garbage!" }), ServiceError, "page_token");
  });

  test("put(createOnly) is atomic: of concurrent creators exactly one wins, the rest are already_exists", async (s) => {
    const outcomes = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => s.put("race", draft("race", i), { createOnly: true })),
    );
    const won = outcomes.filter((o) => o.status === "fulfilled");
    assertEquals(won.length, 1);
    for (const o of outcomes) {
      if (o.status === "rejected") {
        assert(
          o.reason instanceof ServiceError && o.reason.kind === "already_exists",
          String(o.reason),
        );
      }
    }
    assertEquals(await s.versions("race"), [1]);
    // Without createOnly the next version is written as before.
    assertEquals((await s.put("race", draft("race", 9))).version, 2);
  });

  test("deleteVersion() removes one version and leaves the others", async (s) => {
    await s.put("dv", draft("dv", 1));
    await s.put("dv", draft("dv", 2));
    await s.deleteVersion("dv", 2);
    assertEquals(await s.versions("dv"), [1]);
    assertEquals((await s.get("dv")).table, draft("dv", 1).table);
    await assertRejects(() => s.deleteVersion("dv", 2), TaskNotFoundError, "no version 2");
    await s.deleteVersion("dv", 1);
    assertEquals(await s.has("dv"), false);
  });

  test("addEvaluation() keeps evaluations with their version, replaces by id, and they go with it", async (s) => {
    await s.put("ev", draft("ev", 1));
    await s.put("ev", draft("ev", 2));
    const e = (id: string, acc: number) => ({
      id,
      createdAt: "2026-12-07T06:00:00.000Z",
      dataset: "sentiment_test.jsonl",
      examples: 4,
      metrics: { accuracy: acc },
      labels: ["positive", "negative"],
      confusion: [[2, 0], [1, 1]],
    });
    assertEquals(await s.evaluations("ev", 1), []);
    await s.addEvaluation("ev", 1, e("a", 0.5));
    await s.addEvaluation("ev", 1, e("b", 0.75));
    await s.addEvaluation("ev", 2, e("c", 1));
    // The same id again replaces it (a job retried), and goes last.
    await s.addEvaluation("ev", 1, e("a", 0.25));
    assertEquals((await s.evaluations("ev", 1)).map((x) => [x.id, x.metrics.accuracy]), [
      ["b", 0.75],
      ["a", 0.25],
    ]);
    assertEquals(await s.evaluations("ev", 2), [e("c", 1)]);
    await assertRejects(
      () => s.addEvaluation("ev", 3, e("d", 1)),
      TaskNotFoundError,
      "no version 3",
    );
    await assertRejects(() => s.evaluations("nope", 1), TaskNotFoundError);
    await assertRejects(
      () => s.addEvaluation("ev", 1, { ...e("x", 1), confusion: [[1]] }),
      ServiceError,
      "evaluation.confusion must be a 2 x 2 matrix of counts",
    );
    await assertRejects(
      () => s.addEvaluation("ev", 1, { ...e("../x", 1) }),
      ServiceError,
      "evaluation.id must be",
    );
    // Deleted with their version; a new version 1 has none.
    await s.deleteVersion("ev", 2);
    await s.delete("ev");
    await s.put("ev", draft("ev", 1));
    assertEquals(await s.evaluations("ev", 1), []);
  });

  test("put() checks the draft before storing anything", async (s) => {
    const d = draft("t");
    await assertRejects(
      () => s.put("t", { ...d, table: new Float32Array(3) }),
      ServiceError,
      "table must hold 4 x 8 = 32 values: found 3",
    );
    const nan = d.table.slice();
    nan[9] = NaN;
    await assertRejects(() => s.put("t", { ...d, table: nan }), ServiceError, "table[9]");
    await assertRejects(() => s.put("u", d), ServiceError, "template.taskname must equal");
    await assertRejects(
      () => s.put("t", { ...d, template: { ...d.template, virtual_token_splits: [3] } }),
      ServiceError,
      "must sum to total_virtual_tokens (4): current sum is 3",
    );
    await assertRejects(
      () => s.put("t", { ...d, hiddenSize: 4, table: new Float32Array(16) }),
      ServiceError,
      "hiddenSize (4) must equal fingerprint.hiddenSize (8)",
    );
    assertEquals(await s.has("t"), false);
  });

  test("put() and get() keep p-tuning encoder state", async (s) => {
    const d = withEncoder(draft("pt", 1));
    const v = await s.put("pt", d);
    assertEquals(v.encoderKind, "mlp");
    const got = await s.get("pt");
    assertEquals(got.encoderState, d.encoderState);
    assertEquals(got.source, "p_tuning");
    assertNotEquals(got.checksum, (await s.put("pt", draft("pt", 1))).checksum);
  });

  test("put() and get() keep every encoder kind and refuse an unknown one", async (s) => {
    for (const kind of ["tpmlp", "mlp", "lstm", "peft_mlp", "embedding"] as const) {
      const d = withEncoder(draft("pt", 1));
      const put = await s.put("pt", { ...d, encoderState: { ...d.encoderState!, kind } });
      assertEquals(put.encoderKind, kind);
      assertEquals((await s.get("pt", put.version)).encoderState?.kind, kind);
      assertEquals((await s.describe("pt", put.version)).encoderKind, kind);
    }
    const d = withEncoder(draft("pt", 1));
    await assertRejects(
      () => s.put("pt", { ...d, encoderState: { ...d.encoderState!, kind: "gru" as "lstm" } }),
      ServiceError,
      'encoderState.kind must be one of "tpmlp", "mlp", "lstm", "peft_mlp", "embedding": found "gru"',
    );
  });

  test("concurrent put() calls get distinct versions", async (s) => {
    const made = await Promise.all(
      Array.from({ length: 12 }, (_, i) => s.put("t", draft("t", i))),
    );
    assertEquals(made.map((v) => v.version).sort((a, b) => a - b), [
      ...Array.from({ length: 12 }, (_, i) => i + 1),
    ]);
    for (const v of made) assertEquals((await s.get("t", v.version)).table, v.table);
  });

  test("put(requestId) repeated with the same digest returns the first version and writes nothing", async (s) => {
    const id = "5f0c1d2e-0000-4000-8000-000000000001";
    const first = await s.put("rq", draft("rq", 1), { requestId: id, requestDigest: "d1" });
    assertEquals(first.version, 1);
    // The retry's draft is what the first call sent; even a different one is not written.
    const again = await s.put("rq", draft("rq", 1), { requestId: id, requestDigest: "d1" });
    assertEquals(again.version, 1);
    assertEquals(again.checksum, first.checksum);
    assertEquals(again.createdAt, first.createdAt);
    assertEquals(again.table, draft("rq", 1).table);
    assertEquals(await s.versions("rq"), [1]);
    // Other puts still write; the id keeps answering with its own version.
    assertEquals((await s.put("rq", draft("rq", 2))).version, 2);
    assertEquals(
      (await s.put("rq", draft("rq", 1), { requestId: id, requestDigest: "d1" })).version,
      1,
    );
    assertEquals(await s.versions("rq"), [1, 2]);
  });

  test("put(requestId) with another digest is already_exists naming request_id and its version", async (s) => {
    const id = "5f0c1d2e-0000-4000-8000-000000000002";
    await s.put("rq", draft("rq", 1));
    await s.put("rq", draft("rq", 1), { requestId: id, requestDigest: "d1" });
    await assertRejects(
      () => s.put("rq", draft("rq", 3), { requestId: id, requestDigest: "d2" }),
      ServiceError,
      "request_id",
    );
    const e = await s.put("rq", draft("rq", 3), { requestId: id, requestDigest: "d2" }).then(
      () => null,
      (e) => e,
    );
    assert(e instanceof ServiceError && e.kind === "already_exists", String(e));
    assert(e.message.includes("version 2"), e.message);
    assertEquals(await s.versions("rq"), [1, 2]);
  });

  test("put(requestId) is scoped per task name: the same id on another task writes", async (s) => {
    const id = "5f0c1d2e-0000-4000-8000-000000000003";
    assertEquals(
      (await s.put("a", draft("a", 1), { requestId: id, requestDigest: "d" })).version,
      1,
    );
    assertEquals(
      (await s.put("b", draft("b", 1), { requestId: id, requestDigest: "d" })).version,
      1,
    );
    // Each name keeps answering with its own version.
    assertEquals(
      (await s.put("b", draft("b", 1), { requestId: id, requestDigest: "d" })).version,
      1,
    );
    assertEquals(
      (await s.put("a", draft("a", 1), { requestId: id, requestDigest: "d" })).version,
      1,
    );
    assertEquals(await s.versions("a"), [1]);
    assertEquals(await s.versions("b"), [1]);
  });

  test("put(requestId, createOnly) retried returns its version instead of already_exists", async (s) => {
    const id = "5f0c1d2e-0000-4000-8000-000000000004";
    const o = { requestId: id, requestDigest: "d", createOnly: true };
    assertEquals((await s.put("co", draft("co", 1), o)).version, 1);
    assertEquals((await s.put("co", draft("co", 1), o)).version, 1);
    await assertRejects(
      () => s.put("co", draft("co", 1), { createOnly: true }),
      ServiceError,
      "already exists",
    );
  });

  test("put() whose signal has aborted writes nothing and says why", async (s) => {
    const late = new AbortController();
    late.abort(new DOMException("deadline exceeded", "TimeoutError"));
    const e1 = await s.put("ab", draft("ab", 1), { signal: late.signal }).then(
      () => null,
      (e) => e,
    );
    assert(e1 instanceof ServiceError && e1.kind === "deadline_exceeded", String(e1));
    const gone = new AbortController();
    gone.abort(new DOMException("the client cancelled the call", "AbortError"));
    const e2 = await s.put("ab", draft("ab", 1), {
      signal: gone.signal,
      requestId: "5f0c1d2e-0000-4000-8000-000000000005",
      requestDigest: "d",
    }).then(() => null, (e) => e);
    assert(e2 instanceof ServiceError && e2.kind === "cancelled", String(e2));
    assertEquals(await s.has("ab"), false);
    // Nothing was recorded for the id either: the retry writes.
    const v = await s.put("ab", draft("ab", 1), {
      requestId: "5f0c1d2e-0000-4000-8000-000000000005",
      requestDigest: "d",
    });
    assertEquals(v.version, 1);
    assertEquals(await s.versions("ab"), [1]);
  });

  test("concurrent put() calls with one requestId write exactly one version", async (s) => {
    await s.put("cc", draft("cc", 0));
    const id = "5f0c1d2e-0000-4000-8000-000000000006";
    const made = await Promise.all(
      Array.from(
        { length: 8 },
        () => s.put("cc", draft("cc", 1), { requestId: id, requestDigest: "d" }),
      ),
    );
    assertEquals(made.map((v) => v.version), Array(8).fill(2));
    assertEquals(new Set(made.map((v) => v.createdAt)).size, 1);
    assertEquals(await s.versions("cc"), [1, 2]);
    // With another digest in the mix, the losers that differ are already_exists.
    const id2 = "5f0c1d2e-0000-4000-8000-000000000007";
    const mixed = await Promise.allSettled(
      Array.from(
        { length: 6 },
        (_, i) => s.put("cc", draft("cc", i % 2), { requestId: id2, requestDigest: `d${i % 2}` }),
      ),
    );
    assertEquals(await s.versions("cc"), [1, 2, 3]);
    const won = mixed.filter((o) => o.status === "fulfilled");
    assertEquals(won.length, 3);
    for (const o of mixed) {
      if (o.status === "fulfilled") assertEquals(o.value.version, 3);
      else assert(o.reason instanceof ServiceError && o.reason.kind === "already_exists");
    }
  });

  test(
    "put() refuses a draft tuned on another base model",
    async (s) => {
      await assertRejects(
        () => s.put("t", draft("t", 0, { fingerprint: OTHER_FP })),
        FingerprintMismatchError,
        "weights hash bbbbbbbbbbbb… (model: aaaaaaaaaaaa…)",
      );
      await s.put("t", draft("t"));
    },
    FP,
  );
}

// Tests of a file run in order: this one, last, takes the cluster down.
Deno.test({ name: "PgTaskStore: the throwaway cluster stops", ignore: pgTool.ignore }, async () => {
  if (cluster) await (await cluster).destroy();
});
