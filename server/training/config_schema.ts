/**
 * The training configuration declared once: every key of NeMo's prompt-learning config
 * (`megatron_gpt_prompt_learning_config.yaml`, NeMo 1.20) with its type, NeMo's default and the
 * message a bad value gets. Each key is one of:
 * - honoured, with NeMo's meaning (the types and defaults below);
 * - refused unless it has the one value this service implements (for example parallelism sizes
 *   other than 1), with a message that says why;
 * - accepted and reported once as having no effect here (`NO_EFFECT`: keys that only matter on
 *   NeMo's hardware or to its logging plumbing).
 * Anything else is an error naming the key. Rules across keys live in `config.ts`.
 */
import { z } from "zod";
import { MISSING } from "./config_interpolate.ts";

/** How a new task's table starts (prompt tuning). See `trainer.ts` initialTable(). */
export const INIT_METHODS = ["text", "random", "peft_random", "vocab"] as const;
/** NeMo's scheduler names (and plain aliases) that map onto our three schedules. */
export const SCHEDULES = {
  CosineAnnealing: "cosine",
  WarmupAnnealing: "linear",
  WarmupPolicy: "constant",
  ConstantLR: "constant",
  cosine: "cosine",
  linear: "linear",
  constant: "constant",
} as const;
/** NeMo 1.20's p-tuning encoders (tpmlp is its default) and PEFT's three-layer MLP. */
export const ENCODER_TYPES = ["tpmlp", "mlp", "lstm", "peft_mlp", "embedding"] as const;

type Bounds = { min?: number; gt?: number; max?: number; lt?: number };

function boundsText(b: Bounds): string {
  const parts = [
    b.min !== undefined ? `>= ${b.min}` : "",
    b.gt !== undefined ? `> ${b.gt}` : "",
    b.max !== undefined ? `<= ${b.max}` : "",
    b.lt !== undefined ? `< ${b.lt}` : "",
  ].filter((s) => s);
  return parts.length ? " " + parts.join(" and ") : "";
}

/** The message for a value that is absent, or left `???`. */
function requiredOr(message: string, required?: string) {
  return (iss: { input: unknown }) =>
    iss.input === MISSING
      ? "is required: the file leaves it ???"
      : iss.input === undefined && required !== undefined
      ? `is required${required}`
      : message;
}

function numberOf(kind: "an integer" | "a number", b: Bounds, required?: string) {
  const message = `must be ${kind}${boundsText(b)}`;
  let s = z.number({ error: requiredOr(message, required) });
  if (kind === "an integer") s = s.int({ error: message });
  if (b.min !== undefined) s = s.min(b.min, { error: message });
  if (b.gt !== undefined) s = s.gt(b.gt, { error: message });
  if (b.max !== undefined) s = s.max(b.max, { error: message });
  if (b.lt !== undefined) s = s.lt(b.lt, { error: message });
  return s;
}

export const int = (b: Bounds = {}, required?: string) => numberOf("an integer", b, required);
export const num = (b: Bounds = {}, required?: string) => numberOf("a number", b, required);
export const bool = () => z.boolean({ error: requiredOr("must be true or false") });
export const text = (required?: string) =>
  z.string({ error: requiredOr("must be a non-empty string", required) })
    .min(1, { error: "must be a non-empty string" });

/** One of `values` (compared after `normalise`, e.g. lower case). */
function oneOf<const T extends string>(
  values: readonly [T, ...T[]],
  o: { hint?: string; normalise?: (s: string) => string; required?: string } = {},
) {
  const message = `must be one of ${values.map((v) => JSON.stringify(v)).join(", ")}${
    o.hint ?? ""
  }`;
  const e = z.enum(values, { error: requiredOr(message, o.required) });
  return o.normalise ? z.preprocess((v) => (typeof v === "string" ? o.normalise!(v) : v), e) : e;
}

/** null (or absent) means NeMo's default. */
function orDefault<S extends z.ZodType>(s: S, fallback: z.output<S>) {
  return z.preprocess((v) => (v === null ? undefined : v), s.default(fallback as never));
}

/** null (or absent) means "not set"; the value stays null. */
function nullable<S extends z.ZodType>(s: S) {
  return z.preprocess((v) => (v === undefined ? null : v), s.nullable());
}

/** Any value, or none (a key whose value is not read). */
const anyValue = () => z.unknown().optional();

/** A key that only has one meaning here: absent, null or exactly `value`. */
function onlyValue<T extends string | number | boolean>(value: T, why: string) {
  return anyValue().refine((v) => v === undefined || v === null || v === value, {
    error: `must be ${JSON.stringify(value)}: ${why}`,
  });
}

