/**
 * The training configuration, read like NeMo's `megatron_gpt_prompt_learning_config.yaml`: the
 * same sections and keys, declared once in `config_schema.ts` (types, NeMo's defaults, messages),
 * so a NeMo file loads with at most its paths changed. This module reads the text (YAML, `${...}`
 * interpolations, Hydra-style overrides), applies the rules that span keys, and reports every
 * error as `file:line: yaml.path message: found value`.
 */
import { z } from "zod";
import * as YAML from "yaml";
import { invalidArgument } from "../errors.ts";
import { validateTemplate } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { SamplingParams } from "../model/decoding/sampler.ts";
import type { AdamWOptions } from "./optimizer.ts";
import type { ScheduleKind, ScheduleOptions } from "./schedule.ts";
import {
  applyOverride,
  keySegments,
  MISSING,
  resolveInterpolations,
} from "./config_interpolate.ts";
import {
  configSchema,
  ENCODER_TYPES,
  NO_EFFECT,
  type RawConfig,
  SCHEDULES,
} from "./config_schema.ts";

export type VirtualPromptStyle = "p-tuning" | "prompt-tuning";
/**
 * How a new task's table starts: `text` (the embeddings of the init text, repeated to fill: NeMo
 * and PEFT), `random` (NeMo: Xavier normal), `peft_random` (PEFT's RANDOM: N(0, 1), an
 * nn.Embedding's own init), `vocab` (PEFT's SAMPLE_VOCAB: rows of token ids drawn uniformly from
 * the whole vocabulary).
 */
export type PromptInitMethod =
  RawConfig["model"]["prompt_tuning"]["new_prompt_init_methods"][number];
export type EncoderType = (typeof ENCODER_TYPES)[number];
export type MonitorMode = "min" | "max";

/**
 * Lightning's val_check_interval: an integer n runs validation every n training steps, a float
 * in (0, 1] that fraction of the way through each epoch (1.0: at the end of each epoch).
 */
export type ValCheckInterval =
  | { kind: "steps"; steps: number }
  | { kind: "epoch_fraction"; fraction: number };

type Raw = RawConfig;
type RawModel = Raw["model"];

export interface TrainerConfig {
  /** null: no limit (NeMo's -1 too). At least one of the limits is set. */
  max_epochs: number | null;
  max_steps: number | null;
  val_check_interval: ValCheckInterval;
  gradient_clip_val: number;
  log_every_n_steps: number;
}

export type CheckpointCallbackParams = Pick<
  Raw["exp_manager"]["checkpoint_callback_params"],
  "monitor" | "mode" | "save_top_k" | "save_best_model" | "save_last" | "filename"
>;
export type EarlyStoppingCallbackParams = Pick<
  Raw["exp_manager"]["early_stopping_callback_params"],
  | "monitor"
  | "mode"
  | "min_delta"
  | "patience"
  | "strict"
  | "check_finite"
  | "stopping_threshold"
  | "divergence_threshold"
>;

export interface ExpManagerConfig {
  /** Default: the top-level `name`. */
  name: string;
  exp_dir: string | null;
  explicit_log_dir: string | null;
  resume_if_exists: boolean;
  resume_ignore_no_checkpoint: boolean;
  create_checkpoint_callback: boolean;
  checkpoint_callback_params: CheckpointCallbackParams;
  create_early_stopping_callback: boolean;
  early_stopping_callback_params: EarlyStoppingCallbackParams;
  /** TensorBoard event files in `<run dir>/tensorboard/` (tensorboard.ts). */
  create_tensorboard_logger: boolean;
}

export interface PromptTuningConfig {
  /** One per new task (prompt tuning): "random" where the file gives none. */
  new_prompt_init_methods: PromptInitMethod[];
  /** One per new task: the text for "text", null otherwise. */
  new_prompt_init_text: (string | null)[];
}

export type PTuningConfig = Pick<
  RawModel["p_tuning"],
  "encoder_type" | "num_layers" | "encoder_hidden" | "init_std" | "dropout"
