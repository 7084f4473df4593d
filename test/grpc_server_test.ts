/**
 * The gRPC layer over the real domain services (the shipped tiny model on the fast engine, the
 * in-memory store), through the typed client, on loopback.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type ClientOptions, PromptLearningClient, RpcCallError } from "../client/client.ts";
import type { TrainRequest } from "../proto/gen/promptlearning/v1/TrainRequest.ts";
import type { Interceptor } from "../server/rpc/call.ts";
import { createGrpcServer, type GrpcServerOptions } from "../server/rpc/server.ts";
import type { ServicesOptions } from "../server/services.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { rejectsWith } from "./support/rpc_assert.ts";
import {
  createTestServices,
  RECORDS,
  SENTIMENT_TEMPLATE,
  table,
  type TestServices,
  trainRequest,
} from "./support/test_service.ts";

interface Ctx {
  client: PromptLearningClient;
  port: number;
  services: TestServices;
}

async function withServer(
  opts: GrpcServerOptions & { services?: Partial<ServicesOptions> },
  fn: (ctx: Ctx) => Promise<void>,
  clientOpts: Omit<ClientOptions, "address"> = {},
) {
  const services = await createTestServices(opts.services);
  const server = createGrpcServer(services, { port: 0, shutdownGraceMs: 1000, ...opts });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}`, ...clientOpts });
  try {
    await fn({ client, port, services });
  } finally {
    client.close();
    await server.shutdown();
    await services.dispose();
  }
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function until(cond: () => boolean, what: string, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const PEFT_FIXTURE = new URL("./fixtures/peft_prompt_tuning_sentiment/", import.meta.url);
const HIDDEN = 256; // the shipped tiny model's n_embd
const TABLE = { rows: 2, hidden: HIDDEN, values: table(2, HIDDEN) };

Deno.test("Health.Check answers SERVING for the server and the service", async () => {
  await withServer({}, async ({ client }) => {
    assertEquals(await client.health(), "SERVING");
    assertEquals(await client.health("promptlearning.v1.PromptLearning"), "SERVING");
    await rejectsWith(client.health("nope.Service"), grpc.status.NOT_FOUND);
  });
});

Deno.test("the replica's role shows in health (inference, training) and a training replica refuses Infer", async () => {
  await withServer({}, async ({ client }) => {
    assertEquals(await client.health("inference"), "SERVING");
    assertEquals(await client.health("training"), "SERVING");
  });
  await withServer({ services: { role: "train" } }, async ({ client }) => {
    assertEquals(await client.health(), "SERVING");
    assertEquals(await client.health("inference"), "NOT_SERVING");
    assertEquals(await client.health("training"), "SERVING");
    const req = { task: "any", fields: { sentence: "x" } };
    await rejectsWith(client.infer([req]), grpc.status.UNAVAILABLE, "REPLICA_ROLE=train");
    await rejectsWith(collect(client.inferStream(req)), grpc.status.UNAVAILABLE, "only trains");
    // The rest of the API answers: tasks and jobs.
    assertEquals((await client.listTasks()).tasks.length, 0);
  });
  await withServer({ services: { role: "serve" } }, async ({ client }) => {
    assertEquals(await client.health("inference"), "SERVING");
    assertEquals(await client.health("training"), "NOT_SERVING");
  });
});

Deno.test("Train streams queued..completed (1, 2, 3, ...) and the job shows the progress the proto promises", async () => {
  await withServer({}, async ({ client }) => {
    const events = await collect(client.train(trainRequest()));
    assertEquals(events.map((e) => e.sequence), events.map((_, i) => i + 1));
    assertEquals(events.map((e) => e.event), [
      "queued",
      "started",
      "step",
      "step",
      "validation",
      "checkpoint",
      "checkpoint",
      "completed",
    ]);
    const started = events[1].started!;
    assertEquals([started.tasks, started.totalSteps, started.totalEpochs], [["sentiment"], 2, 1]);
    assertEquals(started.trainExamples, { sentiment: 6 });
    assertEquals(events[2].step!.totalSteps, 2);
    assertEquals(events[4].validation!.epoch, 0);
    const done = events.at(-1)!.completed!;
    assertEquals(done.written, [{ task: "sentiment", version: 1 }]);
    assertEquals([done.steps, done.earlyStopped], [2, false]);
    const job = await client.getJob(events[0].jobId);
    assertEquals(job.state, "JOB_STATE_SUCCEEDED");
    assertEquals(
      [job.step, job.totalSteps, job.epoch, job.totalEpochs, job.lastSequence],
      [2, 2, 0, 1, events.length],
    );
    assertEquals(job.written, [{ task: "sentiment", version: 1 }]);
    // The trained task is served at once.
    const [r] = await client.infer([{
      task: "sentiment",
      fields: { sentence: "fine" },
      maxNewTokens: 1,
    }]);
    assertEquals(r.completion!.taskVersion, 1);
  });
});

Deno.test("Train refuses bad configs at submission with INVALID_ARGUMENT naming the key and line", async () => {
  await withServer({}, async ({ client }) => {
    await rejectsWith(
      collect(
        client.train({
          config: { ...trainRequest().config!, trainDs: { files: ["../../etc/passwd"] } },
        }),
      ),
      grpc.status.INVALID_ARGUMENT,
      "model.data.train_ds[0]",
    );
    await rejectsWith(
      collect(client.train({ configYaml: "name: x\nmodel: [unclosed\n" })),
      grpc.status.INVALID_ARGUMENT,
      "not valid YAML at line",
    );
    // An alias to an unknown anchor: the YAML library throws a ReferenceError.
    await rejectsWith(
      collect(client.train({ configYaml: "name: x\nmodel: *nowhere\n" })),
      grpc.status.INVALID_ARGUMENT,
      "config_yaml",
    );
    await rejectsWith(
      collect(client.train({ configYaml: "name: invalid\n" })),
      grpc.status.INVALID_ARGUMENT,
      "model",
    );
    await rejectsWith(collect(client.train({})), grpc.status.INVALID_ARGUMENT, "config_yaml");
    // Keys naming server paths are the service's to choose: refused, never silently ignored.
    const yaml = (extra: string) =>
      [
        "trainer: { max_steps: 1 }",
        "model:",
        "  virtual_prompt_style: prompt-tuning",
        "  new_tasks: [sentiment]",
        "  task_templates:",
        '    - { taskname: sentiment, prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence}{label}", total_virtual_tokens: 2, virtual_token_splits: [2] }',
        "  data: { train_ds: [splits/sentiment_train.jsonl] }",
        "  optim: { lr: 0.1 }",
        extra,
      ].join("\n");
    for (
      const [extra, key] of [
        ["  restore_path: /srv/other-registry", "model.restore_path"],
        ["  nemo_path: /tmp/out.nemo", "model.nemo_path"],
        ["  language_model_path: /models/gpt2", "model.language_model_path"],
        ["exp_manager: { explicit_log_dir: /tmp/x }", "exp_manager.explicit_log_dir"],
      ]
    ) {
      await rejectsWith(
        collect(client.train({ configYaml: yaml(extra) })),
        grpc.status.INVALID_ARGUMENT,
        `${key} must be null for the service`,
      );
    }
    await rejectsWith(
      collect(client.train({ configYaml: yaml("") + "\n  unknown_key: 1" })),
      grpc.status.INVALID_ARGUMENT,
      "model.unknown_key is not a key of NeMo's prompt-learning configuration",
    );
    assertEquals((await client.listJobs()).jobs, []);
  });
});

Deno.test("Train reports the config keys that have no effect here once, in the Started event", async () => {
  await withServer({}, async ({ client }) => {
    const configYaml = [
      "trainer: { max_steps: 1, precision: 16, devices: 1, log_every_n_steps: 1 }",
      "model:",
      "  virtual_prompt_style: prompt-tuning",
      "  new_tasks: [sentiment]",
      "  task_templates:",
      '    - { taskname: sentiment, prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", total_virtual_tokens: 2, virtual_token_splits: [2], max_seq_length: 64 }',
      "  data: { num_workers: 8, pin_memory: true }",
      "  global_batch_size: 2",
      "  micro_batch_size: 2",
      "  optim: { lr: 0.1 }",
    ].join("\n");
    const events = await collect(
      client.train({ configYaml, extraTrainRecords: { records: RECORDS } }),
    );
    assertEquals(events.at(-1)!.event, "completed");
    const notes = events.find((e) => e.event === "started")!.started!.notes;
    assertEquals(notes.map((n) => n.split(" has no effect here")[0]), [
      "trainer.devices",
      "trainer.precision",
      "model.data.num_workers",
      "model.data.pin_memory",
    ]);
  });
});

Deno.test("Train sizes are bounded by the server's limits, refused at submission naming the key and the limit", async () => {
  await withServer({}, async ({ client }) => {
    const cases: [(r: TrainRequest) => void, string][] = [
      [(r) => {
        r.config!.globalBatchSize = 100_000;
        r.config!.microBatchSize = 100_000;
      }, "model.global_batch_size must be at most 256 (the server's max_train_batch_size)"],
      [(r) => r.config!.maxSteps = 10_000_000, "trainer.max_steps must be at most 100000"],
      [(r) => {
        r.config!.virtualPromptStyle = "VIRTUAL_PROMPT_STYLE_P_TUNING";
        r.config!.pTuning = { encoderType: "ENCODER_TYPE_MLP", encoderHiddenSize: 1 << 20 };
      }, "model.p_tuning.encoder_hidden must be at most 8192"],
    ];
    for (const [change, message] of cases) {
      const req = trainRequest();
      change(req);
      await rejectsWith(collect(client.train(req)), grpc.status.RESOURCE_EXHAUSTED, message);
    }
    // Epochs times steps per epoch is known once the data is read, which submission does too:
    // refused there, before a job exists (before, the job failed when it started).
    const req = trainRequest();
    req.config!.maxSteps = undefined;
    req.config!.maxEpochs = 1_000_000;
    await rejectsWith(
      collect(client.train(req)),
      grpc.status.RESOURCE_EXHAUSTED,
      "the run would take 2000000 steps",
      "max_train_steps",
    );
    assertEquals((await client.listJobs()).jobs, []);
  });
});

Deno.test("A Train whose dataset file is missing is refused at submission, naming the file", async () => {
  await withServer({}, async ({ client }) => {
    const req = trainRequest();
    req.config!.trainDs = { files: ["absent.jsonl"] };
    // Before, a job was queued and failed when it started.
    await rejectsWith(
      collect(client.train(req)),
      grpc.status.INVALID_ARGUMENT,
      "absent.jsonl: dataset file not found",
    );
    assertEquals((await client.listJobs()).jobs, []);
  });
});

Deno.test("WatchJob after N gives exactly the events after N, for any number of watchers", async () => {
  await withServer({}, async ({ client }) => {
    const stream = client.train(trainRequest({ maxSteps: 4 }));
    const live: number[] = [];
    let id = "";
    const watchers: Promise<number[]>[] = [];
    for await (const e of stream) {
      id = e.jobId;
      live.push(e.sequence);
      // Two watchers join while the job runs, each from a different point.
      if (e.sequence === 3) {
        watchers.push(collect(client.watchJob(id, 1)).then((x) => x.map((e) => e.sequence)));
        watchers.push(collect(client.watchJob(id, 3)).then((x) => x.map((e) => e.sequence)));
      }
    }
    const [a, b] = await Promise.all(watchers);
    assertEquals(a, live.slice(1));
    assertEquals(b, live.slice(3));
    // Once finished, the job keeps all its events, in order, by sequence.
    const after = await collect(client.watchJob(id, 0));
    assertEquals(after.map((e) => e.sequence), live);
    await rejectsWith(collect(client.watchJob("job-404")), grpc.status.NOT_FOUND, "job-404");
  });
});

Deno.test("CancelJob answers the state after the request; the second job's queue position counts the first", async () => {
  await withServer({}, async ({ client }) => {
    const first = client.train(trainRequest({ name: "long", maxSteps: 100_000 }));
    const second = client.train(trainRequest({ name: "next", maxSteps: 100_000 }));
    const seen: string[] = [];
    let firstId = "";
    for await (const e of first) {
      seen.push(e.event!);
      firstId = e.jobId;
      if (e.event === "step") break;
    }
    const queued = (await second.next()).value!;
    assertEquals(queued.queued!.position, 1);
    // The queued job is cancelled at once; the running one is cancelling until its step ends.
    assertEquals((await client.cancelJob(queued.jobId)).state, "JOB_STATE_CANCELLED");
    const running = await client.cancelJob(firstId);
    assert(
      ["JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"].includes(running.state),
      running.state,
    );
    const rest = await collect(client.watchJob(firstId, 0));
    assertEquals(rest.at(-1)!.event, "cancelled");
    assertEquals((await client.getJob(firstId)).state, "JOB_STATE_CANCELLED");
    assertEquals((await collect(second)).map((e) => e.event), ["cancelled"]);
    const jobs = await client.listJobs();
    assertEquals(jobs.jobs.map((j) => j.jobId), [queued.jobId, firstId]);
    assertEquals(seen.slice(0, 2), ["queued", "started"]);
  });
});

Deno.test("RegisterTask/GetTask/ListTasks/DeleteTask round trip with versions and paging", async () => {
  await withServer({}, async ({ client }) => {
    const t1 = await client.registerTask({
      name: "b-task",
      template: SENTIMENT_TEMPLATE,
      table: TABLE,
    });
    assertEquals([t1.name, t1.version, t1.versions, t1.source], ["b-task", 1, [1], "register"]);
    assertEquals(t1.template!.taskname, "b-task");
    const t2 = await client.registerTask({
      name: "b-task",
      template: SENTIMENT_TEMPLATE,
      table: TABLE,
    });
    assertEquals([t2.version, t2.versions], [2, [1, 2]]);
    const fixture = new URL("./fixtures/peft_prompt_tuning_sentiment/", import.meta.url);
    const a = await client.registerTask({
      name: "a-task",
      peft: {
        adapterConfigJson: Buffer.from(
          await Deno.readFile(new URL("adapter_config.json", fixture)),
        ),
        adapterSafetensors: Buffer.from(
          await Deno.readFile(new URL("adapter_model.safetensors", fixture)),
        ),
      },
    });
    assertEquals([a.source, a.totalVirtualTokens], ["peft_import", 10]);
    assertEquals((await client.getTask("b-task", 1)).version, 1);
    const p1 = await client.listTasks({ pageSize: 1 });
    assertEquals(p1.tasks.map((t) => t.name), ["a-task"]);
    const p2 = await client.listTasks({ pageSize: 1, pageToken: p1.nextPageToken });
    assertEquals([p2.tasks.map((t) => t.name), p2.nextPageToken], [["b-task"], ""]);
    assertEquals((await client.deleteTask("b-task")).versionsDeleted, [1, 2]);
    await rejectsWith(client.getTask("b-task"), grpc.status.NOT_FOUND, "b-task");
    await rejectsWith(client.deleteTask("b-task"), grpc.status.NOT_FOUND, "b-task");
  });
});

Deno.test("RegisterTask errors name the field: bad name, sizes, malformed adapter JSON and safetensors, exists", async () => {
  await withServer({}, async ({ client }) => {
    for (const name of ["../etc", "a/b", ".hidden", "", "x".repeat(65)]) {
      await rejectsWith(
        client.registerTask({ name, template: SENTIMENT_TEMPLATE, table: TABLE }),
        grpc.status.INVALID_ARGUMENT,
        "name must match",
      );
    }
    await rejectsWith(
      client.registerTask({
        name: "t",
        template: SENTIMENT_TEMPLATE,
        table: { ...TABLE, values: [1] },
      }),
      grpc.status.INVALID_ARGUMENT,
      `table.values must hold rows x hidden = 2 x ${HIDDEN} = ${2 * HIDDEN} values: found 1`,
    );
    await rejectsWith(
      client.registerTask({
        name: "t",
        template: SENTIMENT_TEMPLATE,
        table: { ...TABLE, hidden: 3, values: [1, 2, 3, 4, 5, 6] },
      }),
      grpc.status.INVALID_ARGUMENT,
      "table.hidden must equal the model's hidden size (256): found 3",
    );
    const nan = [...TABLE.values];
    nan[5] = NaN;
    await rejectsWith(
      client.registerTask({
        name: "t",
        template: SENTIMENT_TEMPLATE,
        table: { ...TABLE, values: nan },
      }),
      grpc.status.INVALID_ARGUMENT,
      "must be finite",
    );
    await rejectsWith(
      client.registerTask({ name: "t", template: SENTIMENT_TEMPLATE }),
      grpc.status.INVALID_ARGUMENT,
      "one of table or peft",
    );
    await rejectsWith(
      client.registerTask({
        name: "t",
        template: { ...SENTIMENT_TEMPLATE, taskname: "u" },
        table: TABLE,
      }),
      grpc.status.INVALID_ARGUMENT,
      "template.taskname",
    );
    // Malformed caller bytes are the caller's error, never INTERNAL.
    await rejectsWith(
      client.registerTask({
        name: "t",
        peft: { adapterConfigJson: Buffer.from("{not json"), adapterSafetensors: Buffer.from([1]) },
      }),
      grpc.status.INVALID_ARGUMENT,
      "not valid JSON",
    );
    const config = await Deno.readTextFile(new URL("adapter_config.json", PEFT_FIXTURE));
    const badHeader = new Uint8Array(16);
    new DataView(badHeader.buffer).setBigUint64(0, 8n, true);
    badHeader.set(new TextEncoder().encode("{nothdr}"), 8);
    await rejectsWith(
      client.registerTask({
        name: "t",
        peft: {
          adapterConfigJson: Buffer.from(config),
          adapterSafetensors: Buffer.from(badHeader),
        },
      }),
      grpc.status.INVALID_ARGUMENT,
      "header is not valid JSON",
    );
    await client.registerTask({
      name: "t",
      template: SENTIMENT_TEMPLATE,
      table: TABLE,
      createOnly: true,
    });
    await rejectsWith(
      client.registerTask({
        name: "t",
        template: SENTIMENT_TEMPLATE,
        table: TABLE,
        createOnly: true,
      }),
      grpc.status.ALREADY_EXISTS,
      "already exists",
    );
    await rejectsWith(
      client.listTasks({ pageSize: 5000 }),
      grpc.status.INVALID_ARGUMENT,
      "page_size",
    );
    await rejectsWith(
      client.listJobs({ pageToken: "nope" }),
      grpc.status.INVALID_ARGUMENT,
      "page_token",
    );
  });
});

Deno.test("Two concurrent create_only registrations: exactly one succeeds", async () => {
  await withServer({}, async ({ client }) => {
    const outcomes = await Promise.allSettled(
      Array.from(
        { length: 6 },
        () =>
          client.registerTask({
            name: "once",
            template: SENTIMENT_TEMPLATE,
            table: TABLE,
            createOnly: true,
          }),
      ),
    );
    assertEquals(outcomes.filter((o) => o.status === "fulfilled").length, 1);
    for (const o of outcomes) {
      if (o.status === "rejected") {
        assertEquals((o.reason as RpcCallError).codeName, "ALREADY_EXISTS");
      }
    }
    assertEquals((await client.getTask("once")).versions, [1]);
  });
});

Deno.test("Infer answers in order, mixing tasks of 2 and 5 virtual tokens, with per-item errors", async () => {
  await withServer({}, async ({ client }) => {
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    await client.registerTask({
      name: "five",
      template: { ...SENTIMENT_TEMPLATE, totalVirtualTokens: 5, virtualTokenSplits: [5] },
      table: { rows: 5, hidden: HIDDEN, values: table(5, HIDDEN, 2) },
    });
    const results = await client.infer([
      {
        task: "two",
        fields: { sentence: "good" },
        maxNewTokens: 3,
        minNewTokens: 3,
        returnLogprobs: true,
      },
      { task: "missing", fields: {} },
      { task: "five", fields: { sentence: "bad" }, maxNewTokens: 3, minNewTokens: 3 },
      { task: "bad/name", fields: {} },
      {
        task: "two",
        fields: { sentence: "ok" },
        sampling: { random: { temperature: 0.7, topP: NaN } },
      },
      { task: "two", fields: { sentence: "ok" }, sampling: { random: { topK: 5 } } },
      { task: "two", fields: { sentence: "ok" }, maxNewTokens: -3 },
    ]);
    assertEquals(results.map((r) => r.outcome), [
      "completion",
      "error",
      "completion",
      "error",
      "error",
      "error",
      "error",
    ]);
    const c0 = results[0].completion!;
    assertEquals([c0.tokenIds.length, c0.taskVersion, c0.logprobs.length], [3, 1, 3]);
    // Token texts come with the log-probs, from the serving path's own tokenizer.
    assertEquals(c0.logprobs.map((l) => l.tokenId), c0.tokenIds);
    if (c0.finishReason === "FINISH_REASON_LENGTH") {
      assertEquals(c0.logprobs.map((l) => l.text).join(""), c0.text);
    }
    assertEquals(results[1].error!.code, grpc.status.NOT_FOUND);
    assertMatch(results[1].error!.message, /^requests\[1\]: task "missing"/);
    assertEquals(results[2].completion!.tokenIds.length, 3);
    assertEquals(results[3].error!.code, grpc.status.INVALID_ARGUMENT);
    assertStringIncludes(results[3].error!.message, "requests[3]: name must match");
    assertStringIncludes(
      results[4].error!.message,
      "requests[4]: top_p must be a number in (0, 1]: found NaN",
    );
    assertStringIncludes(
      results[5].error!.message,
      "requests[5]: temperature must be a finite number > 0: found 0",
    );
    assertStringIncludes(
      results[6].error!.message,
      "requests[6]: max_new_tokens must be an integer >= 1: found -3",
    );
  });
});

Deno.test("Infer: one task alone equals the same task in a mixed batch; a seeded sample repeats", async () => {
  await withServer({}, async ({ client }) => {
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    const req = { task: "two", fields: { sentence: "the plot" }, maxNewTokens: 4 };
    const [alone] = await client.infer([req]);
    const mixed = await client.infer([{ ...req, fields: { sentence: "other" } }, req]);
    assertEquals(mixed[1].completion!.tokenIds, alone.completion!.tokenIds);
    const sampled = {
      ...req,
      sampling: { random: { temperature: 0.9, topK: 40, topP: 0.9, seed: 42 } },
    };
    const [s1] = await client.infer([sampled]);
    const [s2] = await client.infer([sampled, req]);
    assertEquals(s2.completion!.tokenIds, s1.completion!.tokenIds);
  });
});

Deno.test("Infer refuses an 8 MiB field at once, before tokenizing, and health answers meanwhile", async () => {
  await withServer({ maxReceiveMessageBytes: 32 << 20 }, async ({ client }) => {
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    const t0 = performance.now();
    const big = client.infer([{ task: "two", fields: { sentence: "word ".repeat(8 << 18) } }]);
    assertEquals(await client.health(), "SERVING");
    const [r] = await big;
    const took = performance.now() - t0;
    assertEquals(r.error!.code, grpc.status.INVALID_ARGUMENT);
    assertStringIncludes(r.error!.message, "fields must hold at most");
    assert(took < 3000, `refused after ${Math.round(took)} ms`);
  });
});

Deno.test("Infer refuses an oversized batch with RESOURCE_EXHAUSTED naming the limit", async () => {
  await withServer({ services: { maxInferBatch: 2 } }, async ({ client }) => {
    const req = { task: "t", fields: {} };
    await rejectsWith(
      client.infer([req, req, req]),
      grpc.status.RESOURCE_EXHAUSTED,
      "max_infer_batch",
    );
    await rejectsWith(client.infer([]), grpc.status.INVALID_ARGUMENT, "at least one");
  });
});

Deno.test("A deadline stops the work and the call ends DEADLINE_EXCEEDED; ended calls are never aborted", async () => {
  const signals = new Map<string, AbortSignal>();
  const record: Interceptor = (next) => (req) => {
    signals.set(req.ctx.method, req.ctx.signal);
    return next(req);
  };
  await withServer({ interceptors: [record] }, async ({ client, services }) => {
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    await client.listTasks({});
    await rejectsWith(
      client.infer([{
        task: "two",
        fields: { sentence: "x" },
        maxNewTokens: 256,
        minNewTokens: 256,
      }], { deadline: 50 }),
      grpc.status.DEADLINE_EXCEEDED,
    );
    await until(() => !services.scheduler.busy, "the scheduler to drop the request");
    const infer = signals.get("Infer")!;
    assert(infer.aborted);
    assertEquals((infer.reason as DOMException).name, "TimeoutError");
    // grpc-js reports every call as cancelled once its status is sent: ended calls stay as they were.
    for (const m of ["RegisterTask", "ListTasks"]) {
      assertEquals(signals.get(m)?.aborted, false, m);
    }
  });
});

Deno.test("InferStream yields tokens then done naming the version; cancelling stops the work", async () => {
  await withServer({}, async ({ client, services }) => {
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    const events = await collect(
      client.inferStream({
        task: "two",
        version: 1,
        fields: { sentence: "x" },
        maxNewTokens: 3,
        minNewTokens: 3,
      }),
    );
    assertEquals(events.map((e) => e.event), ["token", "token", "token", "done"]);
    assertEquals(events[3].done!.taskVersion, 1);
    const ac = new AbortController();
    const seen: string[] = [];
    try {
      for await (
        const e of client.inferStream(
          { task: "two", fields: { sentence: "y" }, maxNewTokens: 256, minNewTokens: 256 },
          { signal: ac.signal },
        )
      ) {
        seen.push(e.event!);
        ac.abort();
      }
    } catch (e) {
      assert(e instanceof RpcCallError && e.codeName === "CANCELLED", String(e));
    }
    // Tokens already on the wire may still arrive; the stream never completes.
    assert(seen.length >= 1 && !seen.includes("done"), seen.join(","));
    await until(() => !services.scheduler.busy, "the scheduler to drop the cancelled stream");
    await rejectsWith(
      collect(client.inferStream({ task: "missing", fields: {} })),
      grpc.status.NOT_FOUND,
    );
  });
});

Deno.test("A bug is INTERNAL with a reference, never its internals", async () => {
  await withServer({}, async ({ client, services }) => {
    const store = services.runtime.store;
    store.describe = () => Promise.reject(new TypeError("secret detail at /srv/internal/path"));
    const [r] = await client.infer([{ task: "any", fields: {} }]);
    assertEquals(r.error!.code, grpc.status.INTERNAL);
    assert(!r.error!.message.includes("secret"), r.error!.message);
    assertMatch(
      r.error!.message,
      /internal error: a bug in the service; the server log has the details under [0-9a-f]{8}/,
    );
    const e = await rejectsWith(client.getTask("any"), grpc.status.INTERNAL);
    assert(!e.details.includes("/srv/internal"), e.details);
  });
});

Deno.test("With a token, mutating calls need it (UNAUTHENTICATED) and reads do not", async () => {
  await withServer({ authToken: "s3cret" }, async ({ client, port }) => {
    await rejectsWith(
      client.registerTask({ name: "t", template: SENTIMENT_TEMPLATE, table: TABLE }),
      grpc.status.UNAUTHENTICATED,
      "authorization",
    );
    await rejectsWith(
      collect(client.train({ configYaml: "name: x" })),
      grpc.status.UNAUTHENTICATED,
    );
    await rejectsWith(client.cancelJob("job-1"), grpc.status.UNAUTHENTICATED);
    await rejectsWith(client.deleteTask("t"), grpc.status.UNAUTHENTICATED);
    assertEquals((await client.listTasks()).tasks, []);
    const wrong = new PromptLearningClient({ address: `127.0.0.1:${port}`, token: "nope" });
    const right = new PromptLearningClient({ address: `127.0.0.1:${port}`, token: "s3cret" });
    try {
      await rejectsWith(
        wrong.registerTask({ name: "t", template: SENTIMENT_TEMPLATE, table: TABLE }),
        grpc.status.UNAUTHENTICATED,
        "not valid",
      );
      assertEquals(
        (await right.registerTask({ name: "t", template: SENTIMENT_TEMPLATE, table: TABLE }))
          .version,
        1,
      );
    } finally {
      wrong.close();
      right.close();
    }
  });
});

Deno.test("With AUTH_READS, reads need the token too; health stays open for probes", async () => {
  await withServer({ authToken: "s3cret", authReads: true }, async ({ client, port }) => {
    await rejectsWith(client.infer([{ task: "t", fields: {} }]), grpc.status.UNAUTHENTICATED);
    await rejectsWith(client.listTasks(), grpc.status.UNAUTHENTICATED);
    await rejectsWith(client.getJob("x"), grpc.status.UNAUTHENTICATED);
    await rejectsWith(collect(client.watchJob("x")), grpc.status.UNAUTHENTICATED);
    assertEquals(await client.health(), "SERVING");
    const right = new PromptLearningClient({ address: `127.0.0.1:${port}`, token: "s3cret" });
    try {
      assertEquals((await right.listTasks()).tasks, []);
    } finally {
      right.close();
    }
  });
});

Deno.test("RegisterTask and Train refuse what serving would refuse, in serving's words", async () => {
  await withServer({}, async ({ client }) => {
    const rows = 200;
    await rejectsWith(
      client.registerTask({
        name: "huge",
        template: { ...SENTIMENT_TEMPLATE, totalVirtualTokens: rows, virtualTokenSplits: [rows] },
        table: { rows, hidden: HIDDEN, values: table(rows, HIDDEN) },
      }),
      grpc.status.INVALID_ARGUMENT,
      "total_virtual_tokens must be in [1, 128] (the server's max_virtual_tokens): found 200",
    );
    await rejectsWith(client.getTask("huge"), grpc.status.NOT_FOUND);
    const req = trainRequest();
    req.config!.taskTemplates = [{
      ...SENTIMENT_TEMPLATE,
      taskname: "sentiment",
      totalVirtualTokens: rows,
      virtualTokenSplits: [rows],
    }];
    await rejectsWith(
      collect(client.train(req)),
      grpc.status.INVALID_ARGUMENT,
      "total_virtual_tokens must be in [1, 128] (the server's max_virtual_tokens): found 200",
    );
  });
});

Deno.test("Train: a run's name never becomes a path, and its checkpoints go when it ends", async () => {
  await withServer({}, async ({ client, services }) => {
    const runsDir = services.runsDir;
    const ids: string[] = [];
    for (const name of ["../escape", "/tmp/absolute-run", ""]) {
      const events = await collect(client.train(trainRequest({ name })));
      assertEquals(events.at(-1)!.event, "completed", JSON.stringify(events.at(-1)));
      ids.push(events[0].jobId as string);
    }
    // Each job's directory keeps only its TensorBoard event files (until the job is forgotten).
    assertEquals([...Deno.readDirSync(runsDir)].map((e) => e.name).sort(), ids.sort());
    for (const id of ids) {
      assertEquals([...Deno.readDirSync(join(runsDir, id))].map((e) => e.name), ["tensorboard"]);
    }
    assertEquals(
      [...Deno.readDirSync(join(runsDir, ".."))].some((e) => e.name === "escape"),
      false,
    );
  });
});

Deno.test("Train: dataset paths stay inside DATA_DIR, symbolic links included; errors name no server path or file content", async () => {
  await withServer({}, async ({ client, services }) => {
    const outside = await Deno.makeTempFile();
    await Deno.writeTextFile(outside, "root:x:0:0:root:/root:/bin/bash\n");
    try {
      await Deno.symlink(outside, join(services.dataDir, "link.jsonl"));
      const req = trainRequest();
      req.config!.trainDs = { files: ["link.jsonl"] };
      await rejectsWith(
        collect(client.train(req)),
        grpc.status.INVALID_ARGUMENT,
        "model.data.train_ds[0]",
      );
      // A bad file inside DATA_DIR: refused at submission naming file, line and reason only.
      await Deno.writeTextFile(
        join(services.dataDir, "secret.jsonl"),
        "-----BEGIN PRIVATE KEY-----\nMIIEv\n",
      );
      req.config!.trainDs = { files: ["secret.jsonl"] };
      const refused = await rejectsWith(collect(client.train(req)), grpc.status.INVALID_ARGUMENT);
      const reason = refused.details;
      assertStringIncludes(reason, "secret.jsonl:1: not valid JSON");
      assert(!reason.includes("BEGIN") && !reason.includes("MIIEv"), reason);
      assert(!reason.includes(services.dataDir), reason);
    } finally {
      await Deno.remove(outside);
    }
  });
});

Deno.test("HTTP/2: an idle connection is closed by the server after max_connection_idle_ms", async () => {
  const services = await createTestServices();
  const server = createGrpcServer(services, { port: 0, http2: { maxConnectionIdleMs: 300 } });
  const { port } = await server.start();
  // A bare HTTP/2 client (preface and SETTINGS, then nothing): a grpc-js client in this process
  // would meet denoland/deno#36788 when the server's GOAWAY reaches it (the process aborts in
  // nghttp2's find_stream_on_goaway_func), which says nothing about this server.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const settings = Uint8Array.of(0, 0, 0, 0x4, 0, 0, 0, 0, 0); // empty SETTINGS, stream 0
    await conn.write(new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    await conn.write(settings);
    await until(() => server.stats().connectionsOpen === 1, "the connection to open", 5000);
    // Read until the server closes: its frames must include a GOAWAY (type 0x7).
    const received: number[] = [];
    const buf = new Uint8Array(4096);
    // A server that never closes it fails here instead of hanging the test.
    const guard = setTimeout(() => conn.close(), 5000);
    for (let n; (n = await conn.read(buf)) !== null;) received.push(...buf.subarray(0, n));
    clearTimeout(guard);
    const types: number[] = [];
    for (let at = 0; at + 9 <= received.length;) {
      const length = (received[at] << 16) | (received[at + 1] << 8) | received[at + 2];
      types.push(received[at + 3]);
      at += 9 + length;
    }
    assert(types.includes(0x7), `frame types from the server: ${types}`);
    conn.close(); // as a client does once the server has said goodbye
    await until(() => server.stats().connectionsOpen === 0, "the idle connection to close", 5000);
  } finally {
    try {
      conn.close();
    } catch { /* closed already */ }
    await server.shutdown();
    await services.dispose();
  }
});

