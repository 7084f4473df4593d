/**
 * PgTaskStore behaviour that only a real database shows: a write whose caller gave up while the
 * database stalled is rolled back, not committed when it thaws; and a request id is honoured by
 * writers that never saw each other (two replicas, or a writer outside the advisory lock).
 */
import pg from "pg";
import { ServiceError } from "../errors.ts";
import { Database } from "../util/db.ts";
import { assert, assertEquals } from "../../test/assert.ts";
import { type PgCluster, postgresTool, startPostgres } from "../../test/support/postgres.ts";
import { versionChecksum } from "./checksum.ts";
import { draft } from "./_test_util.ts";
import { PgTaskStore } from "./pg_store.ts";

const pgTool = postgresTool("server/registry/pg_store_test.ts");
let cluster: Promise<PgCluster> | undefined;

interface Ctx {
  url: string;
  store: PgTaskStore;
  /** A second connection of its own, outside the store's pool. */
  other: pg.Client;
}

function test(name: string, fn: (ctx: Ctx) => Promise<void>) {
  Deno.test({
    name: `PgTaskStore: ${name}`,
    ignore: pgTool.ignore,
    sanitizeResources: false,
    sanitizeOps: false,
  }, async () => {
    pgTool.check();
    cluster ??= startPostgres();
    const c = await cluster;
    const db = await Database.open(c.url, { log: () => {} });
    await db.query("TRUNCATE task_versions CASCADE");
    const other = new pg.Client({ connectionString: c.url });
    await other.connect();
    try {
      await fn({ url: c.url, store: await PgTaskStore.open(db), other });
    } finally {
      await other.end();
      await db.close();
    }
  });
}

/** Waits until a backend other than `c`'s waits on a lock running a statement like `sql`. */
async function blockedOn(c: pg.Client, sql: string): Promise<void> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    // Statistics are read once per transaction, and `c` may be inside one: read afresh.
    await c.query("SELECT pg_stat_clear_snapshot()");
    const { rows } = await c.query(
      `SELECT 1 FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query LIKE $1`,
      [`%${sql}%`],
    );
    if (rows.length > 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no backend blocked on a lock running ${sql}`);
}

async function countRows(c: pg.Client): Promise<number> {
  return Number((await c.query("SELECT count(*) AS n FROM task_versions")).rows[0].n);
}

test("a put whose deadline passes while the database stalls is rolled back when it thaws", async ({ store, other }) => {
  // The stall: another session holds the table, so the put's transaction waits inside.
  await other.query("BEGIN");
  await other.query("LOCK TABLE task_versions IN ACCESS EXCLUSIVE MODE");
  const ac = new AbortController();
  const put = store.put("frozen", draft("frozen", 1), { signal: ac.signal }).then(
    () => null,
    (e) => e,
  );
  await blockedOn(other, "task_versions");
  ac.abort(new DOMException("deadline exceeded", "TimeoutError"));
  await other.query("COMMIT"); // the database thaws after the caller's deadline
  const e = await put;
  assert(e instanceof ServiceError && e.kind === "deadline_exceeded", String(e));
  assertEquals(await countRows(other), 0);
  assertEquals(await store.has("frozen"), false);

  // The same stall without the abort commits: the test above did reach the commit point.
  await other.query("BEGIN");
  await other.query("LOCK TABLE task_versions IN ACCESS EXCLUSIVE MODE");
  const ok = store.put("frozen", draft("frozen", 1), { signal: new AbortController().signal });
  await blockedOn(other, "task_versions");
  await other.query("COMMIT");
  assertEquals((await ok).version, 1);
  assertEquals(await countRows(other), 1);
});

test("a request id another writer committed meanwhile is answered with that writer's version", async ({ store, other }) => {
  const id = "0b7e0000-0000-4000-8000-00000000000a";
  // A writer that does not take the store's per-task lock (an older replica, a script) holds
  // the table against inserts and commits a version carrying the id while the put runs: the
  // put's own lookup saw nothing, so the unique index is what stops a second version.
  await other.query("BEGIN");
  await other.query("LOCK TABLE task_versions IN EXCLUSIVE MODE");
  const d = draft("race", 1);
  await other.query(
    `INSERT INTO task_versions (name, version, uid, template, total_virtual_tokens, hidden_size,
       fingerprint, metrics, created_at, source, checksum, table_data, request_id, request_digest)
     VALUES ('race', 7, gen_random_uuid(), $1, 4, 8, $2, '{}', '2024-01-01T00:00:00.000Z',
       'prompt_tuning', $3, $4, $5, 'd')`,
    [
      JSON.stringify(d.template),
      JSON.stringify(d.fingerprint),
      versionChecksum(d.table),
      new Uint8Array(d.table.buffer),
      id,
    ],
  );
  const put = store.put("race", draft("race", 1), { requestId: id, requestDigest: "d" });
  await blockedOn(other, "INSERT INTO task_versions");
  await other.query("COMMIT");
  assertEquals((await put).version, 7);
  assertEquals(await store.versions("race"), [7]);

  // The same race with another digest is already_exists naming the winner's version.
  await other.query("BEGIN");
  await other.query("LOCK TABLE task_versions IN EXCLUSIVE MODE");
  await other.query(
    `INSERT INTO task_versions SELECT 'race2', 3, gen_random_uuid(), template,
       total_virtual_tokens, hidden_size, fingerprint, metrics, created_at, source, checksum,
       encoder_kind, encoder_config, table_data, encoder_data, request_id, 'other'
       FROM task_versions WHERE name = 'race'`,
  );
  const d2 = draft("race2", 1);
  const put2 = store.put("race2", d2, { requestId: id, requestDigest: "d" }).then(
    () => null,
    (e) => e,
  );
  await blockedOn(other, "INSERT INTO task_versions");
  await other.query("COMMIT");
  const e = await put2;
  assert(e instanceof ServiceError && e.kind === "already_exists", String(e));
  assert(/request_id.*version 3/.test(e.message), e.message);
  assertEquals(await store.versions("race2"), [3]);
});

test("two replicas putting with one request id write one version", async ({ url, store }) => {
  const db2 = await Database.open(url, { log: () => {} });
  try {
    const replica = await PgTaskStore.open(db2);
    const id = "0b7e0000-0000-4000-8000-00000000000b";
    const made = await Promise.all(
      Array.from(
        { length: 6 },
        (_, i) =>
          (i % 2 ? replica : store).put("shared", draft("shared", 1), {
            requestId: id,
            requestDigest: "d",
          }),
      ),
    );
    assertEquals(made.map((v) => v.version), Array(6).fill(1));
    assertEquals(await replica.versions("shared"), [1]);
    // A replica that starts later (nothing cached) answers the retry from the database.
    const db3 = await Database.open(url, { log: () => {} });
    try {
      const late = await PgTaskStore.open(db3);
      const again = await late.put("shared", draft("shared", 1), {
        requestId: id,
        requestDigest: "d",
      });
      assertEquals([again.version, again.createdAt], [1, made[0].createdAt]);
    } finally {
      await db3.close();
    }
  } finally {
    await db2.close();
  }
});

// Tests of a file run in order: this one, last, takes the cluster down.
Deno.test({ name: "PgTaskStore: the throwaway cluster stops", ignore: pgTool.ignore }, async () => {
  if (cluster) await (await cluster).destroy();
});
