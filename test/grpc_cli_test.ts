/**
 * client/cli.ts as a user runs it, against the real services in a subprocess (loopback).
 */
import { progressLine } from "../client/cli.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { spawnTestServer, table } from "./support/test_service.ts";

const CLI = new URL("../client/cli.ts", import.meta.url).pathname;

async function cli(port: number, args: string[], stdin?: string) {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "--address", `127.0.0.1:${port}`, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = proc.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await proc.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Writes a 2-virtual-token sentiment template and its table into `dir`; returns the CLI arguments
 * that register them as task "sent".
 */
async function sentTaskFiles(dir: string): Promise<string[]> {
  await Deno.writeTextFile(
    `${dir}/t.json`,
    JSON.stringify({
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      prompt_template_fields: ["sentence", "label"],
      total_virtual_tokens: 2,
      virtual_token_splits: [2],
      answer_field: "label",
    }),
  );
  await Deno.writeTextFile(
    `${dir}/table.json`,
    JSON.stringify([table(1, 256, 1), table(1, 256, 2)]),
  );
  return ["register", "sent", "--template", `${dir}/t.json`, "--table", `${dir}/table.json`];
}

Deno.test("progressLine shows step, loss, learning rate, tokens/s and ETA", () => {
  const line = progressLine({
    step: 5,
    epoch: 1,
    loss: 0.5,
    learningRate: 0.001,
    tokensPerSecond: 1234.4,
    etaSeconds: 75,
    totalSteps: 10,
  });
  assertEquals(
    line,
    "[############............] step 5/10 epoch 1 loss 0.5000 lr 1.00e-3 1234 tok/s ETA 1m15s",
  );
});

Deno.test("CLI: register, tasks, infer (JSONL in, JSONL out), train, watch, jobs", async () => {
  const s = await spawnTestServer(["--token", "tok"]);
  const dir = await Deno.makeTempDir();
  try {
    const registerArgs = await sentTaskFiles(dir);
    const unauth = await cli(s.port, registerArgs);
    assertEquals(unauth.code, 3);
    assertStringIncludes(unauth.stderr, "UNAUTHENTICATED");
    const reg = await cli(s.port, ["--token", "tok", ...registerArgs]);
    assertEquals(reg.code, 0, reg.stderr);
    const task = JSON.parse(reg.stdout);
    assertEquals([task.name, task.version, task.totalVirtualTokens, task.hiddenSize], [
      "sent",
      1,
      2,
      256,
    ]);
    const tasks = await cli(s.port, ["tasks"]);
    assertEquals(tasks.stdout, "sent\tv1\t2 virtual tokens\tregister\n");

    const infer = await cli(
      s.port,
      ["infer", "-"],
      [
        JSON.stringify({
          task: "sent",
          fields: { sentence: "fine" },
          max_new_tokens: 2,
          min_new_tokens: 2,
          return_logprobs: true,
        }),
        JSON.stringify({ task: "missing" }),
        JSON.stringify({
          task: "sent",
          fields: { sentence: "who" },
          max_new_tokens: 1,
          sampling: { temperature: 0.5, seed: 3 },
        }),
      ].join("\n"),
    );
    const lines = infer.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(infer.code, 1, "one request failed");
    assertEquals(lines.length, 3);
    assertEquals([lines[0].finish_reason, lines[0].logprobs.length], ["length", 2]);
    assertEquals(lines[1].error.code, 5);
    assertEquals(lines[2].token_ids.length, 1);

    const records = [["good film", "positive"], ["bad film", "negative"]].map(([sentence, label]) =>
      JSON.stringify({ taskname: "sentiment", sentence, label })
    );
    await Deno.writeTextFile(`${dir}/train.jsonl`, records.join("\n") + "\n");
    await Deno.writeTextFile(
      `${dir}/run.yaml`,
      `name: cli
trainer: { max_steps: 2, max_epochs: 2, val_check_interval: 2 }
model:
  virtual_prompt_style: prompt-tuning
  new_tasks: [sentiment]
  global_batch_size: 2
  micro_batch_size: 2
  task_templates:
    - taskname: sentiment
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
      total_virtual_tokens: 2
      virtual_token_splits: [2]
      answer_only_loss: true
      answer_field: label
  prompt_tuning: { new_prompt_init_methods: [text], new_prompt_init_text: [sentiment] }
  optim: { name: fused_adam, lr: 0.01 }
`,
    );
    const train = await cli(s.port, [
      "--token",
      "tok",
      "train",
      `${dir}/run.yaml`,
      "--train-records",
      `${dir}/train.jsonl`,
      "--validation-records",
      `${dir}/train.jsonl`,
    ]);
    assertEquals(train.code, 0, train.stderr);
    assertMatch(train.stderr, /step 2\/2 epoch 1 loss \d+\.\d{4} .* ETA 0s/);
    assertMatch(train.stderr, /validation @2: sentiment: loss=\d+\.\d{4}/);
    const done = JSON.parse(train.stdout);
    assertEquals(done.written, [{ task: "sentiment", version: 1 }]);

    const all = await cli(s.port, ["watch", done.job_id, "--json"]);
    const seqs = all.stdout.trim().split("\n").map((l) => JSON.parse(l).sequence as number);
    const from = seqs.at(-3)!;
    const watch = await cli(s.port, ["watch", done.job_id, "--after", String(from), "--json"]);
    assertEquals(
      watch.stdout.trim().split("\n").map((l) => JSON.parse(l).sequence),
      seqs.slice(-2),
    );
    const jobs = await cli(s.port, ["jobs"]);
    assertStringIncludes(jobs.stdout, `${done.job_id}\tSUCCEEDED\tsentiment\tstep 2/2`);
    const health = await cli(s.port, ["health"]);
    assertEquals(health.stdout, "SERVING\n");
    const bad = await cli(s.port, ["frobnicate"]);
    assert(bad.code === 2 && bad.stderr.includes("unknown command"), bad.stderr);
    const flag = await cli(s.port, ["--frobnicate", "health"]);
    assert(flag.code === 2 && flag.stderr.includes("frobnicate"), flag.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await s.stop();
  }
});

Deno.test("CLI: infer with choices and allowed, and evaluate a task version as a job", async () => {
  const s = await spawnTestServer(["--token", "tok"]);
  const dir = await Deno.makeTempDir();
  try {
    const reg = await cli(s.port, ["--token", "tok", ...await sentTaskFiles(dir)]);
    assertEquals(reg.code, 0, reg.stderr);
    const labels = ["positive", "negative", "neutral"];
    const infer = await cli(
      s.port,
      ["infer"],
      [
        JSON.stringify({ task: "sent", fields: { sentence: "fine" }, choices: labels }),
        JSON.stringify({ task: "sent", fields: { sentence: "fine" }, allowed: labels }),
      ].join("\n") + "\n",
    );
    assertEquals(infer.code, 0, infer.stderr);
    const [scored, constrained] = infer.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(scored.finish_reason, "choice");
    assertEquals(scored.choices.map((c: { text: string }) => c.text), labels);
    assert(labels.includes(constrained.text), constrained.text);
    const records = ["positive", "negative", "neutral", "positive"].map((label, i) =>
      JSON.stringify({ taskname: "sent", sentence: `sentence ${i}`, label })
    );
    await Deno.writeTextFile(`${dir}/records.jsonl`, records.join("\n") + "\n");
    const ev = await cli(s.port, [
      "--token",
      "tok",
      "evaluate",
      "sent",
      "--records",
      `${dir}/records.jsonl`,
      "--labels",
      labels.join(","),
      "--max-new",
      "2",
    ]);
    assertEquals(ev.code, 0, ev.stderr);
    const lines = ev.stdout.trim().split("\n");
    const result = JSON.parse(lines.at(-1)!);
    assertEquals([result.task, result.version, result.examples], ["sent", 1, 4]);
    assertEquals(result.labels, labels);
    assertEquals(result.confusion.flat().reduce((a: number, b: number) => a + b, 0), 4);
    assert("choice_accuracy" in result.metrics && "ece" in result.metrics, lines.at(-1));
    const got = JSON.parse((await cli(s.port, ["tasks", "get", "sent"])).stdout);
    assertEquals(got.evaluations.length, 1);
  } finally {
    await s.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
