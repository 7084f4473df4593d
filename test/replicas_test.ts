/**
 * Replicas of the real service on one throwaway PostgreSQL cluster (test/support/postgres.ts):
 * what one replica registers or deletes, the others serve or stop serving within a bound; a
 * database that goes away gives UNAVAILABLE while resident tasks keep serving, and the replicas
 * recover by themselves when it is back. The latencies measured are printed for the report; the
 * bounds asserted are generous for a loaded CI machine (the spec's figure is 2 s).
 */
import { assert, assertEquals } from "./assert.ts";
import { RpcCallError } from "../client/client.ts";
import { postgresTests } from "./support/postgres.ts";
import { startReplica, until } from "./support/replicas.ts";
import { SENTIMENT_TEMPLATE, table } from "./support/test_service.ts";

const postgres = postgresTests("test/replicas_test.ts");
const HIDDEN = 256;
const BOUND_MS = 10_000;
const FIELDS = { sentence: "the film was wonderful" };

function report(figures: Record<string, number>): void {
  console.log(JSON.stringify({ replicas_test: figures }));
}

postgres.test(
  "a task registered on replica A is served by B, a new version too, and a delete stops B",
  "reg",
  async (url) => {
    const [a, b] = await Promise.all([startReplica("a", url), startReplica("b", url)]);
    try {
      // B resolves the name first (not found), so a stale answer would show if B cached it.
      const before = await b.client.infer([{ task: "shared", fields: FIELDS, maxNewTokens: 2 }]);
      assertEquals(before[0].error?.code, 5);

      const t0 = performance.now();
      await a.client.registerTask({
        name: "shared",
        template: SENTIMENT_TEMPLATE,
        table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN, 1) },
      });
      const registered = performance.now() - t0;
      const served = await until("B serves the task A registered", async () => {
        const [r] = await b.client.infer([{ task: "shared", fields: FIELDS, maxNewTokens: 2 }]);
        return r.completion ? r.completion : undefined;
      }, BOUND_MS);
      assertEquals(served.value.taskVersion, 1);

      await a.client.registerTask({
        name: "shared",
        template: SENTIMENT_TEMPLATE,
        table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN, 2) },
      });
      const v2 = await until("B serves version 2", async () => {
        const [r] = await b.client.infer([{ task: "shared", fields: FIELDS, maxNewTokens: 2 }]);
        return r.completion?.taskVersion === 2 ? r.completion : undefined;
      }, BOUND_MS);
      assertEquals((await b.client.getTask("shared")).versions, [1, 2]);

      await a.client.deleteTask("shared");
      const gone = await until("B stops serving the deleted task", async () => {
        const [r] = await b.client.infer([{ task: "shared", fields: FIELDS, maxNewTokens: 2 }]);
        return r.error?.code === 5 ? r.error : undefined;
      }, BOUND_MS);
      assert(gone.value.message.includes("shared"), gone.value.message);
      report({
        register_ms: Math.round(registered),
        served_by_other_replica_ms: Math.round(served.ms),
        new_version_served_ms: Math.round(v2.ms),
        delete_seen_ms: Math.round(gone.ms),
      });
      assert(served.ms < BOUND_MS && gone.ms < BOUND_MS);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  },
);

postgres.test(
  "the database goes away: UNAVAILABLE with a clear message, resident tasks keep serving, " +
    "and the replicas recover by themselves when it is back",
  "down",
  async (url, pg) => {
    const [a, b] = await Promise.all([startReplica("a", url), startReplica("b", url)]);
    try {
      await a.client.registerTask({
        name: "resident",
        template: SENTIMENT_TEMPLATE,
        table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN, 3) },
      });
      // Served once on B: its table is resident there now.
      await until("B serves the task", async () => {
        const [r] = await b.client.infer([{ task: "resident", fields: FIELDS, maxNewTokens: 2 }]);
        return r.completion;
      }, BOUND_MS);

      await pg.stop();
      const [r] = await b.client.infer([{ task: "resident", fields: FIELDS, maxNewTokens: 2 }]);
      assert(r.completion, `a resident task is served with the database down: ${r.error?.message}`);
      const err = await a.client.listTasks().then(() => null, (e) => e);
      assert(err instanceof RpcCallError, String(err));
      assertEquals(err.code, 14); // UNAVAILABLE
      assert(err.message.includes("database") && err.message.includes("unavailable"), err.message);
      const reg = await b.client.registerTask({
        name: "during_outage",
        template: SENTIMENT_TEMPLATE,
        table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN, 4) },
      }).then(() => null, (e) => e);
      assertEquals((reg as RpcCallError).code, 14);
      const jobs = await b.client.listJobs().then(() => null, (e) => e);
      assertEquals((jobs as RpcCallError).code, 14, "the job queue is in the database too");

      await pg.start();
      const t0 = performance.now();
      await until("A answers again", () => a.client.listTasks(), 30_000, 100);
      const recovered = performance.now() - t0;
      // And the replicas' notifications are back: a registration on A reaches B.
      await a.client.registerTask({
        name: "after_outage",
        template: SENTIMENT_TEMPLATE,
        table: { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN, 5) },
      });
      await until("B serves a task registered after the outage", async () => {
        const [r] = await b.client.infer([{
          task: "after_outage",
          fields: FIELDS,
          maxNewTokens: 2,
        }]);
        return r.completion;
      }, BOUND_MS);
      await a.client.deleteTask("resident");
      await until("B stops serving a task deleted after the outage", async () => {
        const [r] = await b.client.infer([{ task: "resident", fields: FIELDS, maxNewTokens: 2 }]);
        return r.error?.code === 5 ? true : undefined;
      }, BOUND_MS);
      report({ recovery_after_database_back_ms: Math.round(recovered) });
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  },
);
