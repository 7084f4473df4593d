/**
 * NeMo's own sample configuration (test/fixtures/configs/megatron_gpt_prompt_learning_config.yaml,
 * byte for byte as NeMo shipped it; see the README there) loads with only its paths overridden and
 * trains: the train command on the shipped model, adding NeMo's new task `rte` (p-tuning, NeMo's
 * default tpmlp encoder) to a registry that holds its existing tasks, and exporting the run's
 * tasks to model.nemo_path.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../../test/assert.ts";
import { runCli } from "../../test/support/cli.ts";
import { loadModel } from "../model/mod.ts";
import { DiskTaskStore, fingerprintOf } from "../registry/mod.ts";
import { validateTemplate } from "../prompts/template.ts";
import { loadTrainingConfig } from "./config.ts";

const root = new URL("../../", import.meta.url).pathname;
const SAMPLE = `${root}test/fixtures/configs/megatron_gpt_prompt_learning_config.yaml`;
const MODEL = `${root}models/tiny-gpt2`;

/** RTE-shaped records (premise, hypothesis, answer), as NeMo's rte template reads them. */
function rteLines(n: number, offset: number): string {
  const animals = ["cat", "dog", "bird", "horse", "fox", "owl", "bear", "wolf"];
  return Array.from({ length: n }, (_, i) => {
    const k = i + offset, a = animals[k % animals.length];
    const yes = k % 2 === 0;
    return JSON.stringify({
      taskname: "rte",
      premise: `The ${a} slept in the barn on day ${k}.`,
      hypothesis: yes ? `A ${a} slept.` : `The ${a} was awake all day.`,
      answer: yes ? "yes" : "no",
    });
  }).join("\n") + "\n";
}

/** Only paths: the frozen model, the data files, the registry added to, and where runs go. */
function pathOverrides(dir: string): string[] {
  return [
    `model.language_model_path=${MODEL}`,
    `model.data.train_ds=[${dir}/rte_train.jsonl]`,
    `model.data.validation_ds=[${dir}/rte_val.jsonl]`,
    `model.restore_path=${dir}/registry`,
    `model.nemo_path=${dir}/megatron_virtual_prompt_gpt.nemo`,
    `exp_manager.exp_dir=${dir}/runs`,
  ];
}

Deno.test("NeMo's sample prompt-learning config loads with only its paths overridden", async () => {
  const { config, notes } = await loadTrainingConfig(SAMPLE, { overrides: pathOverrides("/d") });
  const m = config.model;
  assertEquals([m.virtual_prompt_style, m.new_tasks, m.existing_tasks], [
    "p-tuning",
    ["rte"],
    ["boolq", "intent_and_slot"],
  ]);
  assertEquals(m.p_tuning.encoder_type, "tpmlp");
  assertEquals(m.p_tuning.encoder_hidden, 2048);
  assertEquals(m.task_templates.map((t) => t.taskname), [
    "boolq",
    "intent_and_slot",
    "rte",
    "squad",
    "taskname",
  ]);
  assertEquals(config.exp_manager.checkpoint_callback_params.save_top_k, 2);
  assertEquals(m.inference.repetition_penalty, 1.2);
  // The keys that only matter on NeMo's hardware are reported, each once.
  for (const key of ["trainer.devices", "trainer.accelerator", "trainer.precision"]) {
    assertEquals(notes.filter((n) => n.startsWith(`${key} has no effect here`)).length, 1, key);
  }
});

Deno.test("NeMo's sample config trains with the train command, adding rte beside the existing tasks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(join(dir, "rte_train.jsonl"), rteLines(16, 0));
    await Deno.writeTextFile(join(dir, "rte_val.jsonl"), rteLines(8, 100));
    // The registry NeMo's restore_path names holds the existing tasks, boolq and intent_and_slot.
    const model = await loadModel(MODEL);
    const store = await DiskTaskStore.open(join(dir, "registry"), {
      fingerprint: fingerprintOf(model),
    });
    const { config } = await loadTrainingConfig(SAMPLE, { overrides: pathOverrides(dir) });
    const existing = new Map<string, string>();
    for (const task of ["boolq", "intent_and_slot"]) {
      const template = config.model.task_templates.find((t) => t.taskname === task)!;
      const n = template.total_virtual_tokens, h = model.config.nEmbd;
      const v = await store.put(task, {
        template: validateTemplate(template, task),
        totalVirtualTokens: n,
        hiddenSize: h,
        table: Float32Array.from({ length: n * h }, (_, i) => Math.sin(i)),
        fingerprint: fingerprintOf(model),
        source: "register",
      });
      existing.set(task, v.checksum);
    }
    const out = await runCli("train.ts", ["--config", SAMPLE, ...pathOverrides(dir)], dir);
    const stderr = out.stderr;
    assertEquals(out.code, 0, stderr);
    const result = JSON.parse(out.stdout);
    assertEquals(result.versions.map((v: { name: string }) => v.name), ["rte"]);
    assert(stderr.includes("note: " + SAMPLE + ": trainer.precision has no effect here"), stderr);
    // 16 examples, global batch 8, 3 epochs: 6 steps (NeMo's sampler drops no whole batch here).
    assert(stderr.includes("for 6 steps"), stderr);
    // The existing tasks are untouched, and rte is served from the same registry.
    for (const [task, checksum] of existing) {
      assertEquals((await store.get(task)).checksum, checksum, task);
    }
    const rte = await store.get("rte");
    assertEquals([rte.version, rte.source, rte.encoderKind], [1, "p_tuning", "tpmlp"]);
    // model.nemo_path: an archive (a tar, as a .nemo is) of the run's config and tasks.
    const tar = new Deno.Command("tar", {
      args: ["-tf", join(dir, "megatron_virtual_prompt_gpt.nemo")],
      stdout: "piped",
    });
    const listing = new TextDecoder().decode((await tar.output()).stdout).trim().split("\n");
    assertEquals(listing, [
      "model_config.yaml",
      "tasks/rte/template.json",
      "tasks/rte/adapter_config.json",
      "tasks/rte/adapter_model.safetensors",
    ]);
    // save_top_k 2 under exp_dir/name, named by NeMo's filename pattern.
    const kept = [...Deno.readDirSync(join(dir, "runs", "megatron_virtual_prompt_gpt"))]
      .map((e) => e.name).filter((n) => n.startsWith("megatron_gpt_prompt_tune--val_loss="));
    assertEquals(kept.length, 2, kept.join());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