/** A list of strings; one string is read as a one-item list (NeMo files do both). */
function stringList(o: { unique?: boolean; nonEmpty?: string } = {}) {
  const item = z.string({ error: requiredOr("must be a non-empty string") })
    .min(1, { error: "must be a non-empty string" });
  let list = z.array(item, { error: "must be a list of strings" });
  if (o.nonEmpty) list = list.min(1, { error: o.nonEmpty });
  const checked = o.unique
    ? list.superRefine((xs, ctx) => {
      xs.forEach((x, i) => {
        if (xs.indexOf(x) !== i) {
          ctx.addIssue({ code: "custom", message: `lists "${x}" more than once`, input: xs });
        }
      });
    })
    : list;
  return orDefault(z.preprocess((v) => (typeof v === "string" ? [v] : v), checked), []);
}

/** A mapping; null or absent is an empty one (so its keys take their defaults). */
function section<S extends z.core.$ZodLooseShape>(shape: S) {
  return z.preprocess(
    (v) => (v === null || v === undefined ? {} : v),
    z.strictObject(shape, { error: requiredOr("must be a mapping") }),
  );
}

/**
 * Keys accepted with no effect here, per section path, and why. Their values are not read, so `???`
 * under them does no harm.
 */
export const NO_EFFECT: Record<string, Record<string, string>> = {
  "": {
    hydra: "Hydra's own settings",
    defaults: "Hydra's defaults list",
  },
  trainer: {
    devices: "one engine process trains here",
    accelerator: "the engine is the service's BACKEND setting",
    precision: "the engine's precision is the service's setting (PRECISION for onednn)",
    logger: "progress goes to the job's events (WatchJob) and the train command's output",
    enable_checkpointing: "checkpoints follow exp_manager.create_checkpoint_callback, as in NeMo",
    replace_sampler_ddp: "no distributed sampler: one process reads the data",
    use_distributed_sampler: "no distributed sampler: one process reads the data",
    benchmark: "cuDNN autotuning",
    enable_model_summary: "Lightning's console summary",
    enable_progress_bar: "Lightning's console progress bar",
    num_sanity_val_steps: "Lightning's pre-training validation check does not change training",
  },
  exp_manager: {
    log_step_timing: "step timing is in every step event (tokens per second, ETA)",
    step_timing_kwargs: "step timing is in every step event",
    wandb_logger_kwargs: "used only with create_wandb_logger, which must be false",
  },
  "exp_manager.checkpoint_callback_params": {
    verbose: "logging",
    save_nemo_on_train_end:
      "the run's tasks go to the registry (and to model.nemo_path when set) when it ends",
  },
  "exp_manager.early_stopping_callback_params": {
    verbose: "logging",
    log_rank_zero_only: "one process trains here",
  },
  model: {
    activations_checkpoint_granularity:
      "activation recomputation saves GPU memory; results are the same",
    activations_checkpoint_method:
      "activation recomputation saves GPU memory; results are the same",
    activations_checkpoint_num_layers:
      "activation recomputation saves GPU memory; results are the same",
    megatron_amp_O2: "mixed-precision plumbing of NeMo's GPU kernels",
    encoder_seq_length: "the frozen model's own n_positions bounds sequences",
    save_nemo_on_validation_end:
      "the run's tasks go to the registry (and to model.nemo_path when set) when it ends",
  },
  "model.inference": {
    add_BOS:
      "NeMo's prompt learning replaces it with model.data.add_bos (prompts come from the dataset)",
  },
  "model.data": {
    num_workers: "data loader processes",
    pin_memory: "page-locked host memory for GPU copies",
  },
};

/** The zod shape of NO_EFFECT's keys in one section: any value, unread. */
function noEffect(path: string): Record<string, ReturnType<typeof anyValue>> {
  return Object.fromEntries(Object.keys(NO_EFFECT[path] ?? {}).map((k) => [k, anyValue()]));
}

const monitorMode = () => orDefault(oneOf(["min", "max"]), "min");

