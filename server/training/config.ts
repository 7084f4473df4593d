/**
 * The training configuration, read like NeMo's `megatron_gpt_prompt_learning_config.yaml`: the
 * same sections and keys (`trainer`, `exp_manager`, `model.task_templates`, `model.p_tuning`,
 * `model.optim.sched`, ...), so a NeMo file loads with at most its paths changed. The typed
 * result keeps NeMo's key names, filled with documented defaults.
 *
 * - OmegaConf interpolations `${name}`, `${model.micro_batch_size}` are resolved; `???` marks a
 *   value the file leaves to be given, which is an error only where we read it.
 * - NeMo keys that do not apply here (tensor_model_parallel_size, precision, devices, ...) are
 *   accepted and ignored. Any other key is reported in `unknownKeys` (an error when strict).
 * - Errors are RangeError/TypeError naming the file and YAML path, e.g.
 *   `train.yaml: model.task_templates[1]: task "rte": virtual_token_splits must sum to ...`.
 */
import { invalidArgument } from "../errors.ts";
import * as YAML from "yaml";
import { validateTemplate } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { AdamWOptions } from "./optimizer.ts";
import type { EncoderKind } from "./prompt_encoder.ts";
import type { ScheduleKind, ScheduleOptions } from "./schedule.ts";

export type VirtualPromptStyle = "p-tuning" | "prompt-tuning";
/** "vocab" (beyond NeMo): rows sampled from the model's vocabulary embeddings. */
/**
 * How a new task's table starts: `text` (the embeddings of the init text, repeated to fill: NeMo
 * and PEFT), `random` (NeMo: Xavier normal), `peft_random` (PEFT's RANDOM: N(0, 1), an
 * nn.Embedding's own init), `vocab` (PEFT's SAMPLE_VOCAB: rows of token ids drawn uniformly from
 * the whole vocabulary).
 */
export type PromptInitMethod = "text" | "random" | "peft_random" | "vocab";
export type MonitorMode = "min" | "max";

/**
 * Lightning's val_check_interval: an integer n runs validation every n training steps, a float
 * in (0, 1] that fraction of the way through each epoch (1.0: at the end of each epoch).
 */
export type ValCheckInterval =
  | { kind: "steps"; steps: number }
  | { kind: "epoch_fraction"; fraction: number };

export interface TrainerConfig {
  /** Default null (no limit); -1 also means no limit. At least one of the limits is required. */
  max_epochs: number | null;
  /** Default null (no limit); -1 also means no limit. */
  max_steps: number | null;
  /** Default 1.0: at the end of each epoch. */
  val_check_interval: ValCheckInterval;
  /** Clip the global gradient norm to this; 0 or null: no clipping. Default 0. */
  gradient_clip_val: number;
  /** Progress and loss logging interval in steps. Default 10. */
  log_every_n_steps: number;
}

export interface CheckpointCallbackParams {
  /** Default "val_loss". */
  monitor: string;
  /** Default "min". */
  mode: MonitorMode;
  /** Default 1. */
  save_top_k: number;
  /** Default true. */
  save_best_model: boolean;
}

export interface EarlyStoppingCallbackParams {
  /** Default "val_loss". */
  monitor: string;
  /** Default "min". */
  mode: MonitorMode;
  /** An improvement smaller than this does not count. Default 0.001 (NeMo's example). */
  min_delta: number;
  /** Validations without improvement before stopping. Default 10. */
  patience: number;
  /** Fail when the monitored metric is missing (false: keep going). Default false. */
  strict: boolean;
}

export interface ExpManagerConfig {
  /** Default: the top-level `name`. */
  name: string;
  /** Where runs go (checkpoints, logs). Default null: the trainer's default. */
  exp_dir: string | null;
  /** Exactly this directory, instead of exp_dir/name. Default null. */
  explicit_log_dir: string | null;
  /** Resume from the latest checkpoint in the run directory. Default true. */
  resume_if_exists: boolean;
  /** With resume_if_exists, start afresh when there is no checkpoint. Default true. */
  resume_ignore_no_checkpoint: boolean;
  /** Default true. */
  create_checkpoint_callback: boolean;
  checkpoint_callback_params: CheckpointCallbackParams;
  /** Default false. */
  create_early_stopping_callback: boolean;
  early_stopping_callback_params: EarlyStoppingCallbackParams;
}

/**
 * With virtual_prompt_style "prompt-tuning" both lists pair with new_tasks; a p-tuning run does
 * not use them and keeps them as written.
 */
export interface PromptTuningConfig {
  /** One per new task, in new_tasks order. Default: "random" for every task. */
  new_prompt_init_methods: PromptInitMethod[];
  /** One per new task: the text for "text", null otherwise. */
  new_prompt_init_text: (string | null)[];
}

export interface PTuningConfig {
  /** Default "lstm". NeMo's "tpmlp" and "biglstm" are not implemented. */
  encoder_type: EncoderKind;
  /** Must be 0: the encoders have no dropout. Default 0. */
  dropout: number;
  /** LSTM layers. Default 2 (the MLP's depth is fixed, as in PEFT). */
  num_layers: number;
  /** Encoder hidden size. Default null: the model's embedding size (PEFT's default). */
  encoder_hidden: number | null;
}

export interface DataConfig {
  /** JSONL files. Required (at least one). A single string is read as a one-item list. */
  train_ds: string[];
  /** Default []. */
  validation_ds: string[];
  /** Default []. */
  test_ds: string[];
  /** Shuffle the training examples every epoch (seeded by model.seed). Default true. */
  shuffle: boolean;
  /** Data loader workers; accepted for NeMo files, unused. Default 0. */
  num_workers: number;
  /** Defaults for templates that do not set them; null: the template's own default. */
  add_bos: boolean | null;
  add_eos: boolean | null;
  max_seq_length: number | null;
  min_seq_length: number | null;
  /** Beyond NeMo: skip (and count) bad dataset lines instead of refusing to start. Default false. */
  skip_bad_lines: boolean;
}

