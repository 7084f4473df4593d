/**
 * From a configuration (NeMo's YAML, or the object a Train RPC's fields make) to one validated
 * run: every rule a run must meet, checked in one place before anything trains, by the service
 * when a Train is submitted (and again when its job starts: limits may have changed) and by the
 * train command alike:
 * - the configuration's own rules (config.ts: keys, types, NeMo's defaults, rules across keys);
 * - the server's: keys naming server paths (service), its limits on a run's size (service);
 * - the model's: max_seq_length within n_positions; serving's: each new task's virtual tokens;
 * - the registry's: existing tasks exist;
 * - the data's: dataset files inside the data directory (service), readable, every record valid
 *   (`file:line: reason`), examples of the new tasks to train on, and the steps the run takes.
 * The result, a RunPlan, is what `runTraining` (run.ts) runs.
 */
import { isAbsolute, resolve, sep } from "node:path";
import { invalidArgument, notFound, resourceExhausted } from "../errors.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { type DatasetSource, loadDataset } from "../prompts/dataset.ts";
import { tokenizeExample } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import { checkServableVirtualTokens, DEFAULT_MAX_VIRTUAL_TOKENS } from "../registry/limits.ts";
import type { TaskStore } from "../registry/mod.ts";
import {
  adamwOptions,
  type LoadedConfig,
  parseTrainingConfig,
  samplingOf,
  scheduleOptions,
  totalSteps,
  type TrainingConfig,
  validateTrainingConfig,
} from "./config.ts";
import {
  type Monitor,
  stepsPerEpochOf,
  type TrainPlan,
  type ValidationExample,
} from "./trainer.ts";

/** A configuration as submitted: NeMo's YAML text, or the object that YAML parses to. */
export type TrainConfigSource =
  | {
    kind: "yaml";
    text: string;
    /** Names the text in messages (the train command's file; the service's `config_yaml`). */
    file?: string;
    /** Hydra-style `key=value` settings applied first (the train command). */
    overrides?: string[];
  }
  | { kind: "object"; config: Record<string, unknown> };

/** Dataset records sent with a request, added to the files the configuration names. */
export interface InlineRecords {
  train?: readonly unknown[];
  validation?: readonly unknown[];
  test?: readonly unknown[];
}

/**
 * The largest run a caller may ask for. A configuration beyond one is refused before it trains,
 * the message naming the key and the limit, instead of holding the model for hours.
 */
export interface TrainingLimits {
  /** model.global_batch_size and micro_batch_size. */
  maxBatchSize: number;
  /** trainer.max_steps, and max_epochs x steps per epoch. */
  maxSteps: number;
  /** model.p_tuning.encoder_hidden. */
  maxEncoderHidden: number;
  /** model.p_tuning.num_layers. */
  maxEncoderLayers: number;
  /** model.inference.tokens_to_generate. */
  maxTokensToGenerate: number;
  /** Characters of a YAML configuration. */
  maxConfigChars: number;
}

export const DEFAULT_TRAINING_LIMITS: TrainingLimits = {
  maxBatchSize: 256,
  maxSteps: 100_000,
  maxEncoderHidden: 8192,
  maxEncoderLayers: 8,
  maxTokensToGenerate: 256,
  maxConfigChars: 1 << 20,
};

/** Validation examples whose answers are generated for metrics, unless told otherwise: all. */
export const DEFAULT_VAL_GENERATE_LIMIT = Number.POSITIVE_INFINITY;

/** Who asks, and so which rules beyond the configuration's own apply. */
export interface RunRules {
  /** Relative dataset paths resolve against this directory. */
  dataDir: string;
  /**
   * The service: dataset files must resolve inside dataDir (it reads files for remote callers),
   * and keys naming server paths are refused (the service trains on the model it serves, writes
   * to its own registry, keeps each job's checkpoints in the job's own directory).
   */
  service: boolean;
  /** The server's limits (the service); none for the train command. */
  limits?: TrainingLimits;
  /** The most virtual tokens a served task may have. Default DEFAULT_MAX_VIRTUAL_TOKENS. */
  maxVirtualTokens?: number;
  /** Validation examples whose answers are generated. Default DEFAULT_VAL_GENERATE_LIMIT. */
  valGenerateLimit?: number;
}