Deno.test("A message over the size limit is refused with RESOURCE_EXHAUSTED", async () => {
  await withServer({ maxReceiveMessageBytes: 1024 }, async ({ client }) => {
    await rejectsWith(
      client.registerTask({ name: "t", template: SENTIMENT_TEMPLATE, table: TABLE }),
      grpc.status.RESOURCE_EXHAUSTED,
    );
  });
});

Deno.test("Server reflection lists the services (v1 and v1alpha)", async () => {
  await withServer({}, async ({ port }) => {
    const root = fileURLToPath(
      new URL("../node_modules/@grpc/reflection/build/proto/", import.meta.url),
    );
    for (const version of ["v1", "v1alpha"]) {
      const def = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, {
        includeDirs: [root],
      });
      const pkg = grpc.loadPackageDefinition(def) as unknown as {
        grpc: { reflection: Record<string, { ServerReflection: grpc.ServiceClientConstructor }> };
      };
      const c = new pkg.grpc.reflection[version].ServerReflection(
        `127.0.0.1:${port}`,
        grpc.credentials.createInsecure(),
      );
      const call = (c as unknown as {
        ServerReflectionInfo(): grpc.ClientDuplexStream<
          unknown,
          { listServicesResponse?: { service: { name: string }[] } }
        >;
      }).ServerReflectionInfo();
      const names = await new Promise<string[]>((resolve, reject) => {
        call.on("data", (msg: { listServicesResponse?: { service: { name: string }[] } }) => {
          resolve((msg.listServicesResponse?.service ?? []).map((s) => s.name));
          call.end();
        });
        call.on("error", reject);
        call.write({ listServices: "*" });
      });
      c.close();
      assert(names.includes("promptlearning.v1.PromptLearning"), names.join(","));
      assert(names.includes("grpc.health.v1.Health"), names.join(","));
    }
  });
});