export interface SchedConfig {
  /** NeMo's scheduler name as written (CosineAnnealing, WarmupAnnealing, WarmupPolicy, ...). */
  name: string;
  kind: ScheduleKind;
  warmup_steps: number | null;
  warmup_ratio: number | null;
  constant_steps: number | null;
  constant_ratio: number | null;
  /** Default 0. */
  min_lr: number;
}

export interface OptimConfig {
  /** fused_adam and adamw: AdamW (decoupled decay); adam: Adam with L2 decay. */
  name: "fused_adam" | "adamw" | "adam";
  /** Required. */
  lr: number;
  /** Default 0.01. */
  weight_decay: number;
  /** Default [0.9, 0.999]. */
  betas: [number, number];
  /** Default 1e-8. */
  eps: number;
  /** Default null: constant lr, no warmup. */
  sched: SchedConfig | null;
}

/** Generation settings for validation metrics (NeMo's model.inference). */
export interface InferenceConfig {
  /** Default true (exact-match metrics want the argmax answer). */
  greedy: boolean;
  /** Default 30. */
  tokens_to_generate: number;
  /** Default 0. */
  min_tokens_to_generate: number;
  /** Default 1.0. */
  temperature: number;
  /** Default 0 (off). */
  top_k: number;
  /** Default 0.9. */
  top_p: number;
  /** Default 1.0 (off). */
  repetition_penalty: number;
}

export interface ModelConfig {
  /** Default 1234. */
  seed: number;
  /** Where the tuned tasks are written (registry directory or export file). Default null. */
  nemo_path: string | null;
  /** Registry holding existing_tasks (NeMo: an earlier prompt-learning .nemo). Default null. */
  restore_path: string | null;
  /** The frozen model's directory (NeMo: its .nemo file). Default null: the served model. */
  language_model_path: string | null;
  /** Required. */
  virtual_prompt_style: VirtualPromptStyle;
  /** Tasks already learnt, which this run must leave untouched. Default []. */
  existing_tasks: string[];
  /** Tasks to learn now. Required, non-empty. */
  new_tasks: string[];
  /** Validated templates (new tasks need one; existing tasks may have one). */
  task_templates: TaskTemplate[];
  prompt_tuning: PromptTuningConfig;
  p_tuning: PTuningConfig;
  data: DataConfig;
  /** Examples per optimizer step. Default 8. */
  global_batch_size: number;
  /** Examples per forward/backward; global_batch_size / micro_batch_size steps accumulate. Default 4. */
  micro_batch_size: number;
  /** Defaults: global_batch_size and micro_batch_size. */
  validation_global_batch_size: number;
  validation_micro_batch_size: number;
  /** Default false. */
  validation_drop_last: boolean;
  optim: OptimConfig;
  inference: InferenceConfig;
}

export interface TrainingConfig {
  /** Default "megatron_virtual_prompt_gpt" (NeMo's). */
  name: string;
  trainer: TrainerConfig;
  exp_manager: ExpManagerConfig;
  model: ModelConfig;
}

export interface ConfigOptions {
  /** Names the source in messages. */
  file?: string;
  /** Unknown keys (not ours, not NeMo's known-ignored ones) are errors. Default false. */
  strict?: boolean;
  /** Training records come inline (a Train RPC), so model.data.train_ds may be empty. */
  inlineTrainData?: boolean;
}

export interface LoadedConfig {
  config: TrainingConfig;
  /** YAML paths of keys neither used nor known NeMo keys, e.g. "model.optim.lrr". */
  unknownKeys: string[];
}

/** NeMo keys accepted and ignored, per section (values are not checked). */
const IGNORED = {
  root: ["hydra", "defaults"],
  trainer: [
    "devices",
    "accelerator",
    "num_nodes",
    "precision",
    "logger",
    "enable_checkpointing",
    "replace_sampler_ddp",
    "use_distributed_sampler",
    "benchmark",
    "resume_from_checkpoint",
    "strategy",
    "enable_model_summary",
    "limit_val_batches",
    "limit_test_batches",
    "check_val_every_n_epoch",
    "num_sanity_val_steps",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
  ],
  exp_manager: [
    "create_wandb_logger",
    "wandb_logger_kwargs",
    "create_tensorboard_logger",
    "log_step_timing",
    "step_timing_kwargs",
  ],
  checkpoint: ["save_nemo_on_train_end", "filename", "model_parallel_size", "always_save_nemo"],
  early_stopping: ["verbose"],
  model: [
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "sequence_parallel",
    "activations_checkpoint_granularity",
    "activations_checkpoint_method",
    "activations_checkpoint_num_layers",
    "save_nemo_on_validation_end",
    "report_validation_metric",
    "validation_metric",
    "megatron_amp_O2",
    "encoder_seq_length",
    "virtual_prompt_save_path",
  ],
  p_tuning: ["init_std"],
  data: [
    "pin_memory",
    "train_cache_data_path",
    "validation_cache_data_path",
    "test_cache_data_path",
    "load_cache",
  ],
  sched: ["monitor", "max_steps", "interval", "frequency"],
  inference: ["add_BOS", "all_probs", "compute_logprob", "end_strings"],
} as const;

/** Stands for OmegaConf's `???` (a value the file requires someone to give). */
const MISSING = Symbol("???");

type Obj = Record<string, unknown>;

const show = (v: unknown): string =>
  v === undefined ? "nothing" : v === MISSING ? "???" : JSON.stringify(v);

/** Shared state of one validation: the file name, and the unknown keys met so far. */
class Ctx {
  readonly unknown: string[] = [];
  constructor(
    readonly file: string,
    readonly strict: boolean,
    readonly inlineTrainData = false,
  ) {}
  at(path: string): string {
    return this.file ? `${this.file}: ${path}` : path;
  }
}