>;

export type DataConfig = Pick<
  RawModel["data"],
  | "train_ds"
  | "validation_ds"
  | "test_ds"
  | "shuffle"
  | "add_bos"
  | "add_eos"
  | "max_seq_length"
  | "min_seq_length"
  | "skip_bad_lines"
  | "refuse_missing_fields"
>;

export interface SchedConfig {
  /** NeMo's scheduler name as written (CosineAnnealing, WarmupAnnealing, WarmupPolicy, ...). */
  name: keyof typeof SCHEDULES;
  kind: ScheduleKind;
  warmup_steps: number | null;
  warmup_ratio: number | null;
  constant_steps: number | null;
  constant_ratio: number | null;
  min_lr: number;
}

export type OptimConfig = Pick<RawModel["optim"], "name" | "lr" | "weight_decay" | "eps"> & {
  betas: [number, number];
  sched: SchedConfig | null;
};

/** Generation settings of validation metrics and `eval --config` (NeMo's model.inference). */
export type InferenceConfig = Pick<
  RawModel["inference"],
  | "greedy"
  | "tokens_to_generate"
  | "min_tokens_to_generate"
  | "temperature"
  | "top_k"
  | "top_p"
  | "repetition_penalty"
  | "end_strings"
  | "compute_logprob"
  | "batch_size"
>;

export interface ModelConfig {
  seed: number;
  nemo_path: string | null;
  restore_path: string | null;
  language_model_path: string | null;
  virtual_prompt_style: VirtualPromptStyle;
  existing_tasks: string[];
  new_tasks: string[];
  /** Validated templates (new tasks need one; existing tasks may have one). */
  task_templates: TaskTemplate[];
  prompt_tuning: PromptTuningConfig;
  p_tuning: PTuningConfig;
  data: DataConfig;
  global_batch_size: number;
  micro_batch_size: number;
  validation_global_batch_size: number;
  validation_micro_batch_size: number;
  validation_drop_last: boolean;
  report_validation_metric: boolean;
  validation_metric: RawModel["validation_metric"];
  validation_match: RawModel["validation_match"];
  optim: OptimConfig;
  inference: InferenceConfig;
}

export interface TrainingConfig {
  name: string;
  trainer: TrainerConfig;
  exp_manager: ExpManagerConfig;
  model: ModelConfig;
}

export interface ConfigOptions {
  /** Names the source in messages. */
  file?: string;
  /** Training records come inline (a Train RPC), so model.data.train_ds may be empty. */
  inlineTrainData?: boolean;
}

export interface LoadedConfig {
  config: TrainingConfig;
  /** One line per key given that has no effect here, saying why (report each once). */
  notes: string[];
}

type Path = readonly (string | number)[];

