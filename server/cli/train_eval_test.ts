/** The train and eval commands as a user runs them: subprocesses, exit codes, output. */
import { runCli } from "../../test/support/cli.ts";
import { assert, assertEquals, assertStringIncludes } from "../../test/assert.ts";

const root = new URL("../../", import.meta.url).pathname;

const CONFIG = `
name: cli_test
trainer: { max_steps: 2, max_epochs: 1, val_check_interval: 2 }
model:
  virtual_prompt_style: prompt-tuning
  new_tasks: [sentiment]
  task_templates:
    - taskname: sentiment
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
      total_virtual_tokens: 4
      virtual_token_splits: [4]
  prompt_tuning: { new_prompt_init_methods: [vocab], new_prompt_init_text: [null] }
  data: { train_ds: [train.jsonl], validation_ds: [val.jsonl] }
  global_batch_size: 2
  micro_batch_size: 2
  optim: { name: adamw, lr: 0.03 }
  inference: { tokens_to_generate: 2 }
`;

Deno.test("deno task train trains from a config, draws progress and prints the versions; eval scores them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lines = (f: string, n: number) =>
      Deno.readTextFileSync(`${root}data/splits/${f}`).split("\n").slice(0, n).join("\n") + "\n";
    await Deno.writeTextFile(`${dir}/train.jsonl`, lines("sentiment_train.jsonl", 4));
    await Deno.writeTextFile(`${dir}/val.jsonl`, lines("sentiment_val.jsonl", 3));
    await Deno.writeTextFile(`${dir}/run.yaml`, CONFIG);
    const t = await runCli(
      "train.ts",
      ["--config", "run.yaml", "--registry", "reg", "--runs", "runs", "--data-dir", "."],
      dir,
    );
    assertEquals(t.code, 0, t.stderr);
    assertStringIncludes(t.stderr, "step 2/2 loss ");
    assertStringIncludes(t.stderr, "tok/s ETA");
    const summary = JSON.parse(t.stdout.trim().split("\n").at(-1)!);
    assertEquals(
      summary.versions.map((v: { name: string; version: number }) => [v.name, v.version]),
      [["sentiment", 1]],
    );

    const e = await runCli("eval.ts", [
      "--task",
      "sentiment",
      "--data",
      "val.jsonl",
      "--registry",
      "reg",
      "--max-new",
      "2",
    ], dir);
    assertEquals(e.code, 0, e.stderr);
    const report = JSON.parse(e.stdout.trim().split("\n").at(-1)!);
    assertEquals([report.task, report.examples, report.metrics.count], ["sentiment", 3, 3]);
    // A threshold no model reaches fails the command, naming the metric.
    const strict = await runCli("eval.ts", [
      "--task",
      "sentiment",
      "--data",
      "val.jsonl",
      "--registry",
      "reg",
      "--min",
      "exact_match=1.01",
    ], dir);
    assertEquals(strict.code, 1);
    assertStringIncludes(strict.stderr, "exact_match");

    // --config: the training config's model.inference decides the decoding. Three tokens at
    // least (EOS suppressed), three at most, each with its log-probability (compute_logprob).
    await Deno.writeTextFile(
      `${dir}/decode.yaml`,
      CONFIG.replace(
        "inference: { tokens_to_generate: 2 }",
        "inference: { greedy: true, tokens_to_generate: 3, min_tokens_to_generate: 3, compute_logprob: true }",
      ),
    );
    const decoded = await runCli("eval.ts", [
      "--task",
      "sentiment",
      "--data",
      "val.jsonl",
      "--registry",
      "reg",
      "--config",
      "decode.yaml",
      "--outputs-out",
      "outputs.jsonl",
    ], dir);
    assertEquals(decoded.code, 0, decoded.stderr);
    const outputs = Deno.readTextFileSync(`${dir}/outputs.jsonl`).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assertEquals(outputs.length, 3);
    for (const o of outputs) {
      assertEquals(o.token_ids.length, 3, JSON.stringify(o));
      assertEquals(o.logprobs.length, 3);
      assert(o.logprobs.every((x: number) => Number.isFinite(x) && x <= 0), JSON.stringify(o));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task train resolves relative dataset paths against the current directory, as NeMo's scripts do", async () => {
  // A config written for NeMo's megatron_gpt_prompt_learning.py, run from the project root,
  // names its data as `data/splits/...`: relative to where it runs. Before, the command resolved
  // such paths against DATA_DIR (data/), and this run failed with "dataset file not found".
  const dir = await Deno.makeTempDir();
  try {
    const lines = (f: string, n: number) =>
      Deno.readTextFileSync(`${root}data/splits/${f}`).split("\n").slice(0, n).join("\n") + "\n";
    await Deno.mkdir(`${dir}/data/splits`, { recursive: true });
    await Deno.writeTextFile(`${dir}/data/splits/train.jsonl`, lines("sentiment_train.jsonl", 4));
    await Deno.writeTextFile(`${dir}/val.jsonl`, lines("sentiment_val.jsonl", 3));
    await Deno.writeTextFile(
      `${dir}/run.yaml`,
      CONFIG.replace(
        "data: { train_ds: [train.jsonl], validation_ds: [val.jsonl] }",
        `data: { train_ds: [data/splits/train.jsonl], validation_ds: [${dir}/val.jsonl] }`,
      ),
    );
    // DATA_DIR is the service's setting: the command does not read it.
    const t = await runCli(
      "train.ts",
      ["--config", "run.yaml", "--registry", "reg", "--runs", "runs"],
      dir,
      { DATA_DIR: `${dir}/elsewhere` },
    );
    assertEquals(t.code, 0, t.stderr);
    assertStringIncludes(t.stderr, "training 4 examples");
    // --data-dir still names another base for relative paths.
    const other = await runCli(
      "train.ts",
      ["--config", "run.yaml", "--registry", "reg2", "--runs", "runs2", "--data-dir", "data"],
      dir,
    );
    assertEquals(other.code, 1);
    assertStringIncludes(other.stderr, "data/splits/train.jsonl: dataset file not found");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task train refuses a bad config naming the YAML path, a task serving would refuse, and a bad dataset line by file:line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/bad.yaml`,
      CONFIG.replace("virtual_token_splits: [4]", "virtual_token_splits: [3]"),
    );
    const bad = await runCli("train.ts", ["--config", "bad.yaml", "--registry", "reg"], dir);
    assertEquals(bad.code, 1);
    assertStringIncludes(
      bad.stderr,
      "virtual_token_splits must sum to total_virtual_tokens (4): current sum is 3",
    );
    // A task serving would refuse is refused before it trains, as the service refuses it (before,
    // the command trained it and wrote a version nothing could serve).
    await Deno.writeTextFile(
      `${dir}/wide.yaml`,
      CONFIG.replace("total_virtual_tokens: 4", "total_virtual_tokens: 200")
        .replace("virtual_token_splits: [4]", "virtual_token_splits: [200]"),
    );
    const wide = await runCli("train.ts", ["--config", "wide.yaml", "--registry", "reg"], dir);
    assertEquals(wide.code, 1);
    assertStringIncludes(
      wide.stderr,
      "task sentiment: total_virtual_tokens must be in [1, 128] (the server's max_virtual_tokens): found 200",
    );
    await Deno.writeTextFile(`${dir}/run.yaml`, CONFIG);
    await Deno.writeTextFile(
      `${dir}/train.jsonl`,
      '{"taskname":"sentiment","sentence":"ok","label":"positive"}\n{"taskname":"sentiment","sentence":"bad label","label":3}\n',
    );
    await Deno.writeTextFile(`${dir}/val.jsonl`, "");
    const data = await runCli("train.ts", [
      "--config",
      "run.yaml",
      "--registry",
      "reg",
      "--data-dir",
      ".",
    ], dir);
    assertEquals(data.code, 1);
    assert(/train\.jsonl:2: .*label/.test(data.stderr), data.stderr);
    // NeMo's restore_path names the registry a run adds to: it must exist, and agree with
    // --registry when both are given.
    const missing = await runCli(
      "train.ts",
      ["--config", "run.yaml", "model.restore_path=nowhere"],
      dir,
    );
    assertEquals(missing.code, 1);
    assertStringIncludes(missing.stderr, "model.restore_path: nowhere does not exist");
    const both = await runCli(
      "train.ts",
      ["--config", "run.yaml", "--registry", "reg", "model.restore_path=other"],
      dir,
    );
    assertEquals(both.code, 1);
    assertStringIncludes(
      both.stderr,
      "--registry (reg) and model.restore_path (other) name different paths",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