const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/** Reads a mapping; null/absent is an empty one. Records keys that are neither used nor ignored. */
function section(
  ctx: Ctx,
  raw: unknown,
  path: string,
  used: readonly string[],
  ignored: readonly string[] = [],
): Obj {
  if (raw === undefined || raw === null) return {};
  if (raw === MISSING) throw invalidArgument(`${ctx.at(path)} is required: the file leaves it ???`);
  if (!isObj(raw)) {
    throw invalidArgument(
      `${ctx.at(path || "the configuration")} must be a mapping: found ${show(raw)}`,
    );
  }
  for (const key of Object.keys(raw)) {
    if (used.includes(key) || ignored.includes(key)) continue;
    const where = path ? `${path}.${key}` : key;
    if (ctx.strict) {
      throw invalidArgument(
        `${ctx.at(where)} is not a known key: expected one of ${[...used, ...ignored].join(", ")}`,
      );
    }
    ctx.unknown.push(where);
  }
  return raw;
}

/** Field readers: `path` is the field's full YAML path. */
function present(ctx: Ctx, v: unknown, path: string): boolean {
  if (v === MISSING) throw invalidArgument(`${ctx.at(path)} is required: the file leaves it ???`);
  // YAML written for NeMo sometimes says None where it means null.
  return v !== undefined && v !== null && v !== "None";
}

function num(
  ctx: Ctx,
  v: unknown,
  path: string,
  o: { int?: boolean; min?: number; minExclusive?: number; max?: number },
): number {
  const ok = typeof v === "number" && Number.isFinite(v) && (!o.int || Number.isInteger(v)) &&
    (o.min === undefined || v >= o.min) &&
    (o.minExclusive === undefined || v > o.minExclusive) && (o.max === undefined || v <= o.max);
  if (!ok) {
    const kind = o.int ? "an integer" : "a number";
    const bounds = [
      o.min !== undefined ? `>= ${o.min}` : "",
      o.minExclusive !== undefined ? `> ${o.minExclusive}` : "",
      o.max !== undefined ? `<= ${o.max}` : "",
    ].filter((s) => s).join(" and ");
    throw invalidArgument(
      `${ctx.at(path)} must be ${kind}${bounds ? " " + bounds : ""}: found ${show(v)}`,
    );
  }
  return v as number;
}

function optNum(
  ctx: Ctx,
  obj: Obj,
  key: string,
  path: string,
  fallback: number,
  o: { int?: boolean; min?: number; minExclusive?: number; max?: number },
): number {
  const p = `${path}.${key}`;
  return present(ctx, obj[key], p) ? num(ctx, obj[key], p, o) : fallback;
}

function optBool(ctx: Ctx, obj: Obj, key: string, path: string, fallback: boolean): boolean {
  const p = `${path}.${key}`;
  if (!present(ctx, obj[key], p)) return fallback;
  if (typeof obj[key] !== "boolean") {
    throw invalidArgument(`${ctx.at(p)} must be true or false: found ${show(obj[key])}`);
  }
  return obj[key] as boolean;
}

function optStr(ctx: Ctx, obj: Obj, key: string, path: string): string | null {
  const p = `${path}.${key}`;
  if (!present(ctx, obj[key], p)) return null;
  if (typeof obj[key] !== "string" || obj[key] === "") {
    throw invalidArgument(`${ctx.at(p)} must be a non-empty string: found ${show(obj[key])}`);
  }
  return obj[key] as string;
}

function oneOf<T extends string>(
  ctx: Ctx,
  v: unknown,
  path: string,
  allowed: readonly T[],
  note = "",
): T {
  if (typeof v !== "string" || !(allowed as readonly string[]).includes(v)) {
    throw invalidArgument(
      `${ctx.at(path)} must be one of ${allowed.map((a) => `"${a}"`).join(", ")}: found ${
        show(v)
      }${note}`,
    );
  }
  return v as T;
}

function strList(ctx: Ctx, obj: Obj, key: string, path: string, unique = false): string[] {
  const p = `${path}.${key}`;
  const v = obj[key];
  if (!present(ctx, v, p)) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list)) {
    throw invalidArgument(`${ctx.at(p)} must be a list of strings: found ${show(v)}`);
  }
  list.forEach((item, i) => {
    if (item === MISSING) {
      throw invalidArgument(`${ctx.at(`${p}[${i}]`)} is required: the file leaves it ???`);
    }
    if (typeof item !== "string" || item === "") {
      throw invalidArgument(
        `${ctx.at(`${p}[${i}]`)} must be a non-empty string: found ${show(item)}`,
      );
    }
    if (unique && list.indexOf(item) !== i) {
      throw invalidArgument(`${ctx.at(p)} lists "${item}" more than once`);
    }
  });
  return list as string[];
}

/** -1, null or absent: no limit. */
function limit(ctx: Ctx, obj: Obj, key: string, path: string): number | null {
  const p = `${path}.${key}`;
  if (!present(ctx, obj[key], p) || obj[key] === -1) return null;
  return num(ctx, obj[key], p, { int: true, min: 1 });
}