const show = (v: unknown): string =>
  v === undefined ? "nothing" : v === MISSING ? "???" : JSON.stringify(v) ?? String(v);

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** `model.task_templates[1].taskname` */
function pathText(path: Path): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${p}` : p;
  return out;
}

function valueAt(root: unknown, path: Path): unknown {
  let v = root;
  for (const p of path) {
    if (Array.isArray(v) && typeof p === "number") v = v[p];
    else if (isObj(v)) v = v[String(p)];
    else return undefined;
  }
  return v;
}

/** Where messages point: the file, and the line of a YAML path when the text is known. */
class Where {
  constructor(
    readonly file: string,
    readonly lineOf: (path: Path) => number | undefined = () => undefined,
  ) {}
  /** `file:line: path` (parts left out when unknown). */
  at(path: Path): string {
    const line = this.lineOf(path);
    const head = this.file ? `${this.file}${line ? `:${line}` : ""}` : line ? `line ${line}` : "";
    const p = path.length ? pathText(path) : "the configuration";
    return [head, p].filter((s) => s).join(": ");
  }
  fail(path: Path, message: string): never {
    const at = this.at(path);
    throw invalidArgument(at ? `${at}${message.startsWith(":") ? "" : " "}${message}` : message);
  }
}

/** Closest key names, for "did you mean". */
function closest(key: string, candidates: string[]): string | undefined {
  const dist = (a: string, b: string) => {
    const d = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let prev = d[0];
      d[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const t = d[j];
        d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
        prev = t;
      }
    }
    return d[b.length];
  };
  let best: string | undefined, bestD = Infinity;
  for (const c of candidates) {
    const x = dist(key.toLowerCase(), c.toLowerCase());
    if (x < bestD) [best, bestD] = [c, x];
  }
  return bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

/** The keys a section of the schema declares, for "expected one of". */
function declaredKeys(path: Path): string[] {
  // deno-lint-ignore no-explicit-any
  let s: any = configSchema;
  const unwrap = () => {
    // preprocess -> pipe(out), default/nullable/optional -> innerType
    for (;;) {
      const def = s?._zod?.def;
      if (!def) return;
      if (def.type === "pipe") s = def.out;
      else if (def.innerType) s = def.innerType;
      else return;
    }
  };
  unwrap();
  for (const p of path) {
    if (typeof p === "number") {
      s = s?._zod?.def?.element;
    } else {
      s = s?._zod?.def?.shape?.[p];
    }
    unwrap();
  }
  const shape = s?._zod?.def?.shape;
  return shape ? Object.keys(shape) : [];
}

function issueMessage(where: Where, input: unknown, iss: z.core.$ZodIssue): string {
  const path = iss.path.filter((p): p is string | number => typeof p !== "symbol");
  if (iss.code === "unrecognized_keys") {
    const known = declaredKeys(path);
    // Bounded: a file of thousands of stray keys gets a short answer.
    const more = iss.keys.length > 5 ? `\n(and ${iss.keys.length - 5} more unknown keys)` : "";
    return iss.keys.slice(0, 5).map((k) => {
      const hint = closest(k, known);
      return `${where.at([...path, k])} is not a key of NeMo's prompt-learning configuration${
        hint ? ` (did you mean ${hint}?)` : ""
      }: expected one of ${known.join(", ")}`;
    }).join("\n") + more;
  }
  const value = valueAt(input, path);
  const at = where.at(path);
  const bare = iss.message.startsWith("is required") || iss.message.includes("more than once") ||
    iss.message.startsWith("must name");
  return bare ? `${at} ${iss.message}` : `${at} ${iss.message}: found ${show(value)}`;
}

/** Every key given under NO_EFFECT, once each. */
function noEffectNotes(raw: unknown): string[] {
  const notes: string[] = [];
  for (const [section, keys] of Object.entries(NO_EFFECT)) {
    const obj = section ? valueAt(raw, section.split(".")) : raw;
    if (!isObj(obj)) continue;
    for (const [key, why] of Object.entries(keys)) {
      if (obj[key] === undefined || obj[key] === null) continue;
      notes.push(`${section ? `${section}.` : ""}${key} has no effect here: ${why}`);
    }
  }
  return notes;
}

/**
 * Brings a NeMo template to the shape validateTemplate() takes: NeMo reads
 * add_bos/add_eos/max_seq_length/min_seq_length from model.data.
 */
function nemoTemplate(raw: Record<string, unknown>, data: RawModel["data"]): unknown {
  const t: Record<string, unknown> = { ...raw };
  for (const key of ["add_bos", "add_eos", "max_seq_length", "min_seq_length"] as const) {
    if (t[key] === undefined && data[key] !== null) t[key] = data[key];
  }
  return t;
}

/**
 * The monitors a run logs: val_loss, and val_<metric> when metrics are reported (NeMo's name:
 * `self.log(f'val_{metric_name}', ...)`, megatron_gpt_prompt_learning_model.py v1.20.0:474).
 */
function monitors(m: RawModel): string[] {
  return m.report_validation_metric ? ["val_loss", `val_${m.validation_metric}`] : ["val_loss"];
}

/** Earlier versions of this project named NeMo's val_<metric> validation_<metric>: still read. */
function canonicalMonitor(monitor: string): string {
  return monitor.startsWith("validation_") ? `val_${monitor.slice("validation_".length)}` : monitor;
}

function readModel(where: Where, m: RawModel, inlineTrainData: boolean): ModelConfig {
  const at = (...p: Path) => ["model", ...p];
  const overlap = m.new_tasks.filter((t) => m.existing_tasks.includes(t));
  if (overlap.length > 0) {
    where.fail(
      at(),
      `: ${overlap.map((t) => `"${t}"`).join(", ")} cannot be in both new_tasks and ` +
        `existing_tasks: existing tasks are never retrained`,
    );
  }
  if (m.data.train_ds.length === 0 && !inlineTrainData) {
    where.fail(at("data", "train_ds"), "must list at least one JSONL file");
  }
  const templates = m.task_templates.map((t, i) =>
    validateTemplate(nemoTemplate(t, m.data), where.at(at("task_templates", i)))
  );
  templates.forEach((t, i) => {
    const first = templates.findIndex((u) => u.taskname === t.taskname);
    if (first !== i) {
      where.fail(
        at("task_templates", i),
        `: task "${t.taskname}" already has a template at model.task_templates[${first}]`,
      );
    }
  });
  for (const task of m.new_tasks) {
    if (!templates.some((t) => t.taskname === task)) {
      where.fail(
        at("task_templates"),
        `has no template for new task "${task}": found templates for ${
          templates.map((t) => `"${t.taskname}"`).join(", ") || "no task"
        }`,
      );
    }
  }
  const multiple = (g: number, mb: number, gKey: string, mKey: string) => {
    if (g % mb !== 0) {
      where.fail(at(gKey), `(${g}) must be a multiple of model.${mKey} (${mb})`);
    }
  };
  multiple(m.global_batch_size, m.micro_batch_size, "global_batch_size", "micro_batch_size");
  const vg = m.validation_global_batch_size ?? m.global_batch_size;
  const vm = m.validation_micro_batch_size ?? m.micro_batch_size;
  multiple(vg, vm, "validation_global_batch_size", "validation_micro_batch_size");

  const p = m.p_tuning;
  if (p.encoder_type === "mlp" && p.num_layers < 2) {
    where.fail(
      at("p_tuning", "num_layers"),
      `must be at least 2 with encoder_type "mlp" (NeMo's MLP is num_layers Linear layers): found ${p.num_layers}`,
    );
  }
  if (
    (p.encoder_type === "tpmlp" || p.encoder_type === "peft_mlp" ||
      p.encoder_type === "embedding") && p.num_layers !== 2
  ) {
    where.fail(
      at("p_tuning", "num_layers"),
      `must be 2 with encoder_type "${p.encoder_type}" (its depth is fixed): found ${p.num_layers}`,
    );
  }
  return {
    seed: m.seed,
    nemo_path: m.nemo_path,
    restore_path: m.restore_path,
    language_model_path: m.language_model_path,
    virtual_prompt_style: m.virtual_prompt_style,
    existing_tasks: m.existing_tasks,
    new_tasks: m.new_tasks,
    task_templates: templates,
    prompt_tuning: readPromptTuning(where, m),
    p_tuning: {
      encoder_type: p.encoder_type,
      num_layers: p.num_layers,
      encoder_hidden: p.encoder_hidden,
      init_std: p.init_std,
      // NeMo hands dropout to the LSTM only (megatron_base_prompt_learning_model.py v1.20.0:216,
      // prompt_encoder.py :237-244); with another encoder it does nothing there, nor here.
      dropout: p.encoder_type === "lstm" ? p.dropout : 0,
    },
    data: {
      train_ds: m.data.train_ds,
      validation_ds: m.data.validation_ds,
      test_ds: m.data.test_ds,
      shuffle: m.data.shuffle,
      add_bos: m.data.add_bos,
      add_eos: m.data.add_eos,
      max_seq_length: m.data.max_seq_length,
      min_seq_length: m.data.min_seq_length,
      skip_bad_lines: m.data.skip_bad_lines,
      refuse_missing_fields: m.data.refuse_missing_fields,
    },
    global_batch_size: m.global_batch_size,
    micro_batch_size: m.micro_batch_size,
    validation_global_batch_size: vg,
    validation_micro_batch_size: vm,
    validation_drop_last: m.validation_drop_last,
    report_validation_metric: m.report_validation_metric,
    validation_metric: m.validation_metric,
    validation_match: m.validation_match,
    optim: readOptim(where, m.optim),
    inference: {
      greedy: m.inference.greedy,
      tokens_to_generate: m.inference.tokens_to_generate,
      min_tokens_to_generate: m.inference.min_tokens_to_generate,
      temperature: m.inference.temperature,
      top_k: m.inference.top_k,
      top_p: m.inference.top_p,
      repetition_penalty: m.inference.repetition_penalty,
      end_strings: m.inference.end_strings,
      compute_logprob: m.inference.compute_logprob,
      batch_size: m.inference.batch_size,
    },
  };
}

