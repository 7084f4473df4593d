/**
 * TensorBoard event files of real short runs on the shipped tiny model, read back by an
 * independent reader (test/python/read_tfevents.py: its own CRC-32C, protoc-compiled messages
 * from TensorFlow's .proto files). Skipped, saying why, without /usr/bin/python3's protobuf or
 * protoc (in CI, CI=true, it fails instead).
 */
import { join } from "node:path";
import * as YAML from "yaml";
import { assert, assertEquals } from "../../test/assert.ts";
import { PYTHON, pythonMissing, requireTool, succeeds } from "../../test/support/required_tool.ts";
import { loadModel } from "../model/mod.ts";
import { createTestEngine } from "../model/testing/engine_probe.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { DiskTaskStore, fingerprintOf } from "../registry/mod.ts";
import { validateTrainingConfig } from "./config.ts";
import type { TrainingEvent } from "./events.ts";
import { MemoryJobStore } from "./local_job_store.ts";
import { trainFromConfig } from "./run.ts";
import { TensorBoardLog } from "./tensorboard.ts";
import { crc32c, frameRecord, maskedCrc32c } from "./tfevents.ts";
import { TrainingService } from "./training_service.ts";

const READER = new URL("../../test/python/read_tfevents.py", import.meta.url).pathname;
const root = new URL("../../", import.meta.url).pathname;

async function missing(): Promise<string | null> {
  const python = await pythonMissing("google.protobuf", "python3-protobuf");
  if (python) return python;
  if (!(await succeeds("protoc", ["--version"]))) {
    return "protoc is absent (apt-get install protobuf-compiler)";
  }
  return null;
}

const tool = requireTool(await missing(), "tensorboard_test.ts");

const model = await loadModel(`${root}models/tiny-gpt2`);
const tokenizer = await loadTokenizer(`${root}models/tiny-gpt2`);
const engine = await createTestEngine("fast", model);
const fingerprint = fingerprintOf(model);

interface ReadValue {
  tag: string;
  simple_value?: number | string;
  plugin?: string;
  dtype?: string;
  shape?: number[];
  text?: string[];
}
interface ReadEvent {
  wall_time: number;
  step: number;
  file_version?: string;
  session_log?: string;
  values?: ReadValue[];
}
interface ReadFile {
  name: string;
  events: ReadEvent[];
}

/** The event files in `dir`, as the Python reader decodes them (it fails on a bad record). */
async function readEvents(dir: string): Promise<ReadFile[]> {
  const out = await new Deno.Command(PYTHON, {
    args: [READER, dir],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new Error(`read_tfevents.py failed (${out.code}): ${dec.decode(out.stderr)}`);
  }
  return JSON.parse(dec.decode(out.stdout)).files;
}

/** [step, value] of every point of `tag`, in file order. */
function curve(files: ReadFile[], tag: string): [number, number | string][] {
  return files.flatMap((f) =>
    f.events.flatMap((e) =>
      (e.values ?? []).filter((v) => v.tag === tag).map((v) =>
        [e.step, v.simple_value!] as [number, number | string]
      )
    )
  );
}

const tags = (files: ReadFile[]) =>
  [...new Set(files.flatMap((f) => f.events.flatMap((e) => (e.values ?? []).map((v) => v.tag))))]
    .sort();

function lines(file: string, from: number, n: number): string {
  return Deno.readTextFileSync(`${root}data/splits/${file}`).split("\n").slice(from, from + n)
    .join("\n") + "\n";
}

async function fixtureDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "tensorboard_test_" });
  await Deno.writeTextFile(`${dir}/train.jsonl`, lines("sentiment_train.jsonl", 0, 6));
  await Deno.writeTextFile(`${dir}/val.jsonl`, lines("sentiment_val.jsonl", 0, 3));
  await Deno.writeTextFile(`${dir}/test.jsonl`, lines("sentiment_val.jsonl", 3, 2));
  return dir;
}