function readTrainer(ctx: Ctx, raw: unknown, valCheckIsInt: boolean | undefined): TrainerConfig {
  const path = "trainer";
  const t = section(
    ctx,
    raw,
    path,
    ["max_epochs", "max_steps", "val_check_interval", "gradient_clip_val", "log_every_n_steps"],
    IGNORED.trainer,
  );
  const max_epochs = limit(ctx, t, "max_epochs", path);
  const max_steps = limit(ctx, t, "max_steps", path);
  if (max_epochs === null && max_steps === null) {
    throw invalidArgument(
      `${ctx.at(path)}: set max_epochs or max_steps (at least one must be a positive integer)`,
    );
  }
  const acc = t.accumulate_grad_batches;
  if (present(ctx, acc, `${path}.accumulate_grad_batches`) && acc !== 1) {
    throw invalidArgument(
      `${ctx.at(`${path}.accumulate_grad_batches`)} must be 1: found ${show(acc)} ` +
        `(accumulation follows model.global_batch_size / model.micro_batch_size, as in NeMo)`,
    );
  }
  const algo = t.gradient_clip_algorithm;
  if (present(ctx, algo, `${path}.gradient_clip_algorithm`)) {
    oneOf(ctx, algo, `${path}.gradient_clip_algorithm`, ["norm"]);
  }
  let val_check_interval: ValCheckInterval = { kind: "epoch_fraction", fraction: 1 };
  const vci = t.val_check_interval;
  const vciPath = `${path}.val_check_interval`;
  if (present(ctx, vci, vciPath)) {
    const v = num(ctx, vci, vciPath, { minExclusive: 0 });
    // Lightning tells steps from fractions by type: YAML's `1` is steps, `1.0` an epoch. Plain
    // JSON numbers lose that, so there an integer above 1 means steps.
    const steps = valCheckIsInt ?? (Number.isInteger(v) && v > 1);
    if (steps) {
      val_check_interval = { kind: "steps", steps: num(ctx, v, vciPath, { int: true, min: 1 }) };
    } else {
      val_check_interval = { kind: "epoch_fraction", fraction: num(ctx, v, vciPath, { max: 1 }) };
    }
  }
  return {
    max_epochs,
    max_steps,
    val_check_interval,
    gradient_clip_val: optNum(ctx, t, "gradient_clip_val", path, 0, { min: 0 }),
    log_every_n_steps: optNum(ctx, t, "log_every_n_steps", path, 10, { int: true, min: 1 }),
  };
}

function readMonitor(ctx: Ctx, o: Obj, path: string): { monitor: string; mode: MonitorMode } {
  return {
    monitor: optStr(ctx, o, "monitor", path) ?? "val_loss",
    mode: present(ctx, o.mode, `${path}.mode`)
      ? oneOf(ctx, o.mode, `${path}.mode`, ["min", "max"] as const)
      : "min",
  };
}

function readExpManager(ctx: Ctx, raw: unknown, name: string): ExpManagerConfig {
  const path = "exp_manager";
  const e = section(ctx, raw, path, [
    "name",
    "exp_dir",
    "explicit_log_dir",
    "resume_if_exists",
    "resume_ignore_no_checkpoint",
    "create_checkpoint_callback",
    "checkpoint_callback_params",
    "create_early_stopping_callback",
    "early_stopping_callback_params",
  ], IGNORED.exp_manager);
  const cpPath = `${path}.checkpoint_callback_params`;
  const cp = section(
    ctx,
    e.checkpoint_callback_params,
    cpPath,
    ["monitor", "mode", "save_top_k", "save_best_model"],
    IGNORED.checkpoint,
  );
  const esPath = `${path}.early_stopping_callback_params`;
  const es = section(
    ctx,
    e.early_stopping_callback_params,
    esPath,
    ["monitor", "mode", "min_delta", "patience", "strict"],
    IGNORED.early_stopping,
  );
  return {
    name: optStr(ctx, e, "name", path) ?? name,
    exp_dir: optStr(ctx, e, "exp_dir", path),
    explicit_log_dir: optStr(ctx, e, "explicit_log_dir", path),
    resume_if_exists: optBool(ctx, e, "resume_if_exists", path, true),
    resume_ignore_no_checkpoint: optBool(ctx, e, "resume_ignore_no_checkpoint", path, true),
    create_checkpoint_callback: optBool(ctx, e, "create_checkpoint_callback", path, true),
    checkpoint_callback_params: {
      ...readMonitor(ctx, cp, cpPath),
      save_top_k: optNum(ctx, cp, "save_top_k", cpPath, 1, { int: true, min: -1 }),
      save_best_model: optBool(ctx, cp, "save_best_model", cpPath, true),
    },
    create_early_stopping_callback: optBool(ctx, e, "create_early_stopping_callback", path, false),
    early_stopping_callback_params: {
      ...readMonitor(ctx, es, esPath),
      min_delta: optNum(ctx, es, "min_delta", esPath, 0.001, { min: 0 }),
      patience: optNum(ctx, es, "patience", esPath, 10, { int: true, min: 1 }),
      strict: optBool(ctx, es, "strict", esPath, false),
    },
  };
}

function readData(ctx: Ctx, raw: unknown): DataConfig {
  const path = "model.data";
  const d = section(ctx, raw, path, [
    "train_ds",
    "validation_ds",
    "test_ds",
    "shuffle",
    "num_workers",
    "add_bos",
    "add_eos",
    "max_seq_length",
    "min_seq_length",
    "skip_bad_lines",
  ], IGNORED.data);
  const train_ds = strList(ctx, d, "train_ds", path);
  if (train_ds.length === 0 && !ctx.inlineTrainData) {
    throw invalidArgument(`${ctx.at(`${path}.train_ds`)} must list at least one JSONL file`);
  }
  const nullableBool = (key: string) =>
    present(ctx, d[key], `${path}.${key}`) ? optBool(ctx, d, key, path, false) : null;
  const nullableInt = (key: string) =>
    present(ctx, d[key], `${path}.${key}`)
      ? num(ctx, d[key], `${path}.${key}`, { int: true, min: 1 })
      : null;
  return {
    train_ds,
    validation_ds: strList(ctx, d, "validation_ds", path),
    test_ds: strList(ctx, d, "test_ds", path),
    shuffle: optBool(ctx, d, "shuffle", path, true),
    num_workers: optNum(ctx, d, "num_workers", path, 0, { int: true, min: 0 }),
    add_bos: nullableBool("add_bos"),
    add_eos: nullableBool("add_eos"),
    max_seq_length: nullableInt("max_seq_length"),
    min_seq_length: nullableInt("min_seq_length"),
    skip_bad_lines: optBool(ctx, d, "skip_bad_lines", path, false),
  };
}

/** NeMo scheduler names (and plain aliases) that map onto our three schedules. */
const SCHEDULES: Record<string, ScheduleKind> = {
  CosineAnnealing: "cosine",
  WarmupAnnealing: "linear",
  WarmupPolicy: "constant",
  ConstantLR: "constant",
  cosine: "cosine",
  linear: "linear",
  constant: "constant",
};