function readPromptTuning(where: Where, m: RawModel): PromptTuningConfig {
  const { new_prompt_init_methods: methods, new_prompt_init_text: texts } = m.prompt_tuning;
  const at = (...p: Path) => ["model", "prompt_tuning", ...p];
  // Without init methods every new task starts at random.
  if (methods.length === 0) {
    return {
      new_prompt_init_methods: m.new_tasks.map(() => "random"),
      new_prompt_init_text: m.new_tasks.map(() => null),
    };
  }
  // The lists pair with new_tasks only when prompt tuning is what runs; a p-tuning file may carry
  // NeMo's example prompt_tuning section untouched.
  if (m.virtual_prompt_style === "prompt-tuning") {
    if (methods.length !== m.new_tasks.length) {
      where.fail(
        at("new_prompt_init_methods"),
        `must give one method per new task (${m.new_tasks.length}: ${
          m.new_tasks.join(", ")
        }): found ${methods.length}`,
      );
    }
    methods.forEach((method, i) => {
      const t = texts[i];
      if (method === "text" && !(typeof t === "string" && t.trim() !== "")) {
        where.fail(
          at("new_prompt_init_text", i),
          `must be a non-empty text for new task "${
            m.new_tasks[i]
          }" (its init method is "text"): found ${show(t ?? null)}`,
        );
      }
    });
  }
  return {
    new_prompt_init_methods: methods,
    new_prompt_init_text: methods.map((method, i) => (method === "text" ? texts[i] ?? null : null)),
  };
}

