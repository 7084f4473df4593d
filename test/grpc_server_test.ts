/**
 * The gRPC layer against in-memory fake ports, through the typed client, on loopback.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import { type ClientOptions, PromptLearningClient, RpcCallError } from "../client/client.ts";
import { createGrpcServer, type GrpcServerOptions } from "../server/rpc/server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { createFakePorts } from "./grpc_fakes_test.ts";

async function withServer(
  opts: GrpcServerOptions,
  fn: (
    client: PromptLearningClient,
    port: number,
    log: ReturnType<typeof createFakePorts>["log"],
  ) => Promise<void>,
  clientOpts: Omit<ClientOptions, "address"> = {},
) {
  const { ports, log } = createFakePorts();
  const server = createGrpcServer(ports, { port: 0, shutdownGraceMs: 1000, ...opts });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}`, ...clientOpts });
  try {
    await fn(client, port, log);
  } finally {
    client.close();
    await server.shutdown();
  }
}

async function rejectsWith(p: Promise<unknown>, code: grpc.status, includes?: string) {
  try {
    await p;
  } catch (e) {
    assert(e instanceof RpcCallError, `expected RpcCallError, got ${e}`);
    assertEquals(e.codeName, grpc.status[code]);
    if (includes) assertStringIncludes(e.details, includes);
    return e;
  }
  throw new Error(`expected ${grpc.status[code]}, the call succeeded`);
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

const TEMPLATE = {
  promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  promptTemplateFields: ["sentence", "label"],
  totalVirtualTokens: 2,
  virtualTokenSplits: [2],
  answerField: "label",
};

Deno.test("Health.Check answers SERVING for the server and the service", async () => {
  await withServer({}, async (client) => {
    assertEquals(await client.health(), "SERVING");
    assertEquals(await client.health("promptlearning.v1.PromptLearning"), "SERVING");
    await rejectsWith(client.health("nope.Service"), grpc.status.NOT_FOUND);
  });
});

Deno.test("Train streams queued..completed with sequence numbers 1, 2, 3, ...", async () => {
  await withServer({}, async (client, _port, log) => {
    const events = await collect(
      client.train({ config: { name: "run", newTasks: ["sentiment"], taskTemplates: [] } }),
    );
    assertEquals(events.map((e) => e.event), [
      "queued",
      "started",
      "step",
      "step",
      "step",
      "validation",
      "checkpoint",
      "completed",
    ]);
    assertEquals(events.map((e) => e.sequence), [1, 2, 3, 4, 5, 6, 7, 8]);
    const step = events[2].step!;
    assertEquals([step.step, step.loss, step.tokensPerSecond, step.etaSeconds], [1, 2, 1000, 2]);
    assertEquals(events[5].validation!.metrics.sentiment.values.accuracy, 0.8);
    assertEquals(events[7].completed!.written, [{ task: "sentiment", version: 1 }]);
    const src = log.submissions[0].source;
    assert(src.kind === "object");
    assertEquals((src.config.model as Record<string, unknown>).new_tasks, ["sentiment"]);
  });
});

Deno.test("Train maps the structured config onto NeMo's YAML keys", async () => {
  await withServer({}, async (client, _port, log) => {
    await collect(client.train({
      config: {
        name: "run",
        taskTemplates: [{ ...TEMPLATE, taskname: "sentiment", maxSeqLength: 128 }],
        newTasks: ["sentiment"],
        virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_P_TUNING",
        pTuning: { encoderType: "ENCODER_TYPE_LSTM", numLayers: 2 },
        optim: { lr: 0.01, sched: { name: "cosine", warmupSteps: 5 } },
        maxEpochs: 2,
        globalBatchSize: 8,
        trainDs: {
          files: ["data/sentiment/train.jsonl"],
          records: [{ fields: { taskname: { stringValue: "sentiment" } } }],
        },
      },
    }));
    const sub = log.submissions[0];
    assert(sub.source.kind === "object");
    const c = sub.source.config as {
      name: string;
      trainer: Record<string, unknown>;
      model: Record<string, unknown> & { data: Record<string, unknown> };
    };
    assertEquals(c.name, "run");
    assertEquals(c.trainer.max_epochs, 2);
    assertEquals(c.model.virtual_prompt_style, "p-tuning");
    assertEquals(c.model.p_tuning, { encoder_type: "lstm", num_layers: 2 });
    assertEquals(c.model.optim, { lr: 0.01, sched: { name: "cosine", warmup_steps: 5 } });
    assertEquals(c.model.global_batch_size, 8);
    assertEquals(c.model.data.train_ds, ["data/sentiment/train.jsonl"]);
    assertEquals((c.model.task_templates as Record<string, unknown>[])[0].max_seq_length, 128);
    assertEquals(sub.inlineRecords.train, [{ taskname: "sentiment" }]);
  });
});

Deno.test("Train refuses dataset paths that climb out of the data directory", async () => {
  await withServer({}, async (client) => {
    await rejectsWith(
      collect(client.train({ config: { name: "r", trainDs: { files: ["../../etc/passwd"] } } })),
      grpc.status.INVALID_ARGUMENT,
      "config.train_ds.files[0]",
    );
  });
});

Deno.test("Train with config_yaml passes the text; a domain RangeError is INVALID_ARGUMENT", async () => {
  await withServer({}, async (client, _port, log) => {
    const events = await collect(client.train({ configYaml: "name: fail\nmodel: {}\n" }));
    assertEquals(events.at(-1)!.failed!.reason, "loss is NaN at step 1");
    assertEquals(log.submissions[0].source, { kind: "yaml", text: "name: fail\nmodel: {}\n" });
    await rejectsWith(
      collect(client.train({ configYaml: "name: invalid\n" })),
      grpc.status.INVALID_ARGUMENT,
      "model.new_tasks",
    );
    await rejectsWith(collect(client.train({})), grpc.status.INVALID_ARGUMENT, "config_yaml");
  });
});

Deno.test("WatchJob after N gives exactly the events after N, for any number of watchers", async () => {
  await withServer({}, async (client) => {
    const all = await collect(client.train({ configYaml: "name: ok\n" }));
    const id = all[0].jobId;
    const [a, b] = await Promise.all([
      collect(client.watchJob(id, 3)),
      collect(client.watchJob(id, 6)),
    ]);
    assertEquals(a.map((e) => e.sequence), [4, 5, 6, 7, 8]);
    assertEquals(b.map((e) => e.sequence), [7, 8]);
    await rejectsWith(collect(client.watchJob("job-404")), grpc.status.NOT_FOUND, "job-404");
    await rejectsWith(
      collect(client.watchJob("../../x")),
      grpc.status.INVALID_ARGUMENT,
      "job_id must match",
    );
  });
});

Deno.test("CancelJob ends a running job's stream with a cancelled event", async () => {
  await withServer({}, async (client) => {
    const stream = client.train({ configYaml: "name: hold\n" });
    const seen: string[] = [];
    let jobId = "";
    for await (const e of stream) {
      seen.push(e.event!);
      jobId = e.jobId;
      if (e.event === "started") {
        const job = await client.cancelJob(jobId);
        assertEquals(job.state, "JOB_STATE_CANCELLED");
      }
    }
    assertEquals(seen, ["queued", "started", "cancelled"]);
    const job = await client.getJob(jobId);
    assertEquals(job.state, "JOB_STATE_CANCELLED");
    const jobs = await client.listJobs();
    assertEquals(jobs.jobs.map((j) => j.jobId), [jobId]);
  });
});

Deno.test("RegisterTask/GetTask/ListTasks/DeleteTask round trip with versions and paging", async () => {
  await withServer({}, async (client, _port, log) => {
    const table = { rows: 2, hidden: 3, values: [1, 2, 3, 4, 5, 6] };
    const t1 = await client.registerTask({ name: "b-task", template: TEMPLATE, table });
    assertEquals([t1.name, t1.version, t1.versions], ["b-task", 1, [1]]);
    assertEquals(t1.template!.taskname, "b-task");
    const t2 = await client.registerTask({ name: "b-task", template: TEMPLATE, table });
    assertEquals([t2.version, t2.versions], [2, [1, 2]]);
    const reg = log.registered[0];
    assert(reg.source.kind === "table");
    assertEquals([...reg.source.values], [1, 2, 3, 4, 5, 6]);
    await client.registerTask({
      name: "a-task",
      peft: {
        adapterConfigJson: new TextEncoder().encode("{}") as Buffer,
        adapterSafetensors: new Uint8Array([1, 2]) as Buffer,
      },
    });
    assertEquals((await client.getTask("b-task", 1)).version, 1);
    const p1 = await client.listTasks({ pageSize: 1 });
    assertEquals(p1.tasks.map((t) => t.name), ["a-task"]);
    const p2 = await client.listTasks({ pageSize: 1, pageToken: p1.nextPageToken });
    assertEquals([p2.tasks.map((t) => t.name), p2.nextPageToken], [["b-task"], ""]);
    assertEquals((await client.deleteTask("b-task")).versionsDeleted, [1, 2]);
    await rejectsWith(client.getTask("b-task"), grpc.status.NOT_FOUND, "b-task");
  });
});

Deno.test("RegisterTask errors name the field: bad name, size mismatch, missing source, exists", async () => {
  await withServer({}, async (client) => {
    const table = { rows: 2, hidden: 2, values: [1, 2, 3, 4] };
    for (const name of ["../etc", "a/b", ".hidden", "", "x".repeat(65)]) {
      await rejectsWith(
        client.registerTask({ name, template: TEMPLATE, table }),
        grpc.status.INVALID_ARGUMENT,
        "name must match",
      );
    }
    await rejectsWith(
      client.registerTask({ name: "t", template: TEMPLATE, table: { ...table, values: [1] } }),
      grpc.status.INVALID_ARGUMENT,
      "table.values must hold rows x hidden = 2 x 2 = 4 values: found 1",
    );
    await rejectsWith(
      client.registerTask({ name: "t", template: TEMPLATE }),
      grpc.status.INVALID_ARGUMENT,
      "one of table or peft",
    );
    await rejectsWith(
      client.registerTask({ name: "t", template: { ...TEMPLATE, taskname: "u" }, table }),
      grpc.status.INVALID_ARGUMENT,
      "template.taskname",
    );
    await client.registerTask({ name: "t", template: TEMPLATE, table, createOnly: true });
    await rejectsWith(
      client.registerTask({ name: "t", template: TEMPLATE, table, createOnly: true }),
      grpc.status.ALREADY_EXISTS,
      "already exists",
    );
    await rejectsWith(
      client.listTasks({ pageSize: 5000 }),
      grpc.status.INVALID_ARGUMENT,
      "page_size",
    );
  });
});

Deno.test("Infer answers in order, mixing tasks, with per-item errors", async () => {
  await withServer({}, async (client, _port, log) => {
    const results = await client.infer([
      { task: "sentiment", fields: { sentence: "good" }, returnLogprobs: true },
      { task: "missing", fields: {} },
      { task: "squad", fields: { q: "who", c: "ctx" }, stop: ["CTX"] },
      { task: "bad/name", fields: {} },
      { task: "intent", fields: { u: "a b c" }, maxNewTokens: 2 },
    ]);
    assertEquals(results.map((r) => r.outcome), [
      "completion",
      "error",
      "completion",
      "error",
      "completion",
    ]);
    const c0 = results[0].completion!;
    assertEquals([c0.text, c0.finishReason], ["SENTIMENT GOOD", "FINISH_REASON_EOS"]);
    assertEquals(c0.logprobs.map((l) => [l.text, l.logprob]), [["SENTIMENT", -0.5], [
      "GOOD",
      -0.5,
    ]]);
    assertEquals(results[1].error!.code, grpc.status.NOT_FOUND);
    assertMatch(results[1].error!.message, /^requests\[1\]: task "missing"/);
    assertEquals(results[2].completion!.finishReason, "FINISH_REASON_STOP");
    assertEquals(results[2].completion!.text, "SQUAD WHO ");
    assertEquals(results[3].error!.code, grpc.status.INVALID_ARGUMENT);
    assertStringIncludes(results[3].error!.message, "requests[3].task");
    assertEquals(results[4].completion!.finishReason, "FINISH_REASON_LENGTH");
    // The invalid item never reached the port; the others went as one batch.
    assertEquals(log.inferBatches.length, 1);
    assertEquals(log.inferBatches[0].map((r) => r.task), [
      "sentiment",
      "missing",
      "squad",
      "intent",
    ]);
  });
});

Deno.test("Infer maps sampling options onto the serving path's names", async () => {
  await withServer({}, async (client, _port, log) => {
    await client.infer([
      {
        task: "t",
        version: 3,
        fields: { a: "b" },
        maxNewTokens: 5,
        minNewTokens: 1,
        sampling: { random: { temperature: 0.7, topK: 40, topP: 0.9, seed: 42 } },
        repetitionPenalty: 1.2,
      },
      { task: "t", fields: {} },
    ]);
    const [r0, r1] = log.inferBatches[0];
    assertEquals(r0.version, 3);
    assertEquals(r0.options.doSample, true);
    assertEquals(
      [r0.options.maxNewTokens, r0.options.minNewTokens, r0.options.topK, r0.options.seed],
      [5, 1, 40, 42],
    );
    assert(Math.abs(r0.options.temperature! - 0.7) < 1e-6);
    assert(Math.abs(r0.options.repetitionPenalty! - 1.2) < 1e-6);
    assertEquals(r1.options, { doSample: false, stop: [], logprobs: false });
  });
});

Deno.test("Infer refuses an oversized batch with RESOURCE_EXHAUSTED naming the limit", async () => {
  await withServer({ limits: { maxInferBatch: 2 } }, async (client) => {
    const req = { task: "t", fields: {} };
    await rejectsWith(
      client.infer([req, req, req]),
      grpc.status.RESOURCE_EXHAUSTED,
      "at most 2 requests",
    );
    await rejectsWith(client.infer([]), grpc.status.INVALID_ARGUMENT, "at least one");
  });
});

Deno.test("A deadline aborts the port's signal and the call ends DEADLINE_EXCEEDED", async () => {
  await withServer({}, async (client, _port, log) => {
    await rejectsWith(
      client.infer([{ task: "slow", fields: {} }], { deadline: 100 }),
      grpc.status.DEADLINE_EXCEEDED,
    );
    // The server-side abort may land just after the client gave up.
    for (let i = 0; i < 50 && log.aborts.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assertEquals(log.aborts, ["TimeoutError"]);
  });
});

Deno.test("InferStream yields tokens then done; cancelling stops the work", async () => {
  await withServer({}, async (client, _port, log) => {
    const events = await collect(client.inferStream({ task: "t", fields: { a: "x y" } }));
    assertEquals(events.map((e) => e.event), ["token", "token", "token", "done"]);
    assertEquals(events.slice(0, 3).map((e) => e.token!.text).join(""), "T X Y");
    assertEquals(events[3].done!.text, "T X Y");

    const ac = new AbortController();
    const seen: string[] = [];
    try {
      for await (
        const e of client.inferStream({ task: "slow", fields: {} }, { signal: ac.signal })
      ) {
        seen.push(e.event!);
        ac.abort();
      }
    } catch (e) {
      assert(e instanceof RpcCallError && e.codeName === "CANCELLED", String(e));
    }
    assertEquals(seen, ["token"]);
    for (let i = 0; i < 50 && log.aborts.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assertEquals(log.aborts, ["AbortError"]);
    await rejectsWith(
      collect(client.inferStream({ task: "missing", fields: {} })),
      grpc.status.NOT_FOUND,
    );
  });
});

Deno.test("With a token, mutating calls need it (UNAUTHENTICATED) and reads do not", async () => {
  await withServer({ authToken: "s3cret" }, async (client, port) => {
    const table = { rows: 1, hidden: 1, values: [1] };
    await rejectsWith(
      client.registerTask({ name: "t", template: TEMPLATE, table }),
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
        wrong.registerTask({ name: "t", template: TEMPLATE, table }),
        grpc.status.UNAUTHENTICATED,
        "not valid",
      );
      assertEquals((await right.registerTask({ name: "t", template: TEMPLATE, table })).version, 1);
    } finally {
      wrong.close();
      right.close();
    }
  });
});

Deno.test("A message over the size limit is refused with RESOURCE_EXHAUSTED", async () => {
  await withServer({ maxReceiveMessageBytes: 1024 }, async (client) => {
    const values = new Array(1000).fill(0.5);
    await rejectsWith(
      client.registerTask({
        name: "t",
        template: TEMPLATE,
        table: { rows: 1, hidden: 1000, values },
      }),
      grpc.status.RESOURCE_EXHAUSTED,
    );
  });
});

Deno.test("Server reflection lists the services (v1 and v1alpha)", async () => {
  await withServer({}, async (_client, port) => {
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
  const { ports, log } = createFakePorts();
  const server = createGrpcServer(ports, { port: 0, shutdownGraceMs: 300 });
  const { port } = await server.start();
  const client = new PromptLearningClient({ address: `127.0.0.1:${port}` });
  assertEquals(await client.health(), "SERVING");
  const slow = client.infer([{ task: "slow", fields: {} }]).then(() => "ok", (e) => e);
  while (log.inferBatches.length === 0) await new Promise((r) => setTimeout(r, 5));
  await server.shutdown();
  assertEquals(server.health.get(""), "NOT_SERVING");
  assertEquals(log.aborts, ["AbortError"]);
  const err = await slow;
  assert(err instanceof RpcCallError, String(err));
  client.close();
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
    if (!gen?.success) {
      console.warn("skipped: openssl could not make a test certificate");
      return;
    }
    const cert = await Deno.readTextFile(`${dir}/cert.pem`);
    const key = await Deno.readTextFile(`${dir}/key.pem`);
    await withServer({ tls: { cert, key } }, async (client) => {
      assertEquals(await client.health(), "SERVING");
      const r = await client.infer([{ task: "t", fields: { a: "b" } }]);
      assertEquals(r[0].completion!.text, "T B");
    }, {
      tls: cert,
      // Node's TLS refuses an IP address as SNI server name: name the certificate's host.
      channelOptions: { "grpc.ssl_target_name_override": "localhost" },
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