const trainer = section({
  ...noEffect("trainer"),
  /** null or -1: no limit. Neither set: Lightning's 1000 epochs; both -1 is refused (endless). */
  max_epochs: nullable(int({ min: -1 })),
  max_steps: nullable(int({ min: -1 })),
  /** Lightning: an integer n validates every n steps, a float in (0, 1] that fraction of an epoch. */
  val_check_interval: orDefault(num({ gt: 0 }), 1),
  /** Clip the global gradient norm to this; 0 or null: no clipping. */
  gradient_clip_val: orDefault(num({ min: 0 }), 0),
  gradient_clip_algorithm: orDefault(oneOf(["norm"]), "norm"),
  /** Steps between step (progress) events. Lightning's default 50; NeMo's example says 10. */
  log_every_n_steps: orDefault(int({ min: 1 }), 50),
  accumulate_grad_batches: onlyValue(
    1,
    "accumulation follows model.global_batch_size / model.micro_batch_size, as in NeMo",
  ),
  num_nodes: onlyValue(1, "one engine process trains here"),
  strategy: anyValue().refine((v) => v === undefined || v === null || v === "auto", {
    error: 'must be "auto" or null: one engine process trains here',
  }),
  resume_from_checkpoint: onlyValue(
    null as never,
    "runs resume from their own checkpoint directory with exp_manager.resume_if_exists",
  ),
  check_val_every_n_epoch: onlyValue(1, "validation timing is trainer.val_check_interval"),
  limit_val_batches: anyValue().refine(
    (v) => v === undefined || v === null || v === 1 || v === 1.0,
    {
      error: "must be 1.0: validation always covers the whole validation set",
    },
  ),
  limit_test_batches: anyValue().refine((v) => v === undefined || v === null || v === 1, {
    error: "must be 1.0: testing always covers the whole test set",
  }),
  limit_train_batches: anyValue().refine((v) => v === undefined || v === null || v === 1, {
    error: "must be 1.0: an epoch is the whole training set",
  }),
});

const checkpointParams = section({
  ...noEffect("exp_manager.checkpoint_callback_params"),
  /** val_loss, or val_<metric> with model.report_validation_metric (validation_<metric> too). */
  monitor: orDefault(text(), "val_loss"),
  mode: monitorMode(),
  /** The k best checkpoints by the monitor are kept in the run directory; -1: all; 0: none. */
  save_top_k: orDefault(int({ min: -1 }), 3),
  /** The registry gets the best validation's tables (true) or the last step's (false). */
  save_best_model: orDefault(bool(), false),
  /** Also keep the last step's checkpoint (what a run resumes from). */
  save_last: orDefault(bool(), true),
  /** Names of the top-k checkpoints: `{val_loss:.3f}`, `{step}`, `{epoch}` fill in. */
  filename: orDefault(text(), "{val_loss:.3f}-{step}"),
  always_save_nemo: onlyValue(false, "the run's tasks are written once, when it ends"),
  model_parallel_size: onlyValue(1, "no model parallelism here"),
  every_n_epochs: anyValue().refine((v) => v === undefined || v === null || v === 1, {
    error: "must be 1: checkpoints are taken at each validation",
  }),
  every_n_train_steps: onlyValue(null as never, "checkpoints are taken at each validation"),
});

const earlyStoppingParams = section({
  ...noEffect("exp_manager.early_stopping_callback_params"),
  monitor: orDefault(text(), "val_loss"),
  mode: monitorMode(),
  /** An improvement of min_delta or less does not count (Lightning). */
  min_delta: orDefault(num({ min: 0 }), 0.001),
  /** Validations without improvement before stopping. */
  patience: orDefault(int({ min: 1 }), 10),
  /** Fail when the monitored metric is missing from a validation. */
  strict: orDefault(bool(), true),
  /** Stop when the monitored metric is NaN or infinite. */
  check_finite: orDefault(bool(), true),
  /** Stop once the monitor is better than this. */
  stopping_threshold: nullable(num()),
  /** Stop once the monitor is worse than this. */
  divergence_threshold: nullable(num()),
  check_on_train_epoch_end: anyValue().refine((v) => v === undefined || v === null || v === false, {
    error: "must be false or null: early stopping looks at each validation",
  }),
});

const expManager = section({
  ...noEffect("exp_manager"),
  /** Default: the top-level name. */
  name: nullable(text()),
  /** Runs go to exp_dir/name. Default null: the train command's --runs-dir. */
  exp_dir: nullable(text()),
  /** Exactly this directory, instead of exp_dir/name. */
  explicit_log_dir: nullable(text()),
  resume_if_exists: orDefault(bool(), false),
  resume_ignore_no_checkpoint: orDefault(bool(), false),
  create_checkpoint_callback: orDefault(bool(), true),
  checkpoint_callback_params: checkpointParams,
  create_early_stopping_callback: orDefault(bool(), false),
  early_stopping_callback_params: earlyStoppingParams,
  /** Event files in the run's directory, under tensorboard/ (NeMo's default: true). */
  create_tensorboard_logger: orDefault(bool(), true),
  create_wandb_logger: onlyValue(false, "no network logger: progress goes to the job's events"),
});