/** What the rules are checked against: the model and its tokenizer, and the registry. */
export interface RunWorld {
  /** The model's n_positions and n_embd. */
  model: { nPositions: number; nEmbd: number };
  tokenizer: Tokenizer;
  store: TaskStore;
}

/** One dataset split as the run uses it. */
export interface LoadedSplit {
  examples: ValidationExample[];
  skipped: number;
  dropped: Record<string, number>;
  /** What the loader did that the user should know (records filled, as NeMo fills them). */
  notes: string[];
}

/** A run that meets every rule: its configuration, data and the trainer's plan. */
export interface RunPlan {
  config: TrainingConfig;
  /** Keys of the configuration that have no effect here, and why; records filled with "". */
  notes: string[];
  templates: Map<string, TaskTemplate>;
  train: LoadedSplit;
  validation: LoadedSplit;
  test: LoadedSplit;
  /** Examples the templates' max/min_seq_length removed, per task (all splits). */
  droppedExamples: Record<string, number>;
  /** Bad records skipped (skip_bad_lines), all splits. */
  skippedRecords: number;
  stepsPerEpoch: number;
  totalSteps: number;
  trainer: TrainPlan;
}

/** Reads a configuration as submitted into a TrainingConfig (config.ts's rules), or refuses it. */
export function readRunConfig(
  source: TrainConfigSource,
  rules: Pick<RunRules, "limits">,
  inline?: InlineRecords,
): LoadedConfig {
  const inlineTrainData = (inline?.train?.length ?? 0) > 0;
  if (source.kind === "object") return validateTrainingConfig(source.config, { inlineTrainData });
  const file = source.file ?? "config_yaml";
  const max = rules.limits?.maxConfigChars;
  if (max !== undefined && source.text.length > max) {
    throw resourceExhausted(
      `${file} must be at most ${max} characters: found ${source.text.length}`,
      "max_config_chars",
    );
  }
  if (!source.text.trim()) throw invalidArgument(`${file} must not be empty`);
  return parseTrainingConfig(source.text, {
    file,
    overrides: source.overrides,
    inlineTrainData,
  });
}

/**
 * Checks every rule of the run `config` describes, loading its data, and returns the plan to
 * run. Throws the first rule broken (invalid_argument, not_found or resource_exhausted, naming
 * the key, the file and line, or the limit).
 */
export async function planRun(
  loaded: LoadedConfig,
  rules: RunRules,
  world: RunWorld,
  inline?: InlineRecords,
): Promise<RunPlan> {
  const { config } = loaded;
  checkConfigRules(config, rules, world.model.nPositions);
  const m = config.model;
  for (const task of m.existing_tasks) {
    if (!(await world.store.has(task))) {
      throw notFound(`model.existing_tasks: task "${task}" is not in the registry`);
    }
  }
  const templates = new Map(m.task_templates.map((t) => [t.taskname, t]));
  const load = splitLoader(config, templates, rules, world);
  const train = await load(m.data.train_ds, inline?.train, "train_ds", "inline training records");
  const validation = await load(
    m.data.validation_ds,
    inline?.validation,
    "validation_ds",
    "inline validation records",
  );
  const test = await load(m.data.test_ds, inline?.test, "test_ds", "inline test records");
  if (train.examples.length === 0) {
    throw invalidArgument(
      "model.data.train_ds: no training examples of the new tasks (give JSONL files or inline records)",
    );
  }
  const droppedExamples: Record<string, number> = {};
  for (const split of [train, validation, test]) {
    for (const [task, n] of Object.entries(split.dropped)) {
      droppedExamples[task] = (droppedExamples[task] ?? 0) + n;
    }
  }
  const stepsPerEpoch = stepsPerEpochOf(train.examples.length, m.global_batch_size);
  const steps = totalSteps(config.trainer, stepsPerEpoch);
  const maxSteps = rules.limits?.maxSteps;
  if (maxSteps !== undefined && steps > maxSteps) {
    throw resourceExhausted(
      `the run would take ${steps} steps (trainer.max_epochs x ${stepsPerEpoch} steps per epoch, or trainer.max_steps): at most ${maxSteps} (the server's max_train_steps)`,
      "max_train_steps",
    );
  }
  const trainer = trainerPlan(
    config,
    stepsPerEpoch,
    rules.valGenerateLimit ?? DEFAULT_VAL_GENERATE_LIMIT,
  );
  // NeMo's default encoder width is half the model's (hidden_size // 2).
  if (trainer.encoder && trainer.encoder.hiddenSize === 0) {
    trainer.encoder.hiddenSize = Math.max(1, Math.floor(world.model.nEmbd / 2));
  }
  return {
    config,
    notes: [...loaded.notes, ...train.notes, ...validation.notes, ...test.notes],
    templates,
    train,
    validation,
    test,
    droppedExamples,
    skippedRecords: train.skipped + validation.skipped + test.skipped,
    stepsPerEpoch,
    totalSteps: steps,
    trainer,
  };
}