/** A short sentiment run: 4 steps, validation (loss and accuracy) every 2, a test split. */
function rawConfig(dataDir: string, over: { trainer?: object; exp_manager?: object } = {}) {
  return {
    name: "tb",
    trainer: {
      max_steps: 4,
      max_epochs: 10,
      val_check_interval: 2,
      log_every_n_steps: 1,
      gradient_clip_val: 1.0,
      ...over.trainer,
    },
    exp_manager: { resume_if_exists: true, ...over.exp_manager },
    model: {
      seed: 3,
      virtual_prompt_style: "prompt-tuning",
      new_tasks: ["sentiment"],
      task_templates: [{
        taskname: "sentiment",
        prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
        total_virtual_tokens: 4,
        virtual_token_splits: [4],
        truncate_field: "sentence",
      }],
      prompt_tuning: { new_prompt_init_methods: ["vocab"] },
      data: {
        train_ds: [`${dataDir}train.jsonl`],
        validation_ds: [`${dataDir}val.jsonl`],
        test_ds: [`${dataDir}test.jsonl`],
      },
      global_batch_size: 2,
      micro_batch_size: 2,
      optim: { name: "adamw", lr: 0.03 },
      report_validation_metric: true,
      validation_drop_last: false,
      inference: { tokens_to_generate: 2, greedy: true },
    },
  };
}

/** Runs `raw` as the train command does, into `<dir>/runs`; its events and result. */
async function train(dir: string, raw: Record<string, unknown>, log?: (m: string) => void) {
  const store = await DiskTaskStore.open(`${dir}/reg`, { fingerprint });
  const events: TrainingEvent[] = [];
  const result = await trainFromConfig(
    validateTrainingConfig(raw),
    { dataDir: dir, service: false },
    { engine, tokenizer, store, fingerprint, runsDir: `${dir}/runs`, log },
    (e) => events.push(e),
  );
  return { events, result };
}

/** Asserts that every scalar the job streamed is in the files, at its step, as a float32. */
function assertMatchesEvents(files: ReadFile[], events: TrainingEvent[]) {
  const steps = events.flatMap((e) => (e.type === "step" ? [e] : []));
  const vals = events.flatMap((e) => (e.type === "validation" ? [e] : []));
  assert(steps.length > 0 && vals.length > 0);
  const f32 = (x: number) => Math.fround(x);
  assertEquals(curve(files, "train_loss"), steps.map((e) => [e.step, f32(e.loss)]));
  assertEquals(curve(files, "lr"), steps.map((e) => [e.step, f32(e.learningRate)]));
  assertEquals(curve(files, "global_step"), steps.map((e) => [e.step, e.step]));
  assertEquals(curve(files, "grad_norm"), steps.map((e) => [e.step, f32(e.gradNorm)]));
  assertEquals(curve(files, "val_loss"), vals.map((e) => [e.step, f32(e.loss)]));
  assertEquals(
    curve(files, "val_accuracy/sentiment"),
    vals.map((e) => [e.step, f32(e.metrics.sentiment.accuracy)]),
  );
  for (const tag of ["train_loss", "val_loss"]) {
    const c = curve(files, tag);
    assert(c.every(([, v]) => typeof v === "number" && Number.isFinite(v)), `${tag}: ${c}`);
    assert(c.every(([s], i) => i === 0 || s > c[i - 1][0]), `${tag}: steps increase: ${c}`);
  }
}

/** The `hparams` text summaries, parsed back from their YAML block. */
function hparams(files: ReadFile[]): unknown[] {
  return files.flatMap((f) =>
    f.events.flatMap((e) => (e.values ?? []).filter((v) => v.tag === "hparams"))
  ).map((v) => {
    assertEquals([v.plugin, v.dtype, v.shape], ["text", "DT_STRING", [1]]);
    const text = v.text![0];
    assert(text.startsWith("```yaml\n") && text.endsWith("```\n"), text);
    return YAML.parse(text.slice("```yaml\n".length, -"```\n".length));
  });
}