function readOptim(where: Where, o: RawModel["optim"]): OptimConfig {
  const at = (...p: Path) => ["model", "optim", "sched", ...p];
  let sched: SchedConfig | null = null;
  const s = o.sched;
  if (s) {
    if (s.warmup_steps !== null && s.warmup_ratio !== null) {
      where.fail(at(), ": give warmup_steps or warmup_ratio, not both");
    }
    if (s.constant_steps !== null && s.constant_ratio !== null) {
      where.fail(at(), ": give constant_steps or constant_ratio, not both");
    }
    const kind = SCHEDULES[s.name];
    const constant = (s.constant_steps ?? 0) > 0 || (s.constant_ratio ?? 0) > 0;
    if (constant && kind !== "cosine") {
      where.fail(
        at(),
        `: constant_steps/constant_ratio apply to CosineAnnealing only: found ${s.name}`,
      );
    }
    if (s.min_lr > o.lr) {
      where.fail(at("min_lr"), `(${s.min_lr}) must not exceed model.optim.lr (${o.lr})`);
    }
    sched = {
      name: s.name,
      kind,
      warmup_steps: s.warmup_steps,
      warmup_ratio: s.warmup_ratio,
      constant_steps: s.constant_steps,
      constant_ratio: s.constant_ratio,
      min_lr: s.min_lr,
    };
  }
  return {
    name: o.name,
    lr: o.lr,
    weight_decay: o.weight_decay,
    betas: [o.betas[0], o.betas[1]],
    eps: o.eps,
    sched,
  };
}

