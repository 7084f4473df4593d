/**
 * The training step: the service's trainer (run.ts, unchanged) on the cuda engine over the
 * generated checkpoint: prompt tuning two tasks of 10 and 4 (2 + 2) virtual tokens together in
 * mixed batches, gradient accumulation (global batch 8, micro batch 4), validation with greedy
 * generation, both tables written to a registry. (P-tuning asks the engine for the same input
 * gradients; its encoder runs on TF.js on the CPU whatever the engine, and TF.js stays out of the
 * bundle.) Records are made up here (no dataset travels with the check): each task's answer
 * follows from its text, so the prompts can learn.
 */
import type { Engine } from "../../server/model/engine.ts";
import type { LoadedModel } from "../../server/model/weights.ts";
import type { Tokenizer } from "../../server/model/tokenizer.ts";
import { Prng } from "../../server/model/decoding/prng.ts";
import { DiskTaskStore, fingerprintOf } from "../../server/registry/mod.ts";
import { validateTrainingConfig } from "../../server/training/config.ts";
import type { TrainingEvent } from "../../server/training/events.ts";
import { trainFromConfig } from "../../server/training/run.ts";

export const TRAIN_STEPS = 12;
const WORDS = ["sales", "profit", "shares", "orders", "costs", "output", "demand", "margins"];

/** Sentences whose sentiment is their verb's; utterances whose intent is their first word's. */
function records(n: number, seed: number): string {
  const rng = new Prng(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rng.next() * xs.length)];
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const up = rng.next() < 0.5;
    lines.push(JSON.stringify({
      taskname: "sentiment",
      sentence: `The ${pick(WORDS)} ${up ? "rose" : "fell"} in the ${
        pick(["first", "third"])
      } quarter .`,
      label: up ? "positive" : "negative",
    }));
    const alarm = rng.next() < 0.5;
    lines.push(JSON.stringify({
      taskname: "intent_and_slot",
      utterance: alarm ? `wake me up at ${1 + (i % 9)} am` : `play some ${pick(["jazz", "rock"])}`,
      label: alarm ? "\nIntent: alarm_set" : "\nIntent: play_music",
    }));
  }
  return lines.join("\n") + "\n";
}

export interface TrainingReport {
  steps: number;
  losses: number[];
  firstLosses: number;
  lastLosses: number;
  validations: number;
  written: { task: string; version: number; virtualTokens: number; finite: boolean }[];
  seconds: number;
  tokensPerSecond: number;
}

export async function checkTraining(
  engine: Engine,
  model: LoadedModel,
  tokenizer: Tokenizer,
  work: string,
): Promise<TrainingReport> {
  const dir = await Deno.makeTempDir({ dir: work, prefix: "training-" });
  await Deno.writeTextFile(`${dir}/train.jsonl`, records(24, 1));
  await Deno.writeTextFile(`${dir}/val.jsonl`, records(4, 2));
  const fingerprint = fingerprintOf(model);
  const store = await DiskTaskStore.open(`${dir}/registry`, { fingerprint });
  const loaded = validateTrainingConfig({
    name: "gpu-check",
    trainer: {
      max_steps: TRAIN_STEPS,
      max_epochs: 100,
      val_check_interval: TRAIN_STEPS / 2,
      gradient_clip_val: 1.0,
      log_every_n_steps: 1,
    },
    model: {
      seed: 7,
      virtual_prompt_style: "prompt-tuning",
      prompt_tuning: {
        new_prompt_init_methods: ["text", "vocab"],
        new_prompt_init_text: ["positive negative", null],
      },
      new_tasks: ["sentiment", "intent_and_slot"],
      existing_tasks: [],
      task_templates: [
        {
          taskname: "sentiment",
          prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
          total_virtual_tokens: 10,
          virtual_token_splits: [10],
          truncate_field: "sentence",
        },
        {
          taskname: "intent_and_slot",
          prompt_template: "<|VIRTUAL_PROMPT_0|> {utterance}<|VIRTUAL_PROMPT_1|>{label}",
          total_virtual_tokens: 4,
          virtual_token_splits: [2, 2],
          truncate_field: "utterance",
        },
      ],
      data: { train_ds: [`${dir}/train.jsonl`], validation_ds: [`${dir}/val.jsonl`] },
      global_batch_size: 8,
      micro_batch_size: 4,
      optim: { name: "adamw", lr: 0.03 },
      report_validation_metric: true,
      validation_drop_last: false,
      inference: { tokens_to_generate: 4, greedy: true },
    },
  });
  const events: TrainingEvent[] = [];
  const t0 = performance.now();
  // As the train command runs it: the same rules and stages as a service's job.
  const res = await trainFromConfig(
    loaded,
    { dataDir: dir, service: false },
    { engine, tokenizer, store, fingerprint },
    (e) => events.push(e),
  );
  const seconds = (performance.now() - t0) / 1000;
  const steps = events.flatMap((e) => e.type === "step" ? [e] : []);
  const losses = steps.map((s) => s.loss);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const written = [];
  for (const v of res.versions) {
    const stored = await store.get(v.name, v.version);
    written.push({
      task: v.name,
      version: v.version,
      virtualTokens: v.totalVirtualTokens,
      finite: stored.table.length === v.totalVirtualTokens * model.config.nEmbd &&
        stored.table.every(Number.isFinite),
    });
  }
  return {
    steps: steps.length,
    losses,
    firstLosses: mean(losses.slice(0, 3)),
    lastLosses: mean(losses.slice(-3)),
    validations: events.filter((e) => e.type === "validation").length,
    written,
    seconds,
    tokensPerSecond: mean(steps.map((s) => s.tokensPerSecond)),
  };
}
