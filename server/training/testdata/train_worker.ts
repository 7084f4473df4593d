/**
 * Subprocess for the resume test: trains the small two-task config of run_test.ts with
 * checkpoints, printing events as JSON lines; with KILL_AFTER_STEP >= 0 it SIGKILLs itself right
 * after the "latest" checkpoint of that step is written (a crash at the worst moment after it).
 */
import { loadModel } from "../../model/mod.ts";
import { createTestEngine } from "../../model/testing/engine_probe.ts";
import { loadTokenizer } from "../../model/tokenizer.ts";
import { DiskTaskStore, fingerprintOf } from "../../registry/mod.ts";
import { validateTrainingConfig } from "../config.ts";
import { trainFromConfig } from "../run.ts";

const [dir, runs, reg, killAfter] = Deno.args;
const root = new URL("../../../", import.meta.url).pathname;
const model = await loadModel(`${root}models/tiny-gpt2`);
const tokenizer = await loadTokenizer(`${root}models/tiny-gpt2`);
const engine = await createTestEngine(Deno.env.get("TRAIN_TEST_BACKEND") ?? "fast", model);
const fingerprint = fingerprintOf(model);
const { config } = validateTrainingConfig({
  name: "t",
  trainer: { max_steps: 6, max_epochs: 10, val_check_interval: 2, gradient_clip_val: 1.0 },
  // NeMo's resume_if_exists defaults to false: this run resumes on purpose.
  exp_manager: { resume_if_exists: true },
  model: {
    seed: 7,
    virtual_prompt_style: "prompt-tuning",
    new_tasks: ["sentiment"],
    task_templates: [{
      taskname: "sentiment",
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      total_virtual_tokens: 10,
      virtual_token_splits: [10],
      truncate_field: "sentence",
    }],
    prompt_tuning: { new_prompt_init_methods: ["vocab"], new_prompt_init_text: [null] },
    data: {
      train_ds: [`${dir}/sentiment_train.jsonl`],
      validation_ds: [`${dir}/sentiment_val.jsonl`],
    },
    global_batch_size: 2,
    micro_batch_size: 2,
    optim: { name: "adamw", lr: 0.03 },
    validation_drop_last: false,
    inference: { tokens_to_generate: 2 },
  },
});
const store = await DiskTaskStore.open(reg, { fingerprint });
await trainFromConfig(
  { config, notes: [] },
  { dataDir: dir, service: false },
  { engine, tokenizer, store, fingerprint, runsDir: runs },
  (e) => {
    console.log(JSON.stringify(e));
    if (e.type === "checkpoint" && e.kind === "latest" && e.step === Number(killAfter)) {
      Deno.kill(
        Deno.pid,
        "SIGKILL",
      );
    }
  },
);