function readSched(ctx: Ctx, raw: unknown): SchedConfig | null {
  const path = "model.optim.sched";
  if (!present(ctx, raw, path)) return null;
  const s = section(ctx, raw, path, [
    "name",
    "warmup_steps",
    "warmup_ratio",
    "constant_steps",
    "constant_ratio",
    "hold_steps",
    "min_lr",
    "reduce_on_plateau",
  ], IGNORED.sched);
  const name = oneOf(ctx, s.name, `${path}.name`, Object.keys(SCHEDULES));
  if (s.reduce_on_plateau === true) {
    throw invalidArgument(`${ctx.at(`${path}.reduce_on_plateau`)} must be false: not supported`);
  }
  if (present(ctx, s.hold_steps, `${path}.hold_steps`) && s.hold_steps !== 0) {
    throw invalidArgument(
      `${ctx.at(`${path}.hold_steps`)} must be 0: hold phases are not supported`,
    );
  }
  const opt = (key: string, o: { int?: boolean; max?: number }) =>
    present(ctx, s[key], `${path}.${key}`)
      ? num(ctx, s[key], `${path}.${key}`, { min: 0, ...o })
      : null;
  const out: SchedConfig = {
    name,
    kind: SCHEDULES[name],
    warmup_steps: opt("warmup_steps", { int: true }),
    warmup_ratio: opt("warmup_ratio", { max: 1 }),
    constant_steps: opt("constant_steps", { int: true }),
    constant_ratio: opt("constant_ratio", { max: 1 }),
    min_lr: optNum(ctx, s, "min_lr", path, 0, { min: 0 }),
  };
  if (out.warmup_steps !== null && out.warmup_ratio !== null) {
    throw invalidArgument(`${ctx.at(path)}: give warmup_steps or warmup_ratio, not both`);
  }
  if (out.constant_steps !== null && out.constant_ratio !== null) {
    throw invalidArgument(`${ctx.at(path)}: give constant_steps or constant_ratio, not both`);
  }
  const constant = (out.constant_steps ?? 0) > 0 || (out.constant_ratio ?? 0) > 0;
  if (constant && out.kind !== "cosine") {
    throw invalidArgument(
      `${ctx.at(path)}: constant_steps/constant_ratio apply to CosineAnnealing only: found ${name}`,
    );
  }
  return out;
}

function readOptim(ctx: Ctx, raw: unknown): OptimConfig {
  const path = "model.optim";
  const o = section(ctx, raw, path, ["name", "lr", "weight_decay", "betas", "eps", "sched"]);
  const name = present(ctx, o.name, `${path}.name`)
    ? oneOf(ctx, o.name, `${path}.name`, ["fused_adam", "adamw", "adam"] as const)
    : "adamw";
  if (!present(ctx, o.lr, `${path}.lr`)) {
    throw invalidArgument(`${ctx.at(`${path}.lr`)} is required (the peak learning rate)`);
  }
  const lr = num(ctx, o.lr, `${path}.lr`, { minExclusive: 0 });
  let betas: [number, number] = [0.9, 0.999];
  if (present(ctx, o.betas, `${path}.betas`)) {
    if (!Array.isArray(o.betas) || o.betas.length !== 2) {
      throw invalidArgument(
        `${ctx.at(`${path}.betas`)} must be two numbers: found ${show(o.betas)}`,
      );
    }
    betas = [
      num(ctx, o.betas[0], `${path}.betas[0]`, { min: 0, max: 0.999999 }),
      num(ctx, o.betas[1], `${path}.betas[1]`, { min: 0, max: 0.999999 }),
    ];
  }
  const sched = readSched(ctx, o.sched);
  if (sched && sched.min_lr > lr) {
    throw invalidArgument(
      `${ctx.at(`${path}.sched.min_lr`)} (${sched.min_lr}) must not exceed ${path}.lr (${lr})`,
    );
  }
  return {
    name,
    lr,
    weight_decay: optNum(ctx, o, "weight_decay", path, 0.01, { min: 0 }),
    betas,
    eps: optNum(ctx, o, "eps", path, 1e-8, { min: 0 }),
    sched,
  };
}

function readInference(ctx: Ctx, raw: unknown): InferenceConfig {
  const path = "model.inference";
  const i = section(ctx, raw, path, [
    "greedy",
    "tokens_to_generate",
    "min_tokens_to_generate",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
  ], IGNORED.inference);
  return {
    greedy: optBool(ctx, i, "greedy", path, true),
    tokens_to_generate: optNum(ctx, i, "tokens_to_generate", path, 30, { int: true, min: 1 }),
    min_tokens_to_generate: optNum(ctx, i, "min_tokens_to_generate", path, 0, {
      int: true,
      min: 0,
    }),
    temperature: optNum(ctx, i, "temperature", path, 1, { minExclusive: 0 }),
    top_k: optNum(ctx, i, "top_k", path, 0, { int: true, min: 0 }),
    top_p: optNum(ctx, i, "top_p", path, 0.9, { minExclusive: 0, max: 1 }),
    repetition_penalty: optNum(ctx, i, "repetition_penalty", path, 1, { minExclusive: 0 }),
  };
}

function readPTuning(ctx: Ctx, raw: unknown): PTuningConfig {
  const path = "model.p_tuning";
  const p = section(
    ctx,
    raw,
    path,
    ["encoder_type", "dropout", "num_layers", "encoder_hidden"],
    IGNORED.p_tuning,
  );
  const encoder_type = present(ctx, p.encoder_type, `${path}.encoder_type`)
    ? oneOf(
      ctx,
      typeof p.encoder_type === "string" ? p.encoder_type.toLowerCase() : p.encoder_type,
      `${path}.encoder_type`,
      ["lstm", "mlp"] as const,
      " (PEFT's encoders; NeMo's tpmlp and biglstm are not implemented)",
    )
    : "lstm";
  const dropout = optNum(ctx, p, "dropout", path, 0, { min: 0, max: 1 });
  if (dropout !== 0) {
    throw invalidArgument(
      `${ctx.at(`${path}.dropout`)} must be 0: found ${dropout} (the encoders have no dropout)`,
    );
  }
  const num_layers = optNum(ctx, p, "num_layers", path, 2, { int: true, min: 1 });
  if (encoder_type === "mlp" && num_layers !== 2) {
    throw invalidArgument(
      `${ctx.at(`${path}.num_layers`)} must be 2 with encoder_type "mlp" (PEFT's MLP has a ` +
        `fixed depth): found ${num_layers}`,
    );
  }
  return {
    encoder_type,
    dropout,
    num_layers,
    encoder_hidden: present(ctx, p.encoder_hidden, `${path}.encoder_hidden`)
      ? num(ctx, p.encoder_hidden, `${path}.encoder_hidden`, { int: true, min: 1 })
      : null,
  };
}