Deno.test("shutdown() goes NOT_SERVING, cancels calls still running after the grace period, refuses new connections", async () => {
  const services = await createTestServices();
  const server = createGrpcServer(services, { port: 0, shutdownGraceMs: 300 });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  try {
    assertEquals(await client.health(), "SERVING");
    const watch = client.watchHealth("");
    assertEquals((await watch.next()).value, "SERVING");
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    const stream = client.inferStream({
      task: "two",
      fields: { sentence: "x" },
      maxNewTokens: 256,
      minNewTokens: 256,
    });
    const first = await stream.next();
    assertEquals(first.value?.event, "token");
    const rest = collect(stream).then(() => "ended", (e) => e);
    const told = watch.next();
    await server.shutdown();
    // Health said NOT_SERVING before the server went away.
    assertEquals((await told).value, "NOT_SERVING");
    const err = await rest;
    assert(err instanceof RpcCallError, String(err));
    await until(() => !services.scheduler.busy, "the scheduler to drop the cut stream");
  } finally {
    client.close();
  }
  const late = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  try {
    await late.health("", { deadline: 1000 });
    throw new Error("a connection after shutdown was accepted");
  } catch (e) {
    assert(
      e instanceof RpcCallError && /UNAVAILABLE|DEADLINE_EXCEEDED/.test(e.codeName),
      String(e),
    );
  } finally {
    late.close();
    await services.dispose();
  }
});