Deno.test("TFRecord framing: CRC-32C's check value, and the masked CRCs around length and data", () => {
  const check = new TextEncoder().encode("123456789");
  assertEquals(crc32c(check), 0xe3069283);
  // ((0xe3069283 >>> 15) | (0xe3069283 << 17)) + 0xa282ead8, mod 2^32.
  assertEquals(maskedCrc32c(check), 0xc78ab0e5);
  const data = new TextEncoder().encode("event");
  const rec = frameRecord(data);
  const view = new DataView(rec.buffer);
  assertEquals(rec.length, 8 + 4 + data.length + 4);
  assertEquals(view.getBigUint64(0, true), BigInt(data.length));
  assertEquals(view.getUint32(8, true), maskedCrc32c(rec.subarray(0, 8)));
  assertEquals(rec.subarray(12, 12 + data.length), data);
  assertEquals(view.getUint32(12 + data.length, true), maskedCrc32c(data));
});

Deno.test({
  name:
    "a train run writes TensorBoard event files under <run dir>/tensorboard that an independent reader decodes: the job's own losses, lr, metrics, steps, and the config as hparams",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const dir = await fixtureDir();
    try {
      const raw = rawConfig(`${dir}/`);
      const notes: string[] = [];
      const { events, result } = await train(dir, raw, (m) => notes.push(m));
      const tb = join(dir, "runs", "tb", "tensorboard");
      assertEquals(result.tensorboardDir, tb);
      assert(notes.some((n) => n.includes(tb)), "the directory is shown: " + notes.join("\n"));
      const files = await readEvents(tb);
      assertEquals(files.length, 1);
      assert(/^events\.out\.tfevents\.\d{10}\.[^.]+.*\.\d+\.0$/.test(files[0].name), files[0].name);
      assertEquals(files[0].events[0].file_version, "brain.Event:2");
      assertEquals(tags(files), [
        "epoch",
        "global_step",
        "grad_norm",
        "hparams",
        "lr",
        "test_accuracy/sentiment",
        "test_count/sentiment",
        "test_exact_match/sentiment",
        "test_loss/sentiment",
        "train_loss",
        "val_accuracy/sentiment",
        "val_count/sentiment",
        "val_exact_match/sentiment",
        "val_loss",
        "val_loss/sentiment",
      ]);
      assertMatchesEvents(files, events);
      const done = events.at(-1)!;
      assert(done.type === "completed");
      assertEquals(
        curve(files, "test_loss/sentiment"),
        [[4, Math.fround(done.metrics.sentiment.test_loss)]],
      );
      const config = validateTrainingConfig(raw).config;
      assertEquals(hparams(files), [JSON.parse(JSON.stringify(config))]);
      assert(config.exp_manager.create_tensorboard_logger, "NeMo's default: true");

      // Resumed with more steps: a second file continues at step 5, marking the restart there.
      const more = rawConfig(`${dir}/`, { trainer: { max_steps: 6 } });
      const second = await train(dir, more);
      const both = await readEvents(tb);
      assertEquals(both.length, 2);
      const restart = both[1].events.find((e) => e.session_log);
      assertEquals([restart?.session_log, restart?.step], ["START", 5]);
      assertMatchesEvents([both[1]], second.events);
      assertEquals(curve(both, "train_loss").map(([s]) => s), [1, 2, 3, 4, 5, 6]);

      // Started fresh (resume_if_exists false), the run replaces the earlier files.
      await train(dir, rawConfig(`${dir}/`, { exp_manager: { resume_if_exists: false } }));
      const fresh = await readEvents(tb);
      assertEquals(fresh.length, 1);
      assertEquals(curve(fresh, "train_loss").map(([s]) => s), [1, 2, 3, 4]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("create_tensorboard_logger: false writes no event files; a failing event file fails nothing", async () => {
  const dir = await fixtureDir();
  try {
    const off = rawConfig(`${dir}/`, {
      trainer: { max_steps: 1 },
      exp_manager: { create_tensorboard_logger: false },
    });
    const quiet = await train(dir, off);
    assertEquals(quiet.result.tensorboardDir, undefined);
    const entries = [...Deno.readDirSync(join(dir, "runs", "tb"))].map((e) => e.name);
    assert(!entries.includes("tensorboard"), entries.join());

    // tensorboard/ is a file: the run completes, and says once why it has no event files.
    await Deno.writeTextFile(join(dir, "runs", "tb", "tensorboard"), "in the way");
    const notes: string[] = [];
    const blocked = await train(
      dir,
      rawConfig(`${dir}/`, { trainer: { max_steps: 2 } }),
      (m) => notes.push(m),
    );
    assertEquals(blocked.events.at(-1)!.type, "completed");
    assertEquals(notes.filter((n) => n.includes("stopped")).length, 1, notes.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("TensorBoardLog: a write that fails stops the log once, and later events neither throw nor log", () => {
  const messages: string[] = [];
  const log = new TensorBoardLog({
    dir: "/dev/null/tensorboard",
    hparams: {},
    log: (m) => messages.push(m),
  });
  log.observe({
    type: "started",
    tasks: ["t"],
    totalSteps: 2,
    totalEpochs: 1,
    trainExamples: { t: 2 },
    droppedExamples: {},
    skippedRecords: 0,
    resumedFromStep: 0,
    notes: [],
  });
  for (const step of [1, 2]) {
    log.observe({
      type: "step",
      step,
      epoch: 0,
      totalSteps: 2,
      loss: 1,
      learningRate: 0.1,
      tokensPerSecond: 1,
      etaSeconds: 0,
      gradNorm: NaN,
    });
  }
  log.close();
  assertEquals(messages.length, 1);
  assert(messages[0].startsWith("TensorBoard event files in /dev/null/tensorboard stopped: "));
});

Deno.test({
  name:
    "a service job's event files are in RUNS_DIR/<job>/tensorboard after it ends, and go when the job is forgotten",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const dir = await fixtureDir();
    const runs = join(dir, "runs");
    const jobs = new MemoryJobStore();
    const logs: string[] = [];
    const service = new TrainingService({
      jobs,
      engine,
      tokenizer,
      store: await DiskTaskStore.open(`${dir}/reg`, { fingerprint }),
      fingerprint,
      dataDir: dir,
      runsDir: runs,
      keepFinishedJobs: 1,
      jobLeaseMs: 300,
      log: (msg) => logs.push(msg),
    });
    service.start();
    const runJob = async () => {
      const job = await service.submit({ config: { kind: "object", config: rawConfig("") } });
      const events: TrainingEvent[] = [];
      for await (const e of service.events(job.id, 0)) events.push(e.event);
      assertEquals(events.at(-1)!.type, "completed", JSON.stringify(events.at(-1)));
      return { id: job.id, events };
    };
    try {
      const a = await runJob();
      // The checkpoint went with the job; its event files stay.
      assertEquals([...Deno.readDirSync(join(runs, a.id))].map((e) => e.name), ["tensorboard"]);
      const files = await readEvents(join(runs, a.id, "tensorboard"));
      assertMatchesEvents(files, a.events);
      assert(logs.some((m) => m.includes(join(runs, a.id, "tensorboard"))), logs.join("\n"));

      // keepFinishedJobs 1: the next job's end makes the store forget the first, and its files.
      const b = await runJob();
      const end = Date.now() + 10_000;
      while (exists(join(runs, a.id)) && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert(!exists(join(runs, a.id)), "the forgotten job's directory is gone");
      assert(exists(join(runs, b.id, "tensorboard")));
    } finally {
      await service.close();
    }
    try {
      // A later process whose store no longer holds the job removes what it left.
      const later = new TrainingService({
        jobs: new MemoryJobStore(),
        engine,
        tokenizer,
        store: await DiskTaskStore.open(`${dir}/reg`, { fingerprint }),
        fingerprint,
        dataDir: dir,
        runsDir: runs,
      });
      assertEquals((await later.removeStaleJobDirs()).length, 1);
      assertEquals([...Deno.readDirSync(runs)].filter((e) => !e.name.startsWith(".")), []);
      await later.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
