/**
 * A hostile but fair caller against the real service process (server/main.ts on the shipped model,
 * its own registry, runs and data directories): every case asserts the status, that the message
 * names the field, and that the registry, runs and data directories are as they should be. The
 * table printed at the end (case, status, milliseconds) is what the closing notes quote.
 */
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { type CallOptions, PromptLearningClient, RpcCallError } from "../client/client.ts";
import { toStruct } from "../client/struct.ts";
import type { TrainRequest } from "../proto/gen/promptlearning/v1/TrainRequest.ts";
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startService } from "./support/service_process.ts";
import { table } from "./support/test_service.ts";

const root = new URL("../", import.meta.url).pathname;
const TOKEN = "hostile-token";
const HIDDEN = 256;
const TEMPLATE = {
  promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  promptTemplateFields: ["sentence", "label"],
  totalVirtualTokens: 2,
  virtualTokenSplits: [2],
  answerField: "label",
};
const TABLE = { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN) };
const PEFT = join(root, "test/fixtures/peft_prompt_tuning_sentiment");

interface Dirs {
  registry: string;
  runs: string;
  data: string;
}

/** A job's directory (`<runs>/<job id>`) under `dir`. */
const JOB_DIR = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Every file under `dir` with its size: what "unchanged" compares. The job journal (`.jobs/`, the
 * service's record of its jobs, named by job id) and the jobs' TensorBoard event files
 * (`<job id>/tensorboard/`, kept after a job ends) are left out; `strayJournalNames()` checks
 * their names.
 */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (d === dir && e.name === ".jobs") continue;
      if (e.name === "tensorboard" && JOB_DIR.test(d.slice(dir.length + 1))) continue;
      if (e.isDirectory) await walk(p);
      else out.push(`${p.slice(dir.length)}:${(await Deno.lstat(p)).size}`);
    }
  };
  await walk(dir);
  return out.sort();
}

/**
 * Names in the job journal that are not a job id's record, and in the jobs' event file folders
 * that are not TensorBoard's `events.out.tfevents.<secs>.<host>.<pid>.<n>` (caller text must never
 * be one).
 */