function readPromptTuning(
  ctx: Ctx,
  raw: unknown,
  newTasks: string[],
  style: VirtualPromptStyle,
): PromptTuningConfig {
  const path = "model.prompt_tuning";
  const p = section(ctx, raw, path, ["new_prompt_init_methods", "new_prompt_init_text"]);
  const mPath = `${path}.new_prompt_init_methods`;
  const tPath = `${path}.new_prompt_init_text`;
  const methodsRaw = present(ctx, p.new_prompt_init_methods, mPath)
    ? p.new_prompt_init_methods
    : [];
  const textsRaw = present(ctx, p.new_prompt_init_text, tPath) ? p.new_prompt_init_text : [];
  if (!Array.isArray(methodsRaw)) {
    throw invalidArgument(`${ctx.at(mPath)} must be a list: found ${show(methodsRaw)}`);
  }
  if (!Array.isArray(textsRaw)) {
    throw invalidArgument(`${ctx.at(tPath)} must be a list: found ${show(textsRaw)}`);
  }
  const methods = methodsRaw.map((m, i) =>
    oneOf(
      ctx,
      typeof m === "string" ? m.toLowerCase() : m,
      `${mPath}[${i}]`,
      ["text", "random", "peft_random", "vocab"] as const,
    )
  );
  const texts = textsRaw.map((t, i) => {
    if (!present(ctx, t, `${tPath}[${i}]`)) return null;
    if (typeof t !== "string") {
      throw invalidArgument(
        `${ctx.at(`${tPath}[${i}]`)} must be a string or null: found ${show(t)}`,
      );
    }
    return t;
  });
  // Without a prompt_tuning section every new task starts at random.
  if (methods.length === 0) {
    return {
      new_prompt_init_methods: newTasks.map(() => "random"),
      new_prompt_init_text: newTasks.map(() => null),
    };
  }
  // The lists pair with new_tasks only when prompt tuning is what runs; a p-tuning file may carry
  // NeMo's example prompt_tuning section untouched.
  if (style === "prompt-tuning") {
    if (methods.length !== newTasks.length) {
      throw invalidArgument(
        `${ctx.at(mPath)} must give one method per new task (${newTasks.length}: ` +
          `${newTasks.join(", ")}): found ${methods.length}`,
      );
    }
    methods.forEach((m, i) => {
      if (m === "text" && !(typeof texts[i] === "string" && texts[i]!.trim() !== "")) {
        throw invalidArgument(
          `${ctx.at(`${tPath}[${i}]`)} must be a non-empty text for new task "${newTasks[i]}" ` +
            `(its init method is "text"): found ${show(textsRaw[i])}`,
        );
      }
    });
  }
  return {
    new_prompt_init_methods: methods,
    new_prompt_init_text: methods.map((m, i) => (m === "text" ? texts[i] ?? null : null)),
  };
}

/**
 * Brings a NeMo template to the shape validateTemplate() takes: NeMo reads
 * add_bos/add_eos/max_seq_length/min_seq_length from model.data (validateTemplate derives
 * prompt_template_fields from the placeholders).
 */
function nemoTemplate(raw: unknown, data: DataConfig): unknown {
  if (!isObj(raw)) return raw;
  const t: Obj = { ...raw };
  for (const key of ["add_bos", "add_eos", "max_seq_length", "min_seq_length"] as const) {
    if (t[key] === undefined && data[key] !== null) t[key] = data[key];
  }
  return t;
}