Deno.test("shutdown drains: in-flight Infer finishes, job streams get a final event, new calls are refused, all within the grace period", async () => {
  const services = await createTestServices();
  const server = createGrpcServer(services, { port: 0 });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  try {
    await client.registerTask({ name: "two", template: SENTIMENT_TEMPLATE, table: TABLE });
    const job = client.train(trainRequest({ name: "long", maxSteps: 100_000 }));
    const jobEvents: string[] = [];
    for await (const e of job) {
      jobEvents.push(e.event!);
      if (e.event === "step") break;
    }
    const jobId = (await client.listJobs()).jobs[0].jobId;
    const watching = collect(client.watchJob(jobId, 0));
    const infer = client.infer([{
      task: "two",
      fields: { sentence: "x" },
      maxNewTokens: 64,
      minNewTokens: 64,
    }]);
    const healthWatch = collect(client.watchHealth("")).catch((e) => e);
    await until(() => services.scheduler.busy, "the Infer to start");
    const t0 = performance.now();
    const stopping = server.shutdown({ graceMs: 5000, drain: () => services.close() });
    const late = new PromptLearningClient({ address: `127.0.0.1:${port}` });
    try {
      await rejectsWith(late.listTasks({}, { deadline: 2000 }), grpc.status.UNAVAILABLE);
    } finally {
      late.close();
    }
    const [r] = await infer;
    assertEquals(r.completion!.tokenIds.length, 64, "the in-flight Infer finished");
    const watched = await watching;
    assertEquals(watched.at(-1)!.event, "cancelled", "the WatchJob stream got a final event");
    await stopping;
    const took = performance.now() - t0;
    assert(took < 5000, `shutdown took ${took} ms`);
    await healthWatch; // cut at the end (the health Watch never ends by itself)
  } finally {
    client.close();
    await services.dispose();
  }
});

Deno.test("TLS: with a certificate and key the server speaks TLS (ALPN h2)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const gen = await new Deno.Command("openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
      ],
      stderr: "null",
    }).output().catch(() => null);
    // openssl is part of the CI image; a missing one fails the test rather than skipping it.
    assert(gen?.success, "openssl could not make a test certificate (apt-get install openssl)");
    const cert = await Deno.readTextFile(`${dir}/cert.pem`);
    const key = await Deno.readTextFile(`${dir}/key.pem`);
    await withServer({ tls: { cert, key } }, async ({ client }) => {
      assertEquals(await client.health(), "SERVING");
      await client.registerTask({ name: "t", template: SENTIMENT_TEMPLATE, table: TABLE });
      const r = await client.infer([{ task: "t", fields: { sentence: "b" }, maxNewTokens: 2 }]);
      assertEquals(r[0].completion!.tokenIds.length, 2);
    }, {
      tls: cert,
      // Node's TLS refuses an IP address as SNI server name: name the certificate's host.
      channelOptions: { "grpc.ssl_target_name_override": "localhost" },
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
