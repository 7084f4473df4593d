/**
 * A full disk is an error the caller can act on: the real service on small file systems of its
 * own (tmpfs, in a mount namespace: `unshare -rm`), filled by a run. A job that meets a full
 * RUNS_DIR or REGISTRY_DIR ends failed with RESOURCE_EXHAUSTED naming the storage, and what was
 * stored before stays whole: the job store's journal, the registry's versions.
 */
import { status } from "@grpc/grpc-js";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { postgresTests } from "./support/postgres.ts";
import { startReplica } from "./support/replicas.ts";
import { sentimentTrainRequest, splitRecords } from "./support/train_request.ts";
import type { PromptLearningClient } from "../client/client.ts";
import type { TrainEvent__Output } from "../proto/gen/promptlearning/v1/TrainEvent.ts";

/** Prompt tuning of `task` with `tokens` virtual tokens on 8 sentiment records, 2 steps. */
function trainRequest(task: string, tokens: number) {
  return sentimentTrainRequest(task, task, 2, 1, {
    virtualTokens: tokens,
    trainRecords: 8,
    valRecords: 2,
  });
}

async function trainToEnd(client: PromptLearningClient, req: ReturnType<typeof trainRequest>) {
  const events: TrainEvent__Output[] = [];
  for await (const e of client.train(req)) events.push(e);
  return events;
}

const table = (n: number) => Array.from({ length: n * 256 }, () => 0.01);