function readModel(ctx: Ctx, raw: unknown): ModelConfig {
  const path = "model";
  const m = section(ctx, raw, path, [
    "seed",
    "nemo_path",
    "restore_path",
    "language_model_path",
    "virtual_prompt_style",
    "existing_tasks",
    "new_tasks",
    "task_templates",
    "prompt_tuning",
    "p_tuning",
    "data",
    "global_batch_size",
    "micro_batch_size",
    "validation_global_batch_size",
    "validation_micro_batch_size",
    "validation_drop_last",
    "optim",
    "inference",
  ], IGNORED.model);
  const stylePath = `${path}.virtual_prompt_style`;
  if (!present(ctx, m.virtual_prompt_style, stylePath)) {
    throw invalidArgument(
      `${ctx.at(stylePath)} is required: "p-tuning" or "prompt-tuning"`,
    );
  }
  const style = oneOf(
    ctx,
    typeof m.virtual_prompt_style === "string"
      ? m.virtual_prompt_style.toLowerCase().replace("_", "-")
      : m.virtual_prompt_style,
    stylePath,
    ["p-tuning", "prompt-tuning"] as const,
  );

  const existing = strList(ctx, m, "existing_tasks", path, true);
  const newTasks = strList(ctx, m, "new_tasks", path, true);
  if (newTasks.length === 0) {
    throw invalidArgument(`${ctx.at(`${path}.new_tasks`)} must name at least one task to learn`);
  }
  const both = newTasks.filter((t) => existing.includes(t));
  if (both.length > 0) {
    throw invalidArgument(
      `${ctx.at(path)}: ${both.map((t) => `"${t}"`).join(", ")} cannot be in both new_tasks and ` +
        `existing_tasks: existing tasks are never retrained`,
    );
  }

  const data = readData(ctx, m.data);
  const tPath = `${path}.task_templates`;
  const rawTemplates = present(ctx, m.task_templates, tPath) ? m.task_templates : [];
  if (!Array.isArray(rawTemplates)) {
    throw invalidArgument(
      `${ctx.at(tPath)} must be a list of templates: found ${show(rawTemplates)}`,
    );
  }
  const templates = rawTemplates.map((t, i) =>
    validateTemplate(nemoTemplate(t, data), ctx.at(`${tPath}[${i}]`))
  );
  templates.forEach((t, i) => {
    const first = templates.findIndex((u) => u.taskname === t.taskname);
    if (first !== i) {
      throw invalidArgument(
        `${ctx.at(`${tPath}[${i}]`)}: task "${t.taskname}" already has a template at ` +
          `${tPath}[${first}]`,
      );
    }
  });
  for (const task of newTasks) {
    if (!templates.some((t) => t.taskname === task)) {
      throw invalidArgument(
        `${ctx.at(tPath)} has no template for new task "${task}": found templates for ${
          templates.map((t) => `"${t.taskname}"`).join(", ") || "no task"
        }`,
      );
    }
  }

  const global_batch_size = optNum(ctx, m, "global_batch_size", path, 8, { int: true, min: 1 });
  const micro_batch_size = optNum(ctx, m, "micro_batch_size", path, 4, { int: true, min: 1 });
  const batchRule = (g: number, mb: number, gKey: string, mKey: string) => {
    if (g % mb !== 0) {
      throw invalidArgument(
        `${ctx.at(`${path}.${gKey}`)} (${g}) must be a multiple of ${path}.${mKey} (${mb})`,
      );
    }
  };
  batchRule(global_batch_size, micro_batch_size, "global_batch_size", "micro_batch_size");
  const vg = optNum(ctx, m, "validation_global_batch_size", path, global_batch_size, {
    int: true,
    min: 1,
  });
  const vm = optNum(ctx, m, "validation_micro_batch_size", path, micro_batch_size, {
    int: true,
    min: 1,
  });
  batchRule(vg, vm, "validation_global_batch_size", "validation_micro_batch_size");

  return {
    seed: optNum(ctx, m, "seed", path, 1234, { int: true, min: 0 }),
    nemo_path: optStr(ctx, m, "nemo_path", path),
    restore_path: optStr(ctx, m, "restore_path", path),
    language_model_path: optStr(ctx, m, "language_model_path", path),
    virtual_prompt_style: style,
    existing_tasks: existing,
    new_tasks: newTasks,
    task_templates: templates,
    prompt_tuning: readPromptTuning(ctx, m.prompt_tuning, newTasks, style),
    p_tuning: readPTuning(ctx, m.p_tuning),
    data,
    global_batch_size,
    micro_batch_size,
    validation_global_batch_size: vg,
    validation_micro_batch_size: vm,
    validation_drop_last: optBool(ctx, m, "validation_drop_last", path, false),
    optim: readOptim(ctx, m.optim),
    inference: readInference(ctx, m.inference),
  };
}

/** Splits an interpolation key like `model.task_templates[0].taskname` into segments. */
function keySegments(key: string): string[] {
  return key.replace(/\[(\d+)\]/g, ".$1").split(".").filter((s) => s !== "");
}

/**
 * Resolves OmegaConf interpolations (absolute `${a.b}` only) and turns `???` into MISSING.
 * A string that is one interpolation takes the referenced value as is; otherwise references
 * are spliced in as text.
 */
/** Bounds on interpolation, so a small file cannot fan out into a huge one (or a long stall). */
const INTERPOLATION_LIMITS = { depth: 32, steps: 100_000, textChars: 1 << 20 };

function resolveInterpolations(root: unknown, file: string): unknown {
  const at = (p: string) => (file ? `${file}: ${p}` : p);
  // Each referenced key is resolved once: references fanning out 30 wide over 5 levels cost 150
  // lookups, not 30^5.
  const memo = new Map<string, unknown>();
  let steps = 0;
  const lookup = (key: string, from: string): unknown => {
    let v: unknown = root;
    for (const seg of keySegments(key)) {
      if (Array.isArray(v) && /^\d+$/.test(seg)) v = v[Number(seg)];
      else if (isObj(v)) v = v[seg];
      else v = undefined;
      if (v === undefined) {
        throw invalidArgument(`${at(from)} refers to \${${key}}, which the file does not define`);
      }
    }
    return v;
  };
  const resolve = (v: unknown, path: string, stack: string[]): unknown => {
    if (++steps > INTERPOLATION_LIMITS.steps) {
      throw invalidArgument(
        `${
          at(path)
        }: the configuration expands to more than ${INTERPOLATION_LIMITS.steps} values through its \${...} references`,
      );
    }
    if (Array.isArray(v)) return v.map((x, i) => resolve(x, `${path}[${i}]`, stack));
    if (isObj(v)) {
      const out: Obj = {};
      for (const [k, x] of Object.entries(v)) out[k] = resolve(x, path ? `${path}.${k}` : k, stack);
      return out;
    }
    if (typeof v !== "string") return v;
    if (v === "???") return MISSING;
    if (!v.includes("${")) return v;
    const refs = [...v.matchAll(/\$\{([^}]*)\}/g)];
    const target = (key: string): unknown => {
      if (key.includes(":") || key.startsWith(".")) {
        throw invalidArgument(
          `${at(path)}: interpolation \${${key}} is not supported (only absolute \${a.b} keys)`,
        );
      }
      if (stack.includes(key)) {
        throw invalidArgument(`${at(path)}: interpolation \${${key}} refers to itself`);
      }
      if (stack.length >= INTERPOLATION_LIMITS.depth) {
        throw invalidArgument(
          `${at(path)}: \${...} references nest deeper than ${INTERPOLATION_LIMITS.depth}`,
        );
      }
      if (!memo.has(key)) memo.set(key, resolve(lookup(key, path), key, [...stack, key]));
      return memo.get(key);
    };
    if (refs.length === 1 && refs[0][0] === v) return target(refs[0][1]);
    const text = v.replace(/\$\{([^}]*)\}/g, (_, key: string) => {
      const x = target(key);
      if (x === MISSING || isObj(x) || Array.isArray(x)) {
        throw invalidArgument(`${at(path)}: \${${key}} is not a value that can go into text`);
      }
      return String(x);
    });
    if (text.length > INTERPOLATION_LIMITS.textChars) {
      throw invalidArgument(
        `${
          at(path)
        }: the text its \${...} references make is longer than ${INTERPOLATION_LIMITS.textChars} characters`,
      );
    }
    return text;
  };
  return resolve(root, "", []);
}