const template = z.record(z.string(), z.unknown(), { error: "must be a mapping" });

const promptTuning = section({
  /** One per new task (prompt tuning). Default: "random" for every task. */
  new_prompt_init_methods: orDefault(
    z.array(oneOf(INIT_METHODS, { normalise: (s) => s.toLowerCase() }), {
      error: "must be a list",
    }),
    [],
  ),
  new_prompt_init_text: orDefault(
    z.array(z.string({ error: "must be a string or null" }).nullable(), {
      error: "must be a list",
    }),
    [],
  ),
});

const pTuning = section({
  /** Default tpmlp, NeMo 1.20's. */
  encoder_type: orDefault(
    oneOf(ENCODER_TYPES, {
      normalise: (s) => s.toLowerCase(),
      hint: " (NeMo's tpmlp, mlp, lstm and embedding, and PEFT's three-layer MLP; biglstm is " +
        "not implemented)",
    }),
    "tpmlp",
  ),
  /**
   * nn.LSTM's dropout between LSTM layers, in training (NeMo passes it as lstm_dropout; the other
   * encoders ignore it, as NeMo's do).
   */
  dropout: orDefault(num({ min: 0, lt: 1 }), 0),
  /** LSTM layers, or the Linear layers of NeMo's mlp (at least 2). */
  num_layers: orDefault(int({ min: 1 }), 2),
  /** Default null: half the model's embedding size (NeMo's hidden_size // 2). */
  encoder_hidden: nullable(int({ min: 1 })),
  /** Standard deviation of tpmlp's initial weights. */
  init_std: orDefault(num({ gt: 0 }), 0.023),
});

const data = section({
  ...noEffect("model.data"),
  train_ds: stringList(),
  validation_ds: stringList(),
  /** Tested after training with the tables the run stores. */
  test_ds: stringList(),
  /**
   * Shuffle the training examples every epoch (seeded by model.seed). NeMo 1.20's GPT prompt
   * learning shuffles whatever this says; here false is honoured: file order every epoch.
   */
  shuffle: orDefault(bool(), true),
  /** Defaults for templates that do not set them; null: the template's own default. */
  add_bos: nullable(bool()),
  add_eos: nullable(bool()),
  max_seq_length: nullable(int({ min: 1 })),
  min_seq_length: nullable(int({ min: 1 })),
  /** Beyond NeMo: skip (and count) bad dataset lines instead of refusing to start. */
  skip_bad_lines: orDefault(bool(), false),
  /** Beyond NeMo: a record without one of its template's fields is a bad line, not filled with "". */
  refuse_missing_fields: orDefault(bool(), false),
  load_cache: onlyValue(false, "datasets are tokenized at each run; there is no cache to load"),
  train_cache_data_path: onlyValue(null as never, "there is no tokenized-data cache here"),
  validation_cache_data_path: onlyValue(null as never, "there is no tokenized-data cache here"),
  test_cache_data_path: onlyValue(null as never, "there is no tokenized-data cache here"),
});

const sched = section({
  name: oneOf(Object.keys(SCHEDULES) as [keyof typeof SCHEDULES], {
    required: ": the scheduler's name",
  }),
  warmup_steps: nullable(int({ min: 0 })),
  warmup_ratio: nullable(num({ min: 0, max: 1 })),
  constant_steps: nullable(int({ min: 0 })),
  constant_ratio: nullable(num({ min: 0, max: 1 })),
  hold_steps: onlyValue(0, "hold phases are not supported"),
  min_lr: orDefault(num({ min: 0 }), 0),
  reduce_on_plateau: onlyValue(false, "not supported"),
  /** Only ReduceLROnPlateau reads it, and that must be off: NeMo's meaning is no effect. */
  monitor: anyValue(),
  /** NeMo fills it from the trainer; the schedule always spans the run's own steps. */
  max_steps: anyValue(),
  interval: anyValue().refine((v) => v === undefined || v === null || v === "step", {
    error: 'must be "step": the learning rate follows optimizer steps',
  }),
  frequency: onlyValue(1, "the learning rate changes every step"),
});

