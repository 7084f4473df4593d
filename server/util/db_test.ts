/**
 * The database connection on a throwaway cluster: migrations are versioned, applied once even by
 * replicas starting together, and a schema newer than the code is refused; an unreachable
 * database fails at start naming DATABASE_URL (never the password) and, once open, makes calls
 * fail as `unavailable` until it is back.
 */
import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { createDatabase, postgresTool, startPostgres } from "../../test/support/postgres.ts";
import { ServiceError } from "../errors.ts";
import { Database, describeUrl } from "./db.ts";
import { MIGRATIONS } from "./migrations.ts";

const tool = postgresTool("server/util/db_test.ts");
const quiet = { log: () => {} };

Deno.test("describeUrl() shows host, port and database, never the credentials", () => {
  assertEquals(describeUrl("postgres://u:secret@db.example:6543/pl"), "db.example:6543/pl");
  assertEquals(describeUrl("postgres://u:secret@db/pl"), "db:5432/pl");
});

Deno.test("an unreachable database fails at start naming DATABASE_URL, not the password", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const err = await assertRejects(
    () => Database.open(`postgres://svc:hunter2@127.0.0.1:${port}/pl`, quiet),
    Error,
    `DATABASE_URL: cannot reach the database at 127.0.0.1:${port}/pl`,
  );
  assert(!(err as Error).message.includes("hunter2"));
});

Deno.test({
  name:
    "migrations: applied once, in order, by replicas opening together; a newer schema is refused",
  ignore: tool.ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  tool.check();
  const pg = await startPostgres();
  try {
    const url = await createDatabase(pg, "mig");
    const dbs = await Promise.all([1, 2, 3].map(() => Database.open(url, quiet)));
    const { rows } = await dbs[0].query<{ version: number }>(
      "SELECT version FROM schema_migrations ORDER BY version",
    );
    assertEquals(rows.map((r) => r.version), MIGRATIONS.map((m) => m.version));
    await dbs[0].query("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')");
    await assertRejects(
      () => Database.open(url, quiet),
      Error,
      "schema is at version 999, newer than this service knows",
    );

    // The database goes away: a query is `unavailable`, naming the database; then it is back.
    await pg.stop();
    const down = await assertRejects(() => dbs[1].query("SELECT 1"), ServiceError);
    assertEquals((down as ServiceError).kind, "unavailable");
    assert((down as ServiceError).message.includes(describeUrl(url)), (down as Error).message);
    await pg.start();
    let back = false;
    for (let i = 0; i < 100 && !back; i++) {
      back = await dbs[1].query("SELECT 1").then(() => true, () => false);
      if (!back) await new Promise((r) => setTimeout(r, 100));
    }
    assert(back, "queries work again once the database is back");
    await Promise.all(dbs.map((d) => d.close()));
  } finally {
    await pg.destroy();
  }
});