function validate(raw: unknown, opts: ConfigOptions, valCheckIsInt?: boolean): LoadedConfig {
  const ctx = new Ctx(opts.file ?? "", opts.strict ?? false, opts.inlineTrainData ?? false);
  const resolved = resolveInterpolations(raw, ctx.file);
  const r = section(ctx, resolved, "", ["name", "trainer", "exp_manager", "model"], IGNORED.root);
  if (Object.keys(r).length === 0) {
    throw invalidArgument(`${ctx.at("the configuration")} must be a mapping with a model section`);
  }
  const name = optStr(ctx, r, "name", "") ?? "megatron_virtual_prompt_gpt";
  // Read the model first: most mistakes are there, and its messages are the most useful.
  const model = readModel(ctx, r.model);
  const config: TrainingConfig = {
    name,
    trainer: readTrainer(ctx, r.trainer, valCheckIsInt),
    exp_manager: readExpManager(ctx, r.exp_manager, name),
    model,
  };
  return { config, unknownKeys: ctx.unknown };
}

/** Validates a configuration given as a plain object (parsed JSON, or YAML read elsewhere). */
export function validateTrainingConfig(raw: unknown, opts: ConfigOptions = {}): LoadedConfig {
  return validate(raw, opts);
}

/**
 * Parses YAML (JSON is YAML too) and validates it. `overrides` are Hydra-style command-line
 * settings applied first: `trainer.max_steps=100`, `model.new_tasks=[sentiment]`
 * (`+`/`++` prefixes are accepted), or `~key` to delete.
 */
export function parseTrainingConfig(
  text: string,
  opts: ConfigOptions & { overrides?: string[] } = {},
): LoadedConfig {
  const file = opts.file ?? "";
  const at = file ? `${file}: ` : "";
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = e.linePos?.[0];
    throw invalidArgument(
      `${at}not valid YAML${pos ? ` at line ${pos.line}, column ${pos.col}` : ""}: ${
        e.message.split("\n")[0]
      }`,
    );
  }
  for (const o of opts.overrides ?? []) applyOverride(doc, o);
  const node = doc.getIn(["trainer", "val_check_interval"], true);
  const valCheckIsInt = YAML.isScalar(node) && typeof node.value === "number" &&
      typeof node.source === "string"
    ? /^[-+]?\d+$/.test(node.source.trim())
    : undefined;
  let raw: unknown;
  try {
    raw = doc.toJS();
  } catch (e) {
    // The yaml package throws ReferenceError for an alias to an unknown anchor, and errors for
    // alias cycles: caller input either way.
    throw invalidArgument(`${at}not valid YAML: ${(e as Error).message.split("\n")[0]}`);
  }
  return validate(raw, opts, valCheckIsInt);
}

function applyOverride(doc: YAML.Document, override: string): void {
  const del = override.startsWith("~");
  const body = override.replace(/^(\+\+|\+|~)/, "");
  const eq = body.indexOf("=");
  const key = del ? (eq >= 0 ? body.slice(0, eq) : body) : body.slice(0, eq);
  if ((!del && eq < 1) || key === "") {
    throw invalidArgument(`override ${JSON.stringify(override)} must look like key.path=value`);
  }
  const path = keySegments(key).map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  if (del) {
    doc.deleteIn(path);
    return;
  }
  const valueDoc = YAML.parseDocument(body.slice(eq + 1));
  if (valueDoc.errors.length > 0) {
    throw invalidArgument(
      `override ${JSON.stringify(override)}: the value is not valid YAML (${
        valueDoc.errors[0].message.split("\n")[0]
      })`,
    );
  }
  doc.setIn(path, valueDoc.contents ?? null);
}

/** Reads and parses a YAML/JSON configuration file. */
export async function loadTrainingConfig(
  path: string,
  opts: Omit<ConfigOptions, "file"> & { overrides?: string[] } = {},
): Promise<LoadedConfig> {
  return parseTrainingConfig(await Deno.readTextFile(path), { ...opts, file: path });
}

/** The optimizer options an OptimConfig describes. */
export function adamwOptions(optim: OptimConfig): AdamWOptions {
  return {
    betas: [...optim.betas],
    eps: optim.eps,
    weightDecay: optim.weight_decay,
    decoupled: optim.name !== "adam",
  };
}

/** The schedule an OptimConfig describes, over a run of `maxSteps` optimizer steps. */
export function scheduleOptions(optim: OptimConfig, maxSteps: number): ScheduleOptions {
  const s = optim.sched;
  if (!s) return { kind: "constant", lr: optim.lr, maxSteps };
  const o: ScheduleOptions = { kind: s.kind, lr: optim.lr, maxSteps, minLr: s.min_lr };
  if (s.warmup_steps !== null) o.warmupSteps = s.warmup_steps;
  if (s.warmup_ratio !== null) o.warmupRatio = s.warmup_ratio;
  if (s.constant_steps !== null) o.constantSteps = s.constant_steps;
  if (s.constant_ratio !== null) o.constantRatio = s.constant_ratio;
  return o;
}

/**
 * Optimizer steps the run will take: max_steps, or max_epochs x steps per epoch, whichever comes
 * first (Lightning stops at the first limit reached).
 */
export function totalSteps(trainer: TrainerConfig, stepsPerEpoch: number): number {
  const byEpochs = trainer.max_epochs === null ? Infinity : trainer.max_epochs * stepsPerEpoch;
  return Math.min(trainer.max_steps ?? Infinity, byEpochs);
}
