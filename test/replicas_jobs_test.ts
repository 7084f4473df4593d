/**
 * Training jobs across replicas on one throwaway PostgreSQL cluster: a Train sent to A runs once,
 * on one replica, while B and C watch it by sequence and answer GetJob/ListJobs/CancelJob; a
 * replica killed with SIGKILL mid-training loses its job to another one after the lease, which
 * resumes from the last checkpoint (one stopped with SIGTERM, as in a rolling update, hands it
 * over at once), and a watcher sees every event once, in order, throughout.
 */
import { assert, assertEquals } from "./assert.ts";
import { sentimentTrainRequest } from "./support/train_request.ts";
import type { PromptLearningClient } from "../client/client.ts";
import { postgresTests } from "./support/postgres.ts";
import { type Replica, startReplica, until } from "./support/replicas.ts";

const postgres = postgresTests("test/replicas_jobs_test.ts");
const LEASE_MS = 2000;

interface Seen {
  sequence: number;
  event: string;
  at: number;
  raw: Record<string, unknown>;
}

/** Watches `jobId` on `client` from sequence 0 to the terminal event, resuming on errors. */
async function watchAll(client: PromptLearningClient, jobId: string): Promise<Seen[]> {
  const seen: Seen[] = [];
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      for await (const ev of client.watchJob(jobId, seen.at(-1)?.sequence ?? 0)) {
        seen.push({
          sequence: Number(ev.sequence),
          event: ev.event as string,
          at: performance.now(),
          raw: ev as unknown as Record<string, unknown>,
        });
        if (["completed", "failed", "cancelled"].includes(ev.event as string)) return seen;
      }
      return seen;
    } catch {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`watch of ${jobId} kept failing`);
}

/** Continues `seen` (events of `jobId` already watched) on `client` to the terminal event. */
async function watchAllFrom(
  client: PromptLearningClient,
  jobId: string,
  seen: Seen[],
): Promise<Seen[]> {
  if (["completed", "failed", "cancelled"].includes(seen.at(-1)?.event ?? "")) return seen;
  const out = [...seen];
  for await (const ev of client.watchJob(jobId, out.at(-1)?.sequence ?? 0)) {
    out.push({
      sequence: Number(ev.sequence),
      event: ev.event as string,
      at: performance.now(),
      raw: ev as unknown as Record<string, unknown>,
    });
  }
  return out;
}

function assertContiguous(seen: Seen[], who: string): void {
  const seqs = seen.map((s) => s.sequence);
  assertEquals(seqs, seqs.map((_, i) => i + 1), `${who}: no gaps, no repeats`);
}

async function stopAll(replicas: Replica[]): Promise<void> {
  await Promise.all(replicas.map((r) => r.stop()));
}

postgres.test(
  "a Train sent to A runs once; B and C watch it by sequence, and answer GetJob, ListJobs " +
    "and CancelJob",
  "jobs",
  async (url) => {
    const env = { JOB_LEASE_MS: String(LEASE_MS) };
    const replicas = await Promise.all(["a", "b", "c"].map((n) => startReplica(n, url, env)));
    const [a, b, c] = replicas;
    try {
      const stream = a.client.train(sentimentTrainRequest("once", "once_task", 6, 3));
      const first = await stream.next();
      const jobId = first.value!.jobId as string;
      const rest = (async () => {
        const evs = [first.value!];
        for await (const ev of stream) evs.push(ev);
        return evs;
      })();
      const [onB, onC, onA] = await Promise.all([
        watchAll(b.client, jobId),
        watchAll(c.client, jobId),
        rest,
      ]);
      assertContiguous(onB, "B");
      assertContiguous(onC, "C");
      assertEquals(onB.map((e) => e.event), onC.map((e) => e.event));
      assertEquals(onA.map((e) => Number(e.sequence)), onB.map((e) => e.sequence));
      assertEquals(onB.at(-1)!.event, "completed", JSON.stringify(onB.at(-1)!.raw));
      assertEquals(onB.filter((e) => e.event === "started").length, 1, "ran once");
      for (const r of replicas) {
        const job = await r.client.getJob(jobId);
        assertEquals(job.state, "JOB_STATE_SUCCEEDED");
        assert((await r.client.listJobs()).jobs.some((j) => j.jobId === jobId));
      }
      assertEquals((await c.client.getTask("once_task")).versions, [1]);
      // Trained through one replica, served by the others.
      for (const r of [b, c]) {
        const [res] = await r.client.infer([{
          task: "once_task",
          fields: { sentence: "the film was wonderful" },
          maxNewTokens: 2,
        }]);
        assert(res.completion, `${r.name} serves the trained task: ${res.error?.message}`);
      }
      // A watcher moving between replicas resumes by sequence: three events from B, the rest
      // from C, together exactly the job's events.
      const firstThree: number[] = [];
      for await (const ev of b.client.watchJob(jobId, 0)) {
        firstThree.push(Number(ev.sequence));
        if (firstThree.length === 3) break;
      }
      const restFromC: number[] = [];
      for await (const ev of c.client.watchJob(jobId, firstThree[2])) {
        restFromC.push(Number(ev.sequence));
      }
      assertEquals([...firstThree, ...restFromC], onB.map((e) => e.sequence));

      // Cancel from C a job submitted on B and running somewhere.
      const long = b.client.train(sentimentTrainRequest("long", "long_task", 2000, 1000));
      const head = await long.next();
      const longId = head.value!.jobId as string;
      await until("the long job runs", async () => {
        const j = await c.client.getJob(longId);
        return j.state === "JOB_STATE_RUNNING" ? j : undefined;
      }, 60_000);
      const cancelled = await c.client.cancelJob(longId);
      assert(
        ["JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"].includes(cancelled.state as string),
        String(cancelled.state),
      );
      const end = await until("the long job is cancelled", async () => {
        const j = await a.client.getJob(longId);
        return j.state === "JOB_STATE_CANCELLED" ? j : undefined;
      }, 30_000);
      assertEquals(end.value.state, "JOB_STATE_CANCELLED");
      for await (const _ of long) { /* the stream ends with the cancelled event */ }
      const events = await watchAll(a.client, longId);
      assertContiguous(events, "A");
      assertEquals(events.at(-1)!.event, "cancelled");
    } finally {
      await stopAll(replicas);
    }
  },
);