/** The rules on the configuration alone (no data, no registry). */
function checkConfigRules(c: TrainingConfig, rules: RunRules, positions: number): void {
  if (rules.service) refuseServerPaths(c);
  if (rules.limits) checkSizes(c, rules.limits);
  const m = c.model;
  for (const t of m.task_templates) {
    if (t.max_seq_length > positions) {
      throw invalidArgument(
        `model.task_templates: task ${t.taskname}: max_seq_length must be at most the model's n_positions (${positions}): found ${t.max_seq_length}`,
      );
    }
    // A run whose task serving would refuse is refused before it trains for nothing.
    if (m.new_tasks.includes(t.taskname)) {
      checkServableVirtualTokens(
        `model.task_templates: task ${t.taskname}`,
        t.total_virtual_tokens,
        rules.maxVirtualTokens ?? DEFAULT_MAX_VIRTUAL_TOKENS,
      );
    }
  }
}

/**
 * Keys that name server-side paths are the service's to choose, never a caller's: it trains on
 * the model it serves, adds tasks to its own registry, and keeps each job's checkpoints in the
 * job's own directory.
 */
function refuseServerPaths(c: TrainingConfig): void {
  const keys: [string, string | null, string][] = [
    [
      "model.language_model_path",
      c.model.language_model_path,
      "the service trains on the model it serves",
    ],
    ["model.restore_path", c.model.restore_path, "the service adds tasks to its own registry"],
    [
      "model.nemo_path",
      c.model.nemo_path,
      "the service keeps the run's tasks in its registry (export one with deno task peft export)",
    ],
    [
      "exp_manager.exp_dir",
      c.exp_manager.exp_dir,
      "each job keeps its checkpoints in its own directory",
    ],
    [
      "exp_manager.explicit_log_dir",
      c.exp_manager.explicit_log_dir,
      "each job keeps its checkpoints in its own directory",
    ],
  ];
  for (const [key, value, why] of keys) {
    if (value !== null) {
      throw invalidArgument(
        `${key} must be null for the service (${why}): found ${JSON.stringify(value)}`,
      );
    }
  }
}

function checkSizes(c: TrainingConfig, l: TrainingLimits): void {
  const atMost = (key: string, v: number | null, max: number, setting: string) => {
    if (v !== null && v > max) {
      throw resourceExhausted(
        `${key} must be at most ${max} (the server's ${setting}): found ${v}`,
        setting,
      );
    }
  };
  const m = c.model;
  atMost("model.global_batch_size", m.global_batch_size, l.maxBatchSize, "max_train_batch_size");
  atMost("model.micro_batch_size", m.micro_batch_size, l.maxBatchSize, "max_train_batch_size");
  atMost("trainer.max_steps", c.trainer.max_steps, l.maxSteps, "max_train_steps");
  atMost(
    "model.p_tuning.encoder_hidden",
    m.p_tuning.encoder_hidden,
    l.maxEncoderHidden,
    "max_encoder_hidden",
  );
  atMost(
    "model.p_tuning.num_layers",
    m.p_tuning.num_layers,
    l.maxEncoderLayers,
    "max_encoder_layers",
  );
  atMost(
    "model.inference.tokens_to_generate",
    m.inference.tokens_to_generate,
    l.maxTokensToGenerate,
    "max_tokens_to_generate",
  );
}