const optim = section({
  /** fused_adam (Apex FusedAdam in AdamW mode) and adamw decouple weight decay; adam is L2. */
  name: orDefault(oneOf(["fused_adam", "adamw", "adam"]), "fused_adam"),
  lr: num({ gt: 0 }, " (the peak learning rate)"),
  weight_decay: orDefault(num({ min: 0 }), 0.01),
  betas: orDefault(
    z.tuple([num({ min: 0, max: 0.999999 }), num({ min: 0, max: 0.999999 })], {
      error: "must be two numbers",
    }),
    [0.9, 0.999],
  ),
  eps: orDefault(num({ min: 0 }), 1e-8),
  sched: nullable(sched),
});

/**
 * Generation for validation metrics (model.report_validation_metric) and for `eval --config`,
 * with NeMo's defaults.
 */
const inference = section({
  ...noEffect("model.inference"),
  greedy: orDefault(bool(), false),
  tokens_to_generate: orDefault(int({ min: 1 }), 30),
  min_tokens_to_generate: orDefault(int({ min: 0 }), 0),
  temperature: orDefault(num({ gt: 0 }), 1),
  /** 0: off. */
  top_k: orDefault(int({ min: 0 }), 0),
  top_p: orDefault(num({ gt: 0, max: 1 }), 0.9),
  /** 1: off. */
  repetition_penalty: orDefault(num({ gt: 0 }), 1.2),
  /** Generation stops at any of these strings. */
  end_strings: orDefault(stringList(), ["<|endoftext|>"]),
  /** eval writes each generated token's log-probability. */
  compute_logprob: orDefault(bool(), false),
  all_probs: onlyValue(false, "a full vocabulary distribution per generated token is not written"),
  /** Sequences per generation call. Default: the validation micro batch size. */
  batch_size: nullable(int({ min: 1 })),
});

const model = section({
  ...noEffect("model"),
  seed: orDefault(int({ min: 0 }), 1234),
  /** Where the run's new tasks are also exported (an archive of PEFT-format adapters). */
  nemo_path: nullable(text()),
  /** The registry directory the run adds its tasks to (NeMo: the .nemo it adds to). */
  restore_path: nullable(text()),
  /** The frozen model's directory (NeMo: its .nemo). Default null: the served model. */
  language_model_path: nullable(text()),
  virtual_prompt_style: oneOf(["p-tuning", "prompt-tuning"], {
    normalise: (s) => s.toLowerCase().replace("_", "-"),
    required: ': "p-tuning" or "prompt-tuning"',
  }),
  tensor_model_parallel_size: onlyValue(1, "no tensor parallelism here"),
  pipeline_model_parallel_size: onlyValue(1, "no pipeline parallelism here"),
  sequence_parallel: onlyValue(false, "no tensor parallelism here"),
  existing_tasks: stringList({ unique: true }),
  new_tasks: stringList({ unique: true, nonEmpty: "must name at least one task to learn" }),
  task_templates: orDefault(z.array(template, { error: "must be a list of templates" }), []),
  prompt_tuning: promptTuning,
  p_tuning: pTuning,
  data,
  global_batch_size: orDefault(int({ min: 1 }), 8),
  micro_batch_size: orDefault(int({ min: 1 }), 4),
  /** Default: global_batch_size / micro_batch_size. */
  validation_global_batch_size: nullable(int({ min: 1 })),
  validation_micro_batch_size: nullable(int({ min: 1 })),
  /** Drop the last partial validation batch. */
  validation_drop_last: orDefault(bool(), true),
  /** Generate answers at validation and report validation_metric (and the task's own metrics). */
  report_validation_metric: orDefault(bool(), false),
  validation_metric: orDefault(
    oneOf(["accuracy"], { hint: " (BLEU and ROUGE are not implemented)" }),
    "accuracy",
  ),
  /**
   * Beyond NeMo: what a generated validation answer is compared with. "sequence" (NeMo's):
   * generation from one token before the answer, the whole decoded sequence equal to the
   * example's; "answer": generation after the whole prompt, the trimmed answer equal to the gold.
   */
  validation_match: orDefault(oneOf(["sequence", "answer"]), "sequence"),
  optim,
  inference,
});

/** The whole file. The model is read first: most mistakes are there. */
export const configSchema = z.preprocess(
  (v) => v,
  z.strictObject({
    ...noEffect(""),
    model,
    name: orDefault(text(), "megatron_virtual_prompt_gpt"),
    trainer,
    exp_manager: expManager,
  }, { error: requiredOr("must be a mapping with a model section") }),
);

/** The file as read, before rules across keys and the template checks. */
export type RawConfig = z.output<typeof configSchema>;