/** Lightning's epoch limit when neither max_epochs nor max_steps is set. */
export const LIGHTNING_DEFAULT_MAX_EPOCHS = 1000;

function readTrainer(
  where: Where,
  t: Raw["trainer"],
  valCheckIsInt: boolean | undefined,
): TrainerConfig {
  const limit = (v: number | null) => (v === null || v === -1 ? null : v);
  let max_epochs = limit(t.max_epochs);
  const max_steps = limit(t.max_steps);
  for (const [key, v] of [["max_epochs", max_epochs], ["max_steps", max_steps]] as const) {
    if (v === 0) where.fail(["trainer", key], "must be -1, null or a positive integer: found 0");
  }
  if (max_epochs === null && max_steps === null) {
    // Lightning: an unset epoch limit with no step limit is 1000 epochs; -1 is "no limit", which
    // Lightning allows and a shared service does not (lightning/pytorch/loops/utilities.py 2.0.7:70-79).
    if (t.max_epochs === -1) {
      where.fail(
        ["trainer", "max_epochs"],
        "is -1 (no epoch limit) and max_steps sets none either: a run here must end, so set " +
          "one of them to a positive integer (or leave max_epochs unset for Lightning's 1000)",
      );
    }
    max_epochs = LIGHTNING_DEFAULT_MAX_EPOCHS;
  }
  const v = t.val_check_interval;
  // Lightning tells steps from fractions by type: YAML's `1` is steps, `1.0` an epoch. Plain JSON
  // numbers lose that, so there an integer above 1 means steps.
  const steps = valCheckIsInt ?? (Number.isInteger(v) && v > 1);
  let val_check_interval: ValCheckInterval;
  if (steps) {
    if (!Number.isInteger(v)) where.fail(["trainer", "val_check_interval"], `must be an integer`);
    val_check_interval = { kind: "steps", steps: v };
  } else {
    if (v > 1) {
      where.fail(["trainer", "val_check_interval"], `must be a number <= 1: found ${v}`);
    }
    val_check_interval = { kind: "epoch_fraction", fraction: v };
  }
  return {
    max_epochs,
    max_steps,
    val_check_interval,
    gradient_clip_val: t.gradient_clip_val,
    log_every_n_steps: t.log_every_n_steps,
  };
}

function readExpManager(where: Where, e: Raw["exp_manager"], name: string, logged: string[]) {
  for (const key of ["checkpoint_callback_params", "early_stopping_callback_params"] as const) {
    const monitor = canonicalMonitor(e[key].monitor);
    const used = key === "checkpoint_callback_params"
      ? e.create_checkpoint_callback
      : e.create_early_stopping_callback;
    if (used && !logged.includes(monitor)) {
      where.fail(
        ["exp_manager", key, "monitor"],
        `must be a metric the run logs: one of ${logged.join(", ")} (val_<metric> needs ` +
          `model.report_validation_metric: true): found ${JSON.stringify(e[key].monitor)}`,
      );
    }
  }
  const cp = e.checkpoint_callback_params, es = e.early_stopping_callback_params;
  return {
    name: e.name ?? name,
    exp_dir: e.exp_dir,
    explicit_log_dir: e.explicit_log_dir,
    resume_if_exists: e.resume_if_exists,
    resume_ignore_no_checkpoint: e.resume_ignore_no_checkpoint,
    create_checkpoint_callback: e.create_checkpoint_callback,
    checkpoint_callback_params: {
      monitor: canonicalMonitor(cp.monitor),
      mode: cp.mode,
      save_top_k: cp.save_top_k,
      save_best_model: cp.save_best_model,
      save_last: cp.save_last,
      filename: cp.filename,
    },
    create_early_stopping_callback: e.create_early_stopping_callback,
    early_stopping_callback_params: {
      monitor: canonicalMonitor(es.monitor),
      mode: es.mode,
      min_delta: es.min_delta,
      patience: es.patience,
      strict: es.strict,
      check_finite: es.check_finite,
      stopping_threshold: es.stopping_threshold,
      divergence_threshold: es.divergence_threshold,
    },
    create_tensorboard_logger: e.create_tensorboard_logger,
  };
}