postgres.test(
  "a replica killed with SIGKILL mid-training loses its job to another within the lease, " +
    "which resumes from the last checkpoint; one stopped with SIGTERM hands its job over at once; " +
    "watchers see no gap or repeat",
  "kill",
  async (url) => {
    const env = { JOB_LEASE_MS: String(LEASE_MS) };
    // A starts first and alone, so the job is claimed by A; B and C join after.
    const a = await startReplica("a", url, env);
    const others: Replica[] = [];
    try {
      // Every step logged: the replica taking over must report each of the steps it runs.
      const killed = sentimentTrainRequest("killed", "kill_task", 16, 4);
      const stream = a.client.train({ config: { ...killed.config, logEveryNSteps: 1 } });
      const first = await stream.next();
      const jobId = first.value!.jobId as string;
      (async () => {
        try {
          for await (const _ of stream) { /* A dies: the stream breaks */ }
        } catch { /* expected */ }
      })();
      others.push(...await Promise.all(["b", "c"].map((n) => startReplica(n, url, env))));
      const [b, c] = others;
      const watched = watchAll(c.client, jobId);
      // Kill A once a checkpoint is stored.
      const ckpt = await until(
        "a checkpoint of the job on A",
        async () => {
          for await (const ev of b.client.watchJob(jobId, 0)) {
            // "latest" is the one a takeover resumes from ("best" comes just before it).
            if (ev.event === "checkpoint" && ev.checkpoint?.kind === "latest") return ev;
            if (ev.event === "completed") throw new Error("finished before a kill");
          }
          return undefined;
        },
        120_000,
        100,
      );
      const owner = await a.client.getJob(jobId);
      assertEquals(owner.state, "JOB_STATE_RUNNING");
      const killedAt = performance.now();
      await a.kill();
      const seen = await watched;
      assertContiguous(seen, "C across the kill");
      assertEquals(seen.at(-1)!.event, "completed", JSON.stringify(seen.at(-1)!.raw));
      const starts = seen.filter((e) => e.event === "started");
      assertEquals(starts.length, 2, "started by A, then resumed by the replica taking over");
      const resumed = starts[1];
      const resumedFrom = Number(
        (resumed.raw.started as { resumedFromStep?: number } | undefined)?.resumedFromStep ?? 0,
      );
      assert(resumedFrom >= 4, `resumed from a checkpoint: step ${resumedFrom}`);
      const afterResume = seen.slice(seen.indexOf(resumed)).filter((e) => e.event === "step");
      assertEquals(
        afterResume.map((e) => Number((e.raw.step as { step: string }).step)),
        Array.from({ length: 16 - resumedFrom }, (_, i) => resumedFrom + 1 + i),
        "the replica taking over reports every step it runs",
      );
      const takeoverMs = resumed.at - killedAt;
      assertEquals((await b.client.getJob(jobId)).state, "JOB_STATE_SUCCEEDED");
      assertEquals((await c.client.getTask("kill_task")).versions, [1]);
      const took = [b, c].filter((r) =>
        r.log().includes(`"msg":"job taken over","job":"${jobId}"`)
      );
      assertEquals(took.length, 1, "exactly one replica took the job over");
      // A rolling update: SIGTERM on the replica running a job hands it back at once (no lease to
      // wait for), and the other resumes it from its checkpoint.
      const stream2 = b.client.train(sentimentTrainRequest("rolled", "roll_task", 16, 4));
      const rolledId = (await stream2.next()).value!.jobId as string;
      (async () => {
        try {
          for await (const _ of stream2) { /* B may go away */ }
        } catch { /* expected */ }
      })();
      await until(
        "a checkpoint of the rolled job",
        async () => {
          for await (const ev of c.client.watchJob(rolledId, 0)) {
            if (ev.event === "checkpoint" && ev.checkpoint?.kind === "latest") return ev;
          }
          return undefined;
        },
        120_000,
        100,
      );
      const claimed = `"msg":"job claimed","job":"${rolledId}"`;
      const owner2 = [b, c].find((r) => r.log().includes(claimed))!;
      const other = owner2 === b ? c : b;
      const termAt = Date.now();
      assertEquals((await owner2.stop()).code, 0);
      const rolled = await watchAllFrom(other.client, rolledId, []);
      assertContiguous(rolled, "across the SIGTERM hand-over");
      assertEquals(rolled.at(-1)!.event, "completed");
      const restart = rolled.filter((e) => e.event === "started")[1];
      assert(restart, "resumed by the other replica");
      const t = restart.raw.time as { seconds: string; nanos: number };
      const handoverMs = Number(t.seconds) * 1000 + t.nanos / 1e6 - termAt;
      assert(
        Number((restart.raw.started as { resumedFromStep?: string }).resumedFromStep ?? 0) >= 4,
        "resumed from the checkpoint",
      );
      console.log(JSON.stringify({
        replicas_jobs_test: {
          sigterm_handover_to_resumed_ms: Math.round(handoverMs),
          lease_ms: LEASE_MS,
          checkpoint_step_before_kill: Number(
            (ckpt.value as { checkpoint?: { step?: number } }).checkpoint?.step ?? 0,
          ),
          resumed_from_step: resumedFrom,
          takeover_after_sigkill_ms: Math.round(takeoverMs),
        },
      }));
    } finally {
      await a.stop().catch(() => {});
      await stopAll(others);
    }
  },
);