async function strayJournalNames(runs: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(join(runs, ".jobs"))) {
      const record =
        /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(json|events\.jsonl)$/;
      // A record being replaced is written aside under a dot name first.
      if (!record.test(e.name) && !/^\.[0-9a-f-]{36}\.[0-9a-f-]{36}\.tmp$/.test(e.name)) {
        out.push(e.name);
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  for await (const job of Deno.readDir(runs)) {
    if (!JOB_DIR.test(job.name)) continue;
    try {
      for await (const e of Deno.readDir(join(runs, job.name, "tensorboard"))) {
        if (!/^events\.out\.tfevents\.\d{10}\.[A-Za-z0-9._-]+\.\d+\.\d+$/.test(e.name)) {
          out.push(`${job.name}/tensorboard/${e.name}`);
        }
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return out;
}

function trainRequest(over: Record<string, unknown> = {}): TrainRequest {
  const records = [["good", "positive"], ["bad", "negative"]].map(([sentence, label]) =>
    toStruct({ taskname: "sentiment", sentence, label })
  );
  return {
    config: {
      name: "hostile",
      newTasks: ["sentiment"],
      taskTemplates: [{ ...TEMPLATE, taskname: "sentiment" }],
      virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_PROMPT_TUNING",
      promptTuning: { initMethod: "INIT_METHOD_TEXT", initText: "sentiment" },
      optim: { lr: 0.01 },
      maxSteps: 1,
      maxEpochs: 1,
      globalBatchSize: 2,
      microBatchSize: 2,
      trainDs: { records },
      ...over,
    },
  };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** The status code name of a call ("OK" when it succeeded) and its message. */
async function outcome(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
    return { code: "OK", message: "" };
  } catch (e) {
    assert(e instanceof RpcCallError, `expected a gRPC status, got ${e}`);
    return { code: e.codeName, message: e.details };
  }
}

interface Case {
  name: string;
  /** `c` carries the token; `anon` does not. */
  call: (c: PromptLearningClient, d: Dirs, anon: PromptLearningClient) => Promise<unknown>;
  code: string;
  /** The message names this (field, file, line, limit). */
  names: string;
  /** What must not appear in the message (server paths, file contents). */
  never?: string[];
  /** Directories that must be as before the call. Default: all three. */
  unchanged?: (keyof Dirs)[];
}

const big = (n: number) => "word ".repeat(n);
const infer = (c: PromptLearningClient, r: Record<string, unknown>, o?: CallOptions) =>
  c.infer([{ task: "base", fields: { sentence: "x" }, maxNewTokens: 2, ...r }], o).then((rs) => {
    const e = rs[0].error;
    if (e) throw new RpcCallError(e.code, e.message, "Infer");
    return rs;
  });
const register = (c: PromptLearningClient, r: Record<string, unknown>) =>
  c.registerTask({ name: "t", template: TEMPLATE, table: TABLE, ...r });
const peftBytes = (configJson: string, weights: Uint8Array) => ({
  peft: { adapterConfigJson: Buffer.from(configJson), adapterSafetensors: Buffer.from(weights) },
});
const header = (json: string, claimed?: bigint) => {
  const body = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + body.length);
  new DataView(out.buffer).setBigUint64(0, claimed ?? BigInt(body.length), true);
  out.set(body, 8);
  return out;
};

const CASES: Case[] = [
  // Train: paths, configs, sizes
  {
    name: "Train dataset path climbing out of DATA_DIR",
    call: (c) => collect(c.train(trainRequest({ trainDs: { files: ["../../etc/passwd"] } }))),
    code: "INVALID_ARGUMENT",
    names: "model.data.train_ds[0]",
  },
  {
    name: "Train absolute dataset path",
    call: (c) => collect(c.train(trainRequest({ trainDs: { files: ["/etc/passwd"] } }))),
    code: "INVALID_ARGUMENT",
    names: "model.data.train_ds[0]",
  },
  {
    name: "Train dataset symlink inside DATA_DIR leading out",
    call: (c) => collect(c.train(trainRequest({ trainDs: { files: ["escape.jsonl"] } }))),
    code: "INVALID_ARGUMENT",
    names: "model.data.train_ds[0]",
  },
  {
    name: "Train on a private key file inside DATA_DIR (fails naming file:line only)",
    call: async (c) => {
      const events = await collect(c.train(trainRequest({ trainDs: { files: ["key.jsonl"] } })));
      const reason = events.at(-1)?.failed?.reason;
      if (reason) throw new RpcCallError(3, reason, "Train");
    },
    code: "INVALID_ARGUMENT",
    names: "key.jsonl:1: not valid JSON",
    never: ["PRIVATE", "MIIE", "/tmp/"],
  },
  {
    name: "Train name with ../ (never a path)",
    call: (c) => collect(c.train(trainRequest({ name: "../../escape" }))),
    code: "OK",
    names: "",
    unchanged: ["runs", "data"],
  },
  {
    name: "Train malformed YAML",
    call: (c) => collect(c.train({ configYaml: "model: [unclosed\n" })),
    code: "INVALID_ARGUMENT",
    names: "config_yaml: not valid YAML at line",
  },
  {
    name: "Train YAML alias to an unknown anchor",
    call: (c) => collect(c.train({ configYaml: "name: x\nmodel: *nowhere\n" })),
    code: "INVALID_ARGUMENT",
    names: "config_yaml",
  },
  {
    name: "Train YAML alias bomb",
    call: (c) =>
      collect(c.train({
        configYaml: ["a: &a [x,x,x,x,x,x,x,x,x]", "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]"]
          .concat(["c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]", "d: [*c,*c,*c,*c,*c,*c,*c,*c,*c]"])
          .join("\n"),
      })),
    code: "INVALID_ARGUMENT",
    names: "config_yaml",
  },
  {
    name: "Train interpolation fan-out bomb",
    call: (c) => {
      const lines = ['l5: "x"'];
      for (let i = 4; i >= 0; i--) lines.push(`l${i}: "${`\${l${i + 1}}`.repeat(30)}"`);
      return collect(c.train({ configYaml: `name: b\n${lines.join("\n")}\n` }));
    },
    code: "INVALID_ARGUMENT",
    names: "longer than",
  },
  {
    name: "Train a number key given as text (wrong type)",
    call: (c) =>
      collect(c.train({
        configYaml: [
          "name: x",
          "trainer: { max_steps: ten, max_epochs: 1 }",
          "model:",
          "  virtual_prompt_style: prompt-tuning",
          "  new_tasks: [sentiment]",
          "  task_templates:",
          "    - taskname: sentiment",
          '      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"',
          "      total_virtual_tokens: 2",
          "      virtual_token_splits: [2]",
          "      answer_field: label",
          "  prompt_tuning: { new_prompt_init_methods: [text], new_prompt_init_text: [x] }",
          "  optim: { name: fused_adam, lr: 0.01 }",
          "  data: { train_ds: [splits/sentiment_train.jsonl] }",
        ].join("\n"),
      })),
    code: "INVALID_ARGUMENT",
    names: "trainer.max_steps",
  },
  {
    name: "Train an inline record whose field is a number (wrong type)",
    call: async (c) => {
      const bad = toStruct({ taskname: "sentiment", sentence: 42, label: "positive" });
      const events = await collect(c.train(trainRequest({ trainDs: { records: [bad] } })));
      const reason = events.at(-1)?.failed?.reason;
      if (reason) throw new RpcCallError(3, reason, "Train");
    },
    code: "INVALID_ARGUMENT",
    names: 'field "sentence" of task "sentiment" must be a string: found number',
    never: ["42"],
  },
  {
    name: "Train config_yaml over 1 MiB",
    call: (c) => collect(c.train({ configYaml: `name: x\n# ${"y".repeat(1 << 20)}\n` })),
    code: "RESOURCE_EXHAUSTED",
    names: "config_yaml must be at most",
  },
  {
    name: "Train global_batch_size of 100000",
    call: (c) =>
      collect(c.train(trainRequest({ globalBatchSize: 100_000, microBatchSize: 100_000 }))),
    code: "RESOURCE_EXHAUSTED",
    names: "model.global_batch_size must be at most",
  },
  {
    name: "Train p-tuning encoder of 2^20 hidden units",
    call: (c) =>
      collect(c.train(trainRequest({
        virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_P_TUNING",
        pTuning: { encoderType: "ENCODER_TYPE_MLP", encoderHiddenSize: 1 << 20 },
      }))),
    code: "RESOURCE_EXHAUSTED",
    names: "model.p_tuning.encoder_hidden",
  },
  {
    name: "Train max_steps of 10^7",
    call: (c) => collect(c.train(trainRequest({ maxSteps: 10_000_000 }))),
    code: "RESOURCE_EXHAUSTED",
    names: "trainer.max_steps",
  },
  {
    name: "Train a task of 200 virtual tokens (unservable)",
    call: (c) =>
      collect(c.train(trainRequest({
        taskTemplates: [{
          ...TEMPLATE,
          taskname: "sentiment",
          totalVirtualTokens: 200,
          virtualTokenSplits: [200],
        }],
      }))),
    code: "INVALID_ARGUMENT",
    names: "max_virtual_tokens",
  },
  {
    name: "Train without a token",
    call: (_c, _d, anon) => collect(anon.train(trainRequest())),
    code: "UNAUTHENTICATED",
    names: "authorization",
  },
  // RegisterTask
  {
    name: "RegisterTask name with ../",
    call: (c) => register(c, { name: "../etc" }),
    code: "INVALID_ARGUMENT",
    names: "name must match",
  },
  {
    name: "RegisterTask NaN in the table",
    call: (c) => {
      const values = [...TABLE.values];
      values[7] = NaN;
      return register(c, { table: { ...TABLE, values } });
    },
    code: "INVALID_ARGUMENT",
    names: "must be finite",
  },
  {
    name: "RegisterTask rows x hidden mismatch",
    call: (c) => register(c, { table: { ...TABLE, values: [1, 2, 3] } }),
    code: "INVALID_ARGUMENT",
    names: "table.values must hold rows x hidden",
  },
  {
    name: "RegisterTask 200 virtual tokens (unservable)",
    call: (c) =>
      register(c, {
        template: { ...TEMPLATE, totalVirtualTokens: 200, virtualTokenSplits: [200] },
        table: { rows: 200, hidden: HIDDEN, values: table(200, HIDDEN) },
      }),
    code: "INVALID_ARGUMENT",
    names: "max_virtual_tokens",
  },
  {
    name: "RegisterTask PEFT config that is not JSON",
    call: (c) => register(c, { table: undefined, ...peftBytes("{oops", new Uint8Array(16)) }),
    code: "INVALID_ARGUMENT",
    names: "adapter_config.json",
  },
  {
    name: "RegisterTask PEFT safetensors header that is not JSON",
    call: async (c) =>
      register(c, {
        table: undefined,
        ...peftBytes(
          await Deno.readTextFile(join(PEFT, "adapter_config.json")),
          header("{nothdr}"),
        ),
      }),
    code: "INVALID_ARGUMENT",
    names: "header is not valid JSON",
  },
  {
    name: "RegisterTask PEFT safetensors header length past the bytes",
    call: async (c) =>
      register(c, {
        table: undefined,
        ...peftBytes(
          await Deno.readTextFile(join(PEFT, "adapter_config.json")),
          header("{}", 1n << 40n),
        ),
      }),
    code: "INVALID_ARGUMENT",
    names: "header length",
  },
  {
    name: "RegisterTask over MAX_MESSAGE_BYTES",
    call: (c) =>
      register(c, {
        template: { ...TEMPLATE, totalVirtualTokens: 128, virtualTokenSplits: [128] },
        table: { rows: 128, hidden: HIDDEN * 40, values: new Array(128 * HIDDEN * 40).fill(0.5) },
      }),
    code: "RESOURCE_EXHAUSTED",
    names: "",
  },
  {
    name: "RegisterTask create_only, six at once: one wins",
    call: async (c) => {
      const all = await Promise.allSettled(
        Array.from({ length: 6 }, () => register(c, { name: "once", createOnly: true })),
      );
      const won = all.filter((o) => o.status === "fulfilled").length;
      if (won !== 1) throw new Error(`${won} create_only registrations succeeded`);
      throw (all.find((o) => o.status === "rejected") as PromiseRejectedResult).reason;
    },
    code: "ALREADY_EXISTS",
    names: "create_only",
    unchanged: ["runs", "data"],
  },
  // Infer
  {
    name: "Infer a 2.5 MiB field",
    call: (c) => infer(c, { fields: { sentence: big(1 << 19) } }),
    code: "INVALID_ARGUMENT",
    names: "fields must hold at most",
  },
  {
    name: "Infer NaN top_p",
    call: (c) => infer(c, { sampling: { random: { temperature: 1, topP: NaN } } }),
    code: "INVALID_ARGUMENT",
    names: "top_p",
  },
  {
    name: "Infer sampling at temperature 0",
    call: (c) => infer(c, { sampling: { random: { temperature: 0 } } }),
    code: "INVALID_ARGUMENT",
    names: "temperature",
  },
  {
    name: "Infer infinite repetition_penalty",
    call: (c) => infer(c, { repetitionPenalty: Infinity }),
    code: "INVALID_ARGUMENT",
    names: "repetition_penalty",
  },
  {
    name: "Infer negative max_new_tokens",
    call: (c) => infer(c, { maxNewTokens: -5 }),
    code: "INVALID_ARGUMENT",
    names: "max_new_tokens",
  },
  {
    name: "Infer max_new_tokens past the server's limit",
    call: (c) => infer(c, { maxNewTokens: 100_000 }),
    code: "INVALID_ARGUMENT",
    names: "max_new_tokens limit",
  },
  {
    name: "Infer a task name with a path in it",
    call: (c) => infer(c, { task: "../../etc/passwd" }),
    code: "INVALID_ARGUMENT",
    names: "name must match",
  },
  {
    name: "Infer 65 requests in one call",
    call: (c) => c.infer(Array.from({ length: 65 }, () => ({ task: "base", fields: {} }))),
    code: "RESOURCE_EXHAUSTED",
    names: "max_infer_batch",
  },
  {
    name: "Infer a missing field of the template",
    call: (c) => infer(c, { fields: {} }),
    code: "INVALID_ARGUMENT",
    names: "sentence",
  },
  // Reads
  {
    name: "GetTask name with ../",
    call: (c) => c.getTask("../../x"),
    code: "INVALID_ARGUMENT",
    names: "name must match",
  },
  {
    name: "ListTasks page_token not ours",
    call: (c) => c.listTasks({ pageToken: "../../etc" }),
    code: "INVALID_ARGUMENT",
    names: "page_token",
  },
  {
    name: "ListJobs page_size 10^6",
    call: (c) => c.listJobs({ pageSize: 1_000_000 }),
    code: "INVALID_ARGUMENT",
    names: "page_size",
  },
  {
    name: "WatchJob an id of 4 KiB",
    call: (c) => collect(c.watchJob("j".repeat(4096))),
    code: "NOT_FOUND",
    names: "job_id",
    never: ["j".repeat(200)],
  },
  {
    name: "DeleteTask name with ../",
    call: (c) => c.deleteTask("../registry"),
    code: "INVALID_ARGUMENT",
    names: "name must match",
  },
];

function startServer(dirs: Dirs) {
  return startService({
    REGISTRY_DIR: dirs.registry,
    RUNS_DIR: dirs.runs,
    DATA_DIR: dirs.data,
    AUTH_TOKEN: TOKEN,
    MAX_MESSAGE_BYTES: String(4 << 20),
    SHUTDOWN_GRACE_MS: "5000",
  });
}

Deno.test({
  name: "hostile input against the real service process: status, message and directories",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const top = await Deno.makeTempDir({ prefix: "hostile-" });
    const dirs: Dirs = {
      registry: join(top, "registry"),
      runs: join(top, "runs"),
      data: join(top, "data"),
    };
    for (const d of Object.values(dirs)) await Deno.mkdir(d);
    const outside = join(top, "outside.jsonl");
    await Deno.writeTextFile(outside, '{"taskname": "sentiment"}\n');
    await Deno.symlink(outside, join(dirs.data, "escape.jsonl"));
    await Deno.writeTextFile(
      join(dirs.data, "key.jsonl"),
      "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n",
    );
    let server = await startServer(dirs);
    const { child, reader } = server;
    let client = new PromptLearningClient({ address: server.address, token: TOKEN });
    const anon = new PromptLearningClient({ address: server.address });
    const report: string[] = [];
    try {
      await client.waitForReady(10_000);
      await client.registerTask({ name: "base", template: TEMPLATE, table: TABLE });
      for (const c of CASES) {
        const before = await Promise.all(
          Object.values(dirs).map(async (d) => JSON.stringify(await snapshot(d))),
        );
        const t0 = performance.now();
        const got = await outcome(c.call(client, dirs, anon));
        const ms = Math.round(performance.now() - t0);
        report.push(`${c.name} | ${got.code} | ${ms} ms`);
        assertEquals(got.code, c.code, `${c.name}: ${got.message}`);
        if (c.names) assertStringIncludes(got.message, c.names, c.name);
        for (const n of [...(c.never ?? []), top]) {
          assert(!got.message.includes(n), `${c.name}: the message shows ${n}: ${got.message}`);
        }
        const after = await Promise.all(
          Object.values(dirs).map(async (d) => JSON.stringify(await snapshot(d))),
        );
        const keys = Object.keys(dirs) as (keyof Dirs)[];
        for (const k of c.unchanged ?? keys) {
          assertEquals(after[keys.indexOf(k)], before[keys.indexOf(k)], `${c.name}: ${k} changed`);
        }
      }
      assertEquals(await strayJournalNames(dirs.runs), [], "journal names are job ids only");
      // SIGKILL while a job trains: the restarted service serves the registry as it was (no
      // partial version) and takes the job back (it is durable); cancelled, its checkpoints go.
      const registryBefore = JSON.stringify(await snapshot(dirs.registry));
      const killed = client.train(
        trainRequest({ name: "killed", maxSteps: 100_000, maxEpochs: 100_000 }),
      );
      let killedId = "";
      for await (const e of killed) {
        killedId ||= e.jobId as string;
        if (e.event === "step") break;
      }
      child.kill("SIGKILL");
      await child.status;
      assertEquals(
        JSON.stringify(await snapshot(dirs.registry)),
        registryBefore,
        "registry after SIGKILL",
      );
      const second = await startServer(dirs);
      server = second;
      const c2 = new PromptLearningClient({ address: second.address, token: TOKEN });
      try {
        await c2.waitForReady(10_000);
        assertEquals((await c2.getTask("base")).version, 1);
        const resumed = await c2.getJob(killedId);
        assert(
          ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING"].includes(resumed.state as string),
          `the killed job is taken back: ${resumed.state}`,
        );
        await c2.cancelJob(killedId);
        for await (const _ of c2.watchJob(killedId, 0)) { /* to its cancelled event */ }
        assertEquals((await c2.getJob(killedId)).state, "JOB_STATE_CANCELLED");
        assertEquals(await snapshot(dirs.runs), [], "the cancelled job's checkpoints are cleared");
      } finally {
        c2.close();
      }
      report.push(
        `SIGKILL during a Train job, then restart | registry intact, job resumed, then cancelled and cleared | -`,
      );
      // SIGTERM while an Infer runs: it finishes, and the process exits 0 within the grace period.
      client.close();
      client = new PromptLearningClient({ address: server.address, token: TOKEN });
      // Connected first: on a loaded machine a fresh channel can take longer than the wait
      // below, and the SIGTERM would then refuse the call instead of finding it in flight.
      await client.waitForReady(10_000);
      const long = client.infer([{
        task: "base",
        fields: { sentence: "x" },
        maxNewTokens: 48,
        minNewTokens: 48,
      }]);
      await new Promise((r) => setTimeout(r, 200));
      const t0 = performance.now();
      server.child.kill("SIGTERM");
      const [r] = await long;
      const status = await server.child.status;
      const ms = Math.round(performance.now() - t0);
      report.push(`SIGTERM during an Infer | ${r.completion ? "OK" : r.error?.message} | ${ms} ms`);
      assertEquals(r.completion?.tokenIds.length, 48, "the in-flight Infer finished");
      assertEquals(status.code, 0);
      assert(ms < 5000 + 2000, `exited after ${ms} ms`);
      console.log(`\n${report.join("\n")}\n${report.length} cases`);
    } finally {
      client.close();
      anon.close();
      for (const s of new Set([child, server.child])) {
        try {
          s.kill("SIGKILL");
        } catch {
          // Already gone: the SIGKILL and SIGTERM cases stop them.
        }
        await s.status;
        await s.stderr.cancel().catch(() => {});
      }
      await reader.cancel();
      await server.reader.cancel().catch(() => {});
      await Deno.remove(top, { recursive: true });
    }
  },
});