/**
 * A dataset path resolved against `baseDir`; with `confine`, one that leads outside it is refused
 * (a service reading files for remote callers must not open arbitrary paths).
 */
export function datasetPath(baseDir: string, p: string, field: string, confine: boolean): string {
  const base = resolve(baseDir);
  const full = isAbsolute(p) ? p : resolve(base, p);
  if (!confine) return full;
  const inside = (root: string, x: string) => x === root || x.startsWith(root + sep);
  const refuse = () =>
    invalidArgument(`${field}: ${JSON.stringify(p)} must be a path inside the data directory`);
  if (!inside(base, full)) throw refuse();
  // Symbolic links are followed to where they lead, which must be inside too.
  let real: string;
  try {
    real = Deno.realPathSync(full);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return full; // reported as missing when read
    throw e;
  }
  if (!inside(Deno.realPathSync(base), real)) throw refuse();
  return real;
}

/** Loads one split: its files (named in messages as the configuration wrote them) and records. */
function splitLoader(
  config: TrainingConfig,
  templates: Map<string, TaskTemplate>,
  rules: RunRules,
  world: RunWorld,
) {
  const m = config.model;
  // As NeMo: the input is cut to leave room for the answer generated at validation, so a long
  // example never runs generation past max_seq_length (or the model's n_positions).
  const toGenerate = m.inference.tokens_to_generate;
  const generationPrompt = (
    template: TaskTemplate,
    record: Record<string, string>,
    e: { ids: Int32Array; answerStart: number; truncated: boolean },
  ) => {
    const room = Math.min(template.max_seq_length, world.model.nPositions) - toGenerate;
    if (room < 1) return null;
    // An uncut prompt that fits already is the one inference tokenization would give.
    const fits = e.answerStart <= room && e.answerStart >= template.min_seq_length;
    if (!e.truncated && fits) return undefined;
    const r = tokenizeExample({ ...template, max_seq_length: room }, record, world.tokenizer, {
      forInference: true,
    });
    return r.ok ? r.example.ids : null;
  };
  return async (
    files: string[],
    inline: readonly unknown[] | undefined,
    key: string,
    inlineName: string,
  ): Promise<LoadedSplit> => {
    const examples: ValidationExample[] = [];
    const notes: string[] = [];
    let skipped = 0;
    const dropped: Record<string, number> = {};
    // Files are named in messages as the configuration wrote them, never by their server path.
    const sources: [DatasetSource, string | undefined][] = files.map((f, i) => [
      datasetPath(rules.dataDir, f, `model.data.${key}[${i}]`, rules.service),
      f,
    ]);
    if (inline?.length) sources.push([{ name: inlineName, records: inline }, undefined]);
    for (const [source, displayName] of sources) {
      const ds = await loadDataset(source, templates, world.tokenizer, {
        skipBadLines: m.data.skip_bad_lines,
        refuseMissingFields: m.data.refuse_missing_fields,
        displayName,
      });
      skipped += ds.skipped.length;
      if (ds.filled.length > 0) {
        const f = ds.filled[0];
        notes.push(
          `model.data.${key}: ${ds.filled.length} record(s) lack a template field, filled with "" ` +
            `as NeMo does (first: ${f.file}:${f.line}: ${f.reason}); ` +
            "model.data.refuse_missing_fields: true refuses them",
        );
      }
      for (const [task, n] of Object.entries(ds.droppedByTask)) {
        dropped[task] = (dropped[task] ?? 0) + n;
      }
      ds.examples.forEach((e, i) => {
        if (!m.new_tasks.includes(e.taskname)) return; // existing tasks' records are not trained on
        const template = templates.get(e.taskname)!;
        const record = ds.records[i];
        examples.push({
          ...e,
          answer: record[template.answer_field] ?? "",
          record,
          generationPrompt: generationPrompt(template, record, e),
        });
      });
    }
    return { examples, skipped, dropped, notes };
  };
}

