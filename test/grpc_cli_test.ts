/**
 * client/cli.ts as a user runs it, against the fake-ports server in a subprocess (loopback).
 */
import { progressLine } from "../client/cli.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { spawnFakeServer } from "./grpc_fakes_test.ts";

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

Deno.test("CLI: infer (JSONL in, JSONL out), register, tasks, train, watch, jobs", async () => {
  const s = await spawnFakeServer(["--token", "tok"]);
  const dir = await Deno.makeTempDir();
  try {
    const infer = await cli(
      s.port,
      ["infer", "-"],
      [
        JSON.stringify({ task: "sentiment", fields: { sentence: "fine" }, return_logprobs: true }),
        JSON.stringify({ task: "missing" }),
        JSON.stringify({ task: "squad", fields: { q: "who" }, sampling: { temperature: 0.5 } }),
      ].join("\n"),
    );
    const lines = infer.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(infer.code, 1, "one request failed");
    assertEquals(lines.length, 3);
    assertEquals([lines[0].text, lines[0].finish_reason], ["SENTIMENT FINE", "eos"]);
    assertEquals(lines[0].logprobs.length, 2);
    assertEquals(lines[1].error.code, 5);
    assertEquals(lines[2].text, "SQUAD WHO");

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
    await Deno.writeTextFile(`${dir}/table.json`, JSON.stringify([[1, 2, 3], [4, 5, 6]]));
    const unauth = await cli(s.port, [
      "register",
      "sent",
      "--template",
      `${dir}/t.json`,
      "--table",
      `${dir}/table.json`,
    ]);
    assertEquals(unauth.code, 3);
    assertStringIncludes(unauth.stderr, "UNAUTHENTICATED");
    const reg = await cli(s.port, [
      "--token",
      "tok",
      "register",
      "sent",
      "--template",
      `${dir}/t.json`,
      "--table",
      `${dir}/table.json`,
    ]);
    assertEquals(reg.code, 0, reg.stderr);
    const task = JSON.parse(reg.stdout);
    assertEquals([task.name, task.version, task.totalVirtualTokens, task.hiddenSize], [
      "sent",
      1,
      2,
      3,
    ]);
    const tasks = await cli(s.port, ["tasks"]);
    assertEquals(tasks.stdout, "sent\tv1\t2 virtual tokens\ttable\n");

    await Deno.writeTextFile(`${dir}/run.yaml`, "name: ok\nmodel: {}\n");
    const train = await cli(s.port, ["--token", "tok", "train", `${dir}/run.yaml`]);
    assertEquals(train.code, 0, train.stderr);
    assertMatch(train.stderr, /step 3\/3 epoch 0 loss 0\.6667 .* ETA 0s/);
    assertStringIncludes(train.stderr, "validation @3: sentiment: loss=0.5000 accuracy=0.8000");
    const done = JSON.parse(train.stdout);
    assertEquals(done.written, [{ task: "sentiment", version: 1 }]);

    const watch = await cli(s.port, ["watch", done.job_id, "--after", "6", "--json"]);
    assertEquals(
      watch.stdout.trim().split("\n").map((l) => JSON.parse(l).sequence),
      [7, 8],
    );
    const jobs = await cli(s.port, ["jobs"]);
    assertStringIncludes(jobs.stdout, `${done.job_id}\tSUCCEEDED\tsentiment\tstep 3/3`);
    const health = await cli(s.port, ["health"]);
    assertEquals(health.stdout, "SERVING\n");
    const bad = await cli(s.port, ["frobnicate"]);
    assert(bad.code === 2 && bad.stderr.includes("unknown command"), bad.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await s.stop();
  }
});