interface TextFacts {
  /** Whether trainer.val_check_interval was written as a YAML integer. */
  valCheckIsInt?: boolean;
  lineOf?: (path: Path) => number | undefined;
}

function validate(raw: unknown, opts: ConfigOptions, facts: TextFacts = {}): LoadedConfig {
  const file = opts.file ?? "";
  const where = new Where(file, facts.lineOf);
  const resolved = resolveInterpolations(raw, file);
  const parsed = configSchema.safeParse(resolved);
  if (!parsed.success) {
    const messages = parsed.error.issues.slice(0, 10).map((i) => issueMessage(where, resolved, i));
    throw invalidArgument(messages.join("\n"));
  }
  const r = parsed.data;
  const model = readModel(where, r.model, opts.inlineTrainData ?? false);
  const config: TrainingConfig = {
    name: r.name,
    trainer: readTrainer(where, r.trainer, facts.valCheckIsInt),
    exp_manager: readExpManager(where, r.exp_manager, r.name, monitors(r.model)),
    model,
  };
  const notes = noEffectNotes(resolved);
  const pt = r.model.p_tuning;
  if (
    r.model.virtual_prompt_style === "p-tuning" && pt.dropout !== 0 && pt.encoder_type !== "lstm"
  ) {
    notes.push(
      `model.p_tuning.dropout has no effect here: encoder_type "${pt.encoder_type}" has no ` +
        "dropout (NeMo applies it between the LSTM's layers only)",
    );
  }
  return { config, notes };
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
  const lineCounter = new YAML.LineCounter();
  const doc = YAML.parseDocument(text, { uniqueKeys: true, lineCounter });
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
  // Values an override put in have no line in the file.
  const overridden = (opts.overrides ?? []).map((o) =>
    keySegments(o.replace(/^(\+\+|\+|~)/, "").split("=")[0])
  );
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
  // The line of the deepest node the path reaches (a missing key points at its section).
  const lineOf = (path: Path): number | undefined => {
    const keys = path.map(String);
    if (overridden.some((o) => o.every((seg, i) => keys[i] === seg))) return undefined;
    for (let n = path.length; n >= 0; n--) {
      const found = doc.getIn(path.slice(0, n), true) as YAML.Node | undefined;
      const offset = found?.range?.[0];
      // Nodes an override put in have no place in the text.
      if (offset !== undefined && (n > 0 || path.length === 0)) {
        return lineCounter.linePos(offset).line;
      }
      if (found && offset === undefined) return undefined;
    }
    return undefined;
  };
  return validate(raw, opts, { valCheckIsInt, lineOf });
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

/** The sampler's parameters model.inference describes (seeded, so a run repeats). */
export function samplingOf(
  i: InferenceConfig,
  seed: number,
): Omit<SamplingParams, "maxNewTokens"> {
  return {
    minNewTokens: i.min_tokens_to_generate,
    doSample: !i.greedy,
    temperature: i.temperature,
    topK: i.top_k,
    topP: i.top_p,
    seed,
    // NeMo's greedy decoding is a plain argmax (text_generation_utils.py v1.20.0:725-726): the
    // penalty is applied only when sampling.
    repetitionPenalty: i.greedy ? 1 : i.repetition_penalty,
    stop: i.end_strings,
    logprobs: i.compute_logprob,
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
