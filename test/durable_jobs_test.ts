/**
 * The embedded backend (no DATABASE_URL) keeps its jobs on disk: a job running when the service
 * is killed with SIGKILL, or stopped with SIGTERM, resumes from its last checkpoint when the
 * service starts again on the same directories; a job queued behind it runs too; their events
 * keep their numbers (a watcher resuming by sequence sees no gap or repeat) and a finished job is
 * still answered for after a restart.
 */
import { assert, assertEquals } from "./assert.ts";
import { sentimentTrainRequest } from "./support/train_request.ts";
import type { PromptLearningClient } from "../client/client.ts";
import { startReplica, until } from "./support/replicas.ts";

/** Submits a Train and returns its job id (the stream is drained in the background). */
async function submit(client: PromptLearningClient, req: ReturnType<typeof sentimentTrainRequest>) {
  const stream = client.train(req);
  const first = await stream.next();
  (async () => {
    try {
      for await (const _ of stream) { /* drained */ }
    } catch { /* the server goes away */ }
  })();
  return first.value!.jobId as string;
}

async function events(client: PromptLearningClient, jobId: string, after = 0) {
  const out: { sequence: number; event: string; raw: Record<string, unknown> }[] = [];
  for await (const ev of client.watchJob(jobId, after)) {
    out.push({
      sequence: Number(ev.sequence),
      event: ev.event as string,
      raw: ev as unknown as Record<string, unknown>,
    });
  }
  return out;
}

async function checkpointed(
  client: PromptLearningClient,
  jobId: string,
  after: number,
): Promise<number> {
  const { value } = await until(
    `a checkpoint of ${jobId} after sequence ${after}`,
    async () => {
      for await (const ev of client.watchJob(jobId, after)) {
        // "latest" is the one a restart resumes from ("best" comes just before it).
        if (ev.event === "checkpoint" && ev.checkpoint?.kind === "latest") {
          return Number(ev.sequence);
        }
        if (ev.event === "completed") throw new Error("finished before the restart");
      }
      return undefined;
    },
    180_000,
    100,
  );
  return value;
}

Deno.test({
  name: "embedded jobs survive SIGKILL and SIGTERM: resumed from their checkpoints, events kept",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "plt-durable-" });
  const env = { REGISTRY_DIR: `${dir}/registry`, RUNS_DIR: `${dir}/runs` };
  let svc = await startReplica("d1", null, env);
  try {
    const long = await submit(
      svc.client,
      sentimentTrainRequest("durable_long", "durable_long", 16, 4),
    );
    const queued = await submit(
      svc.client,
      sentimentTrainRequest("durable_queued", "durable_queued", 2, 2),
    );
    const ck1 = await checkpointed(svc.client, long, 0);
    await svc.kill();

    svc = await startReplica("d2", null, env);
    // Resumed: a second start, from the checkpoint's step; then SIGTERM mid-run.
    const ck2 = await checkpointed(svc.client, long, ck1);
    assert(svc.log().includes('"msg":"job taken over"'), svc.log());
    const status = await svc.stop();
    assertEquals(status.code, 0);

    svc = await startReplica("d3", null, env);
    const all = await events(svc.client, long);
    const seqs = all.map((e) => e.sequence);
    assertEquals(seqs, seqs.map((_, i) => i + 1), "no gaps, no repeats across restarts");
    assert(ck2 > ck1);
    assertEquals(all.at(-1)!.event, "completed", JSON.stringify(all.at(-1)!.raw));
    const starts = all.filter((e) => e.event === "started").map((e) =>
      Number((e.raw.started as { resumedFromStep?: string }).resumedFromStep ?? 0)
    );
    assertEquals(starts.length, 3, `started, resumed after SIGKILL, resumed after SIGTERM`);
    assertEquals(starts[0], 0);
    assert(starts[1] >= 4 && starts[2] > starts[1], `resumed from checkpoints: ${starts}`);
    assertEquals((await svc.client.getJob(long)).state, "JOB_STATE_SUCCEEDED");
    const q = await until(
      "the queued job finishes",
      async () => {
        const j = await svc.client.getJob(queued);
        return j.state === "JOB_STATE_SUCCEEDED" ? j : undefined;
      },
      120_000,
      200,
    );
    assertEquals(q.value.state, "JOB_STATE_SUCCEEDED");
    assertEquals((await svc.client.getTask("durable_long")).versions, [1]);
    assertEquals((await svc.client.getTask("durable_queued")).versions, [1]);
    await svc.stop();

    // Finished jobs are still answered for after another restart.
    svc = await startReplica("d4", null, env);
    assertEquals((await svc.client.getJob(long)).state, "JOB_STATE_SUCCEEDED");
    assertEquals((await svc.client.listJobs()).jobs.length, 2);
    console.log(JSON.stringify({ durable_jobs_test: { resumed_from_steps: starts.slice(1) } }));
  } finally {
    await svc.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});