postgres.test(
  "REPLICA_ROLE: a Train sent to a serving replica waits in the queue and runs on a training " +
    "one; the serving one serves the result, the training one refuses inference",
  "roles",
  async (url) => {
    const env = { JOB_LEASE_MS: String(LEASE_MS) };
    const replicas: Replica[] = [];
    try {
      const serve = await startReplica("serve", url, { ...env, REPLICA_ROLE: "serve" });
      replicas.push(serve);
      assertEquals(await serve.client.health("training"), "NOT_SERVING");
      const stream = serve.client.train(sentimentTrainRequest("roles", "roles_task", 4, 2));
      const jobId = (await stream.next()).value!.jobId as string;
      // No replica trains yet: the job waits, well past a claim's usual delay.
      await new Promise((r) => setTimeout(r, 1500));
      assertEquals((await serve.client.getJob(jobId)).state, "JOB_STATE_QUEUED");
      const train = await startReplica("train", url, { ...env, REPLICA_ROLE: "train" });
      replicas.push(train);
      const events = [];
      for await (const ev of stream) events.push(ev.event);
      assertEquals(events.at(-1), "completed", events.join(","));
      const claimed = (r: Replica) => r.log().includes(`"msg":"job claimed","job":"${jobId}"`);
      assert(claimed(train), `the training replica ran it:\n${train.log()}`);
      assert(!claimed(serve), "the serving replica never claimed it");
      const req = {
        task: "roles_task",
        fields: { sentence: "the film was wonderful" },
        maxNewTokens: 2,
      };
      const [res] = await serve.client.infer([req]);
      assert(res.completion, `the serving replica serves the trained task: ${res.error?.message}`);
      assertEquals(await train.client.health("inference"), "NOT_SERVING");
      const refused = await train.client.infer([req]).then(() => null, (e) => e as Error);
      assert(refused && /UNAVAILABLE|only trains/.test(String(refused)), String(refused));
    } finally {
      await stopAll(replicas);
    }
  },
);