/** The trainer's plan for `config`; `stepsPerEpoch` fixes the schedule length. */
export function trainerPlan(
  config: TrainingConfig,
  stepsPerEpoch: number,
  valGenerateLimit: number,
): TrainPlan {
  const m = config.model, t = config.trainer, em = config.exp_manager;
  const templates = new Map(m.task_templates.map((x) => [x.taskname, x]));
  const steps = totalSteps(t, stepsPerEpoch);
  const valInterval = t.val_check_interval.kind === "steps"
    ? t.val_check_interval.steps
    : Math.max(1, Math.round(t.val_check_interval.fraction * stepsPerEpoch));
  const { maxSteps: _omit, ...schedule } = scheduleOptions(m.optim, Math.max(1, steps));
  const inf = m.inference;
  const cp = em.checkpoint_callback_params, es = em.early_stopping_callback_params;
  return {
    style: m.virtual_prompt_style,
    newTasks: m.new_tasks.map((task, i) => ({
      task,
      virtualTokens: templates.get(task)!.total_virtual_tokens,
      init: {
        method: m.prompt_tuning.new_prompt_init_methods[i] ?? "random",
        text: m.prompt_tuning.new_prompt_init_text[i] ?? undefined,
      },
    })),
    encoder: m.virtual_prompt_style === "p-tuning"
      ? {
        kind: m.p_tuning.encoder_type,
        hiddenSize: m.p_tuning.encoder_hidden ?? 0,
        numLayers: m.p_tuning.num_layers,
        initStd: m.p_tuning.init_std,
        dropout: m.p_tuning.dropout,
      }
      : undefined,
    optim: {
      lr: m.optim.lr,
      weightDecay: m.optim.weight_decay,
      betas: m.optim.betas,
      eps: m.optim.eps,
      // NeMo's adam is L2-decay Adam; fused_adam (Apex FusedAdam in AdamW mode) and adamw decouple.
      decoupled: adamwOptions(m.optim).decoupled ?? true,
      gradClip: t.gradient_clip_val,
    },
    schedule,
    maxEpochs: t.max_epochs ?? Number.MAX_SAFE_INTEGER,
    maxSteps: t.max_steps ?? -1,
    batchSize: m.global_batch_size,
    microBatchSize: m.micro_batch_size,
    shuffle: m.data.shuffle,
    logEveryNSteps: t.log_every_n_steps,
    valInterval,
    validation: {
      globalBatchSize: m.validation_global_batch_size,
      microBatchSize: m.validation_micro_batch_size,
      dropLast: m.validation_drop_last,
    },
    // As NeMo: answers are generated at validation only to report a validation metric.
    generation: m.report_validation_metric
      ? {
        limit: valGenerateLimit,
        maxNewTokens: inf.tokens_to_generate,
        batchSize: inf.batch_size ?? m.validation_micro_batch_size,
        // NeMo's validation never asks for log-probabilities (compute_logprob is eval's).
        sampling: { ...samplingOf(inf, m.seed), logprobs: false },
        match: m.validation_match,
      }
      : undefined,
    checkpoint: {
      monitor: cp.monitor as Monitor,
      mode: cp.mode,
      saveTopK: em.create_checkpoint_callback ? cp.save_top_k : 0,
      saveBestModel: cp.save_best_model,
      saveLast: cp.save_last,
      filename: cp.filename,
    },
    earlyStopping: em.create_early_stopping_callback
      ? {
        monitor: es.monitor as Monitor,
        mode: es.mode,
        patience: es.patience,
        minDelta: es.min_delta,
        strict: es.strict,
        checkFinite: es.check_finite,
        stoppingThreshold: es.stopping_threshold,
        divergenceThreshold: es.divergence_threshold,
      }
      : undefined,
    seed: m.seed,
  };
}