Deno.test({
  name:
    "a full RUNS_DIR fails the job with RESOURCE_EXHAUSTED naming it; the job store stays whole",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "plt-full-runs-" });
  await Deno.mkdir(`${dir}/runs`);
  // 256 KiB: the job's record and events fit; a checkpoint of 100 virtual tokens (its table,
  // AdamW's two moments and the parameters: 400 KiB) does not.
  const svc = await startReplica("full-runs", null, {
    REGISTRY_DIR: `${dir}/registry`,
    RUNS_DIR: `${dir}/runs`,
  }, [{ dir: `${dir}/runs`, size: "256k" }]);
  try {
    const events = await trainToEnd(svc.client, trainRequest("big", 100));
    const last = events.at(-1)!;
    assertEquals(last.event, "failed", JSON.stringify(last));
    const reason = last.failed!.reason;
    assert(reason.includes("RUNS_DIR") && reason.includes("full"), reason);
    assert(!reason.includes(dir), `the reason shows a server path: ${reason}`);
    assertEquals(last.failed!.code, status.RESOURCE_EXHAUSTED);
    const job = await svc.client.getJob(last.jobId);
    assertEquals(job.state, "JOB_STATE_FAILED");
    // The journal is whole: a watcher replays every event, the failure last.
    const replay: TrainEvent__Output["event"][] = [];
    for await (const e of svc.client.watchJob(last.jobId, 0)) replay.push(e.event);
    assertEquals(replay, events.map((e) => e.event));
    // Nothing was written to the registry, and the disk is usable again: a run that fits ends.
    assertEquals((await svc.client.listTasks()).tasks, []);
    const fits = await trainToEnd(svc.client, trainRequest("fits", 2));
    assertEquals(fits.at(-1)!.event, "completed", JSON.stringify(fits.at(-1)));
  } finally {
    await svc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "a full REGISTRY_DIR fails a job and a RegisterTask with RESOURCE_EXHAUSTED naming it; stored versions stay served",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "plt-full-registry-" });
  await Deno.mkdir(`${dir}/registry`);
  const svc = await startReplica("full-registry", null, {
    REGISTRY_DIR: `${dir}/registry`,
    RUNS_DIR: `${dir}/runs`,
  }, [{ dir: `${dir}/registry`, size: "64k" }]);
  try {
    const template = {
      promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      promptTemplateFields: ["sentence", "label"],
      totalVirtualTokens: 2,
      virtualTokenSplits: [2],
      answerField: "label",
    };
    const register = (name: string, n: number) =>
      svc.client.registerTask({
        name,
        template: { ...template, taskname: name, totalVirtualTokens: n, virtualTokenSplits: [n] },
        table: { values: table(n), rows: n, hidden: 256 },
      });
    await register("kept", 2);
    // 100 rows of 256 floats: 100 KiB, more than the disk holds.
    const refused = await assertRejects(() => register("too_big", 100));
    const e = refused as { code?: number; details?: string };
    assertEquals(e.code, status.RESOURCE_EXHAUSTED, String(refused));
    assert(e.details?.includes("REGISTRY_DIR") && !e.details.includes(dir), e.details);
    const events = await trainToEnd(svc.client, trainRequest("trained", 100));
    const last = events.at(-1)!;
    assertEquals(last.event, "failed", JSON.stringify(last));
    assert(last.failed!.reason.includes("REGISTRY_DIR"), last.failed!.reason);
    assertEquals(last.failed!.code, status.RESOURCE_EXHAUSTED);
    // The version stored before is listed, described and served as it was.
    const tasks = (await svc.client.listTasks()).tasks.map((t) => t.name);
    assertEquals(tasks, ["kept"]);
    const [out] = await svc.client.infer([{
      task: "kept",
      fields: { sentence: "a fine film" },
      maxNewTokens: 2,
    }]);
    assertEquals(out.completion?.taskVersion, 1, JSON.stringify(out));
  } finally {
    await svc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

const postgres = postgresTests("test/disk_full_test.ts");

postgres.test(
  "a PostgreSQL out of disk space (53100) fails a job and a RegisterTask with RESOURCE_EXHAUSTED naming the database",
  "full",
  async (url) => {
    let svc: Awaited<ReturnType<typeof startReplica>> | undefined;
    try {
      svc = await startReplica("full-pg", url);
      // PostgreSQL out of space fails the statement with SQLSTATE 53100 (disk_full) and rolls its
      // transaction back; these triggers make the two tables it would grow fail just so.
      const { default: pg } = await import("pg");
      const admin = new pg.Client({ connectionString: url });
      await admin.connect();
      try {
        await admin.query(`
        CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
        END $$;
        CREATE TRIGGER full_checkpoints BEFORE INSERT ON job_checkpoints
          FOR EACH ROW EXECUTE FUNCTION disk_full();`);
        await svc.client.registerTask({
          name: "kept",
          template: {
            taskname: "kept",
            promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            promptTemplateFields: ["sentence", "label"],
            totalVirtualTokens: 2,
            virtualTokenSplits: [2],
            answerField: "label",
          },
          table: { values: table(2), rows: 2, hidden: 256 },
        });
        await admin.query(`CREATE TRIGGER full_versions BEFORE INSERT ON task_versions
        FOR EACH ROW EXECUTE FUNCTION disk_full();`);
        const refused = await assertRejects(() =>
          svc!.client.registerTask({
            name: "more",
            template: {
              taskname: "more",
              promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
              promptTemplateFields: ["sentence", "label"],
              totalVirtualTokens: 2,
              virtualTokenSplits: [2],
              answerField: "label",
            },
            table: { values: table(2), rows: 2, hidden: 256 },
          })
        );
        const e = refused as { code?: number; details?: string };
        assertEquals(e.code, status.RESOURCE_EXHAUSTED, String(refused));
        assert(
          e.details?.includes("out of disk space") && !e.details.includes("password"),
          e.details,
        );
        // The job's checkpoint cannot be stored: the job fails, saying why.
        const events = await trainToEnd(svc.client, trainRequest("trained", 2));
        const last = events.at(-1)!;
        assertEquals(last.event, "failed", JSON.stringify(last));
        assert(last.failed!.reason.includes("out of disk space"), last.failed!.reason);
        assertEquals(last.failed!.code, status.RESOURCE_EXHAUSTED);
        assertEquals((await svc.client.getJob(last.jobId)).state, "JOB_STATE_FAILED");
        assertEquals((await svc.client.listTasks()).tasks.map((t) => t.name), ["kept"]);
      } finally {
        await admin.end();
      }
    } finally {
      await svc?.stop();
    }
  },
);

Deno.test("a job store journal on a full disk refuses the event whole, and the next one follows it intact", async () => {
  const dir = await Deno.makeTempDir({ prefix: "plt-full-journal-" });
  try {
    const worker = new URL("./support/full_journal_worker.ts", import.meta.url).pathname;
    const out = await new Deno.Command("unshare", {
      args: [
        "-rm",
        "sh",
        "-ec",
        `mount -t tmpfs -o size=64k tmpfs '${dir}' && exec "$@"`,
        "sh",
        Deno.execPath(),
        "run",
        "-A",
        worker,
        dir,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, err);
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    assert(r.appended >= 1, JSON.stringify(r));
    assertEquals(r.refused?.kind, "resource_exhausted", JSON.stringify(r));
    assert(r.refused.message.includes("RUNS_DIR"), r.refused.message);
    // queued (1), every appended event, then the one after the refusal: no gap, nothing torn.
    const n = r.appended + 2;
    assertEquals(r.sequences, Array.from({ length: n }, (_, i) => i + 1));
    assertEquals(r.last, "checkpoint");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task train with a full --runs disk exits naming it, and its registry gets nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "plt-full-cli-" });
  try {
    await Deno.mkdir(`${dir}/runs`);
    const lines = (f: string, n: number) =>
      splitRecords(f, n, "big").map((r) => JSON.stringify(r)).join("\n") + "\n";
    await Deno.writeTextFile(`${dir}/train.jsonl`, lines("sentiment_train.jsonl", 8));
    await Deno.writeTextFile(`${dir}/val.jsonl`, lines("sentiment_val.jsonl", 2));
    await Deno.writeTextFile(
      `${dir}/run.yaml`,
      `name: big
trainer: { max_steps: 2, max_epochs: 1, val_check_interval: 1 }
model:
  virtual_prompt_style: prompt-tuning
  new_tasks: [big]
  task_templates:
    - taskname: big
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
      total_virtual_tokens: 100
      virtual_token_splits: [100]
  prompt_tuning: { new_prompt_init_methods: [vocab], new_prompt_init_text: [null] }
  data: { train_ds: [train.jsonl], validation_ds: [val.jsonl] }
  global_batch_size: 2
  micro_batch_size: 2
  optim: { name: adamw, lr: 0.03 }
`,
    );
    const cli = new URL("../server/cli/train.ts", import.meta.url).pathname;
    const out = await new Deno.Command("unshare", {
      args: [
        "-rm",
        "sh",
        "-ec",
        `mount -t tmpfs -o size=256k tmpfs '${dir}/runs' && exec "$@"`,
        "sh",
        Deno.execPath(),
        "run",
        "-A",
        cli,
        "--config",
        "run.yaml",
        "--registry",
        "reg",
        "--runs",
        "runs",
        "--quiet",
      ],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 1, err);
    assert(err.includes("the checkpoint directory") && err.includes("is full"), err);
    const versions = await Deno.stat(`${dir}/reg/big`).then(() => true, () => false);
    assertEquals(versions, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
