import { ServiceError } from "../errors.ts";
import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import * as YAML from "yaml";
import {
  adamwOptions,
  type ConfigOptions,
  type LoadedConfig,
  loadTrainingConfig,
  parseTrainingConfig,
  samplingOf,
  scheduleOptions,
  totalSteps,
  validateTrainingConfig,
} from "./config.ts";
import { createSchedule } from "./schedule.ts";

const FIXTURES = new URL("../../test/fixtures/configs/", import.meta.url).pathname;
const NEMO = `${FIXTURES}nemo_prompt_learning.yaml`;
const MINIMAL = `${FIXTURES}sentiment_prompt_tuning.yaml`;
const nemoText = await Deno.readTextFile(NEMO);
const minimalText = await Deno.readTextFile(MINIMAL);

/** The NeMo fixture with Hydra-style overrides applied. */
function nemoWith(...overrides: string[]): LoadedConfig {
  return parseTrainingConfig(nemoText, { file: "nemo.yaml", overrides });
}

/** The parts of the minimal fixture that tests change. */
interface MinimalRaw {
  trainer: Record<string, unknown>;
  model: {
    virtual_prompt_style?: unknown;
    prompt_tuning?: unknown;
    data: Record<string, unknown>;
    optim: Record<string, unknown>;
  };
}

/** The minimal fixture as a plain object, changed by `edit`, then validated. */
function minimalWith(edit: (raw: MinimalRaw) => void, opts: ConfigOptions = {}): LoadedConfig {
  const raw = YAML.parse(minimalText) as MinimalRaw;
  edit(raw);
  return validateTrainingConfig(raw, opts);
}

Deno.test("a NeMo prompt-learning config loads with NeMo's meaning", async () => {
  const { config, notes } = await loadTrainingConfig(NEMO);
  // Hardware and logging keys are reported once each, as having no effect here.
  assertEquals(notes.length, 13);
  assert(notes.includes(
    "trainer.precision has no effect here: the engine's precision is the service's setting (PRECISION for onednn)",
  ));
  assertEquals(config.name, "megatron_virtual_prompt_gpt");
  assertEquals(config.trainer, {
    max_epochs: 3,
    max_steps: null,
    val_check_interval: { kind: "epoch_fraction", fraction: 1 },
    gradient_clip_val: 1,
    log_every_n_steps: 10,
  });
  const em = config.exp_manager;
  assertEquals(em.name, "megatron_virtual_prompt_gpt"); // ${name}
  assertEquals(em.resume_if_exists, true);
  assertEquals(em.checkpoint_callback_params, {
    monitor: "val_loss",
    mode: "min",
    save_top_k: 2,
    save_best_model: true,
    save_last: true,
    filename: "megatron_gpt_prompt_tune--{val_loss:.3f}-{step}",
  });
  assertEquals(em.create_early_stopping_callback, true);
  assertEquals(em.early_stopping_callback_params, {
    monitor: "val_loss",
    mode: "min",
    min_delta: 0.001,
    patience: 10,
    strict: false,
    check_finite: true,
    stopping_threshold: null,
    divergence_threshold: null,
  });

  const m = config.model;
  assertEquals(m.seed, 1234);
  assertEquals(m.nemo_path, "megatron_virtual_prompt_gpt.nemo"); // ${name}.nemo
  assertEquals(m.restore_path, "registry/");
  assertEquals(m.language_model_path, "models/tiny-gpt2");
  assertEquals(m.virtual_prompt_style, "p-tuning");
  assertEquals(m.existing_tasks, ["squad"]);
  assertEquals(m.new_tasks, ["sentiment", "intent_and_slot"]);
  assertEquals([m.global_batch_size, m.micro_batch_size], [8, 4]);
  assertEquals([m.validation_global_batch_size, m.validation_micro_batch_size], [8, 4]);
  assertEquals(m.p_tuning, {
    encoder_type: "lstm",
    num_layers: 2,
    encoder_hidden: 2048,
    init_std: 0.023,
    dropout: 0,
  });
  assertEquals(m.prompt_tuning, {
    new_prompt_init_methods: ["text", "random"],
    new_prompt_init_text: ["classify the sentiment of this financial news", null],
  });
  assertEquals(m.data.train_ds, [
    "data/splits/sentiment_train.jsonl",
    "data/splits/intent_and_slot_train.jsonl",
  ]);
  assertEquals(m.data.test_ds, []);
  assertEquals(m.data.shuffle, true);
  assertEquals(m.optim, {
    name: "fused_adam",
    lr: 1e-4,
    weight_decay: 0.01,
    betas: [0.9, 0.98],
    eps: 1e-8,
    sched: {
      name: "CosineAnnealing",
      kind: "cosine",
      warmup_steps: 50,
      warmup_ratio: null,
      constant_steps: 0,
      constant_ratio: null,
      min_lr: 0,
    },
  });
  assertEquals(m.inference, {
    greedy: false,
    tokens_to_generate: 30,
    min_tokens_to_generate: 0,
    temperature: 1,
    top_k: 0,
    top_p: 0.9,
    repetition_penalty: 1.2,
    end_strings: ["<|endoftext|>"],
    compute_logprob: false,
    batch_size: null,
  });
  assertEquals([m.validation_drop_last, m.report_validation_metric], [false, false]);
});

Deno.test("NeMo templates get their fields from the placeholders and defaults from model.data", () => {
  const { config } = nemoWith();
  const [sentiment, intent, squad] = config.model.task_templates;
  assertEquals(sentiment, {
    taskname: "sentiment",
    prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
    prompt_template_fields: ["sentence", "label"],
    total_virtual_tokens: 10,
    virtual_token_splits: [10],
    truncate_field: null,
    answer_field: "label",
    answer_only_loss: true,
    add_bos: false,
    add_eos: true, // model.data.add_eos
    max_seq_length: 1024, // model.data.max_seq_length
    min_seq_length: 1,
  });
  assertEquals(intent.virtual_token_splits, [15, 5]);
  assertEquals(squad.prompt_template_fields, ["context", "question", "answer"]);
  assertEquals(squad.truncate_field, "context");
  // A template's own setting wins over model.data.
  const own = nemoWith("model.task_templates.0.add_eos=false", "model.data.add_bos=true");
  assertEquals(own.config.model.task_templates[0].add_eos, false);
  assertEquals(own.config.model.task_templates[0].add_bos, true);
});

Deno.test("a minimal config takes the documented defaults", () => {
  const { config, notes } = parseTrainingConfig(minimalText);
  assertEquals(notes, []);
  assertEquals(config.name, "megatron_virtual_prompt_gpt");
  // NeMo's and Lightning's defaults.
  assertEquals(config.trainer, {
    max_epochs: 4,
    max_steps: null,
    val_check_interval: { kind: "epoch_fraction", fraction: 1 },
    gradient_clip_val: 0,
    log_every_n_steps: 50,
  });
  const em = config.exp_manager;
  assertEquals([em.resume_if_exists, em.resume_ignore_no_checkpoint], [false, false]);
  assertEquals(em.create_early_stopping_callback, false);
  assertEquals(em.checkpoint_callback_params, {
    monitor: "val_loss",
    mode: "min",
    save_top_k: 3,
    save_best_model: false,
    save_last: true,
    filename: "{val_loss:.3f}-{step}",
  });
  assertEquals(em.early_stopping_callback_params, {
    monitor: "val_loss",
    mode: "min",
    min_delta: 0.001,
    patience: 10,
    strict: true,
    check_finite: true,
    stopping_threshold: null,
    divergence_threshold: null,
  });
  assertEquals(config.exp_manager.name, "megatron_virtual_prompt_gpt");
  const m = config.model;
  assertEquals([m.seed, m.global_batch_size, m.micro_batch_size], [1234, 8, 4]);
  assertEquals([m.nemo_path, m.restore_path], [null, null]);
  assertEquals(m.existing_tasks, []);
  assertEquals(m.data.train_ds, ["data/splits/sentiment_train.jsonl"]); // one string: one file
  assertEquals(m.data.skip_bad_lines, false);
  // NeMo 1.20's default encoder; encoder_hidden null is half the model's size, filled at the run.
  assertEquals(m.p_tuning, {
    encoder_type: "tpmlp",
    num_layers: 2,
    encoder_hidden: null,
    init_std: 0.023,
    dropout: 0,
  });
  assertEquals([m.validation_drop_last, m.report_validation_metric], [true, false]);
  assertEquals(m.optim, {
    name: "adamw",
    lr: 0.03,
    weight_decay: 0.01,
    betas: [0.9, 0.999],
    eps: 1e-8,
    sched: null,
  });
  // NeMo's validation generation defaults: sampling, top_p 0.9, repetition penalty 1.2.
  assertEquals(
    [m.inference.greedy, m.inference.top_p, m.inference.repetition_penalty],
    [false, 0.9, 1.2],
  );
  assertEquals(m.task_templates[0].add_eos, true);
});

Deno.test("without a prompt_tuning section every new task starts at random", () => {
  const { config } = minimalWith((r) => delete r.model.prompt_tuning);
  assertEquals(config.model.prompt_tuning, {
    new_prompt_init_methods: ["random"],
    new_prompt_init_text: [null],
  });
});

Deno.test("template errors name the YAML path and the task", () => {
  assertThrows(
    () => nemoWith("model.task_templates.1.virtual_token_splits=[15, 4]"),
    ServiceError,
    'nemo.yaml:86: model.task_templates[1]: task "intent_and_slot": virtual_token_splits must sum ' +
      "to total_virtual_tokens (20): current sum is 19",
  );
  assertThrows(
    () => nemoWith("model.task_templates.2.taskname=sentiment"),
    ServiceError,
    'model.task_templates[2]: task "sentiment" already has a template at model.task_templates[0]',
  );
});

Deno.test("cross-field rules: task lists, templates and init texts", () => {
  assertThrows(
    () => nemoWith("model.existing_tasks=[squad, sentiment]"),
    ServiceError,
    'nemo.yaml:53: model: "sentiment" cannot be in both new_tasks and existing_tasks',
  );
  assertThrows(
    () => nemoWith("model.new_tasks=[sentiment, rte]"),
    ServiceError,
    'model.task_templates has no template for new task "rte": found templates for "sentiment", ' +
      '"intent_and_slot", "squad"',
  );
  assertThrows(
    () => nemoWith("model.new_tasks=[]"),
    ServiceError,
    "model.new_tasks must name at least one task",
  );
  assertThrows(
    () => nemoWith("model.new_tasks=[sentiment, sentiment]"),
    ServiceError,
    'model.new_tasks lists "sentiment" more than once',
  );
  // Init lists must pair with new_tasks when prompt tuning runs...
  assertThrows(
    () =>
      nemoWith(
        "model.virtual_prompt_style=prompt-tuning",
        "model.prompt_tuning.new_prompt_init_methods=[text]",
      ),
    ServiceError,
    "model.prompt_tuning.new_prompt_init_methods must give one method per new task (2: " +
      "sentiment, intent_and_slot): found 1",
  );
  assertThrows(
    () =>
      nemoWith(
        "model.virtual_prompt_style=prompt-tuning",
        "model.prompt_tuning.new_prompt_init_methods=[random, text]",
      ),
    ServiceError,
    "model.prompt_tuning.new_prompt_init_text[1] must be a non-empty text for new task " +
      '"intent_and_slot" (its init method is "text"): found null',
  );
  // ...but a p-tuning file may carry NeMo's unrelated example section.
  const p = nemoWith("model.prompt_tuning.new_prompt_init_methods=[text]");
  assertEquals(p.config.model.virtual_prompt_style, "p-tuning");
  assertThrows(
    () => nemoWith("model.prompt_tuning.new_prompt_init_methods=[text, words]"),
    ServiceError,
    'model.prompt_tuning.new_prompt_init_methods[1] must be one of "text", "random", "peft_random", "vocab": ' +
      'found "words"',
  );
  const vocab = nemoWith(
    "model.virtual_prompt_style=prompt-tuning",
    "model.prompt_tuning.new_prompt_init_methods=[vocab, random]",
  );
  assertEquals(vocab.config.model.prompt_tuning.new_prompt_init_text, [null, null]);
});

Deno.test("required values: style, lr, train_ds, a step limit, and ??? left in the file", () => {
  assertThrows(
    () => minimalWith((r) => delete r.model.virtual_prompt_style),
    ServiceError,
    'model.virtual_prompt_style is required: "p-tuning" or "prompt-tuning"',
  );
  assertThrows(
    () => nemoWith("model.virtual_prompt_style=inference"),
    ServiceError,
    'model.virtual_prompt_style must be one of "p-tuning", "prompt-tuning": found "inference"',
  );
  assertThrows(
    () => minimalWith((r) => delete r.model.optim.lr),
    ServiceError,
    "model.optim.lr is required",
  );
  assertThrows(
    () => minimalWith((r) => (r.model.data.train_ds = [])),
    ServiceError,
    "model.data.train_ds must list at least one JSONL file",
  );
  assertThrows(
    () => nemoWith("trainer.max_epochs=-1"),
    ServiceError,
    "trainer.max_epochs is -1 (no epoch limit) and max_steps sets none either",
  );
  assertThrows(
    () => nemoWith("model.language_model_path=???"),
    ServiceError,
    "nemo.yaml: model.language_model_path is required: the file leaves it ???",
  );
  // ??? under a key whose value is not read does no harm.
  assertEquals(nemoWith("model.data.pin_memory=???").config.model.data.shuffle, true);
});

Deno.test("NeMo parity: max_epochs null with max_steps -1 is Lightning's 1000 epochs", () => {
  // Lightning 2.0.7 src/lightning/pytorch/loops/utilities.py:70-77: "if max_epochs is None: if
  // max_steps == -1 ...: max_epochs = 1000". NeMo 1.20 hands trainer: to that Trainer as it is.
  const t = nemoWith("trainer.max_epochs=null", "trainer.max_steps=-1").config.trainer;
  assertEquals([t.max_epochs, t.max_steps], [1000, null]);
  // With a step limit, an unset epoch limit stays unset (utilities.py:78-79: max_epochs = -1).
  const s = nemoWith("trainer.max_epochs=null", "trainer.max_steps=40").config.trainer;
  assertEquals([s.max_epochs, s.max_steps], [null, 40]);
});

Deno.test("p_tuning: NeMo's tpmlp, mlp, lstm and embedding and PEFT's MLP by name", () => {
  assertThrows(
    () => nemoWith("model.p_tuning.encoder_type=biglstm"),
    ServiceError,
    'model.p_tuning.encoder_type must be one of "tpmlp", "mlp", "lstm", "peft_mlp", "embedding" ' +
      "(NeMo's tpmlp, mlp, lstm and embedding, and PEFT's three-layer MLP; biglstm is not " +
      'implemented): found "biglstm"',
  );
  assertEquals(
    nemoWith("model.p_tuning.encoder_type=MLP").config.model.p_tuning.encoder_type,
    "mlp",
  );
  // NeMo prompt_encoder.py v1.20.0:41-45 names four types; EMBEDDING is the table itself.
  const emb = nemoWith("model.p_tuning.encoder_type=embedding");
  assertEquals(emb.config.model.p_tuning.encoder_type, "embedding");
  assertThrows(
    () => nemoWith("model.p_tuning.encoder_type=embedding", "model.p_tuning.num_layers=3"),
    ServiceError,
    'model.p_tuning.num_layers must be 2 with encoder_type "embedding" (its depth is fixed)',
  );
  // NeMo's mlp is num_layers Linear layers (at least 2); PEFT's and tpmlp have a fixed depth.
  assertEquals(
    nemoWith("model.p_tuning.encoder_type=mlp", "model.p_tuning.num_layers=3").config.model
      .p_tuning.num_layers,
    3,
  );
  assertThrows(
    () => nemoWith("model.p_tuning.encoder_type=mlp", "model.p_tuning.num_layers=1"),
    ServiceError,
    'model.p_tuning.num_layers must be at least 2 with encoder_type "mlp"',
  );
  assertThrows(
    () => nemoWith("model.p_tuning.encoder_type=peft_mlp", "model.p_tuning.num_layers=3"),
    ServiceError,
    'model.p_tuning.num_layers must be 2 with encoder_type "peft_mlp" (its depth is fixed): found 3',
  );
  assertEquals(nemoWith("model.p_tuning.num_layers=3").config.model.p_tuning.num_layers, 3);
});

Deno.test("NeMo parity: p_tuning.dropout is the LSTM's dropout and does nothing elsewhere", () => {
  // megatron_base_prompt_learning_model.py v1.20.0:216 passes p_tuning.dropout as lstm_dropout;
  // prompt_encoder.py v1.20.0:237-244 gives it to nn.LSTM(dropout=lstm_dropout) and nothing else.
  const lstm = nemoWith("model.p_tuning.dropout=0.1");
  assertEquals(lstm.config.model.p_tuning.encoder_type, "lstm");
  assertEquals(lstm.config.model.p_tuning.dropout, 0.1);
  assertEquals(lstm.notes.filter((n) => n.includes("dropout")), []);
  const mlp = nemoWith("model.p_tuning.encoder_type=mlp", "model.p_tuning.dropout=0.1");
  assertEquals(mlp.config.model.p_tuning.dropout, 0);
  assertEquals(mlp.notes.filter((n) => n.includes("dropout")), [
    'model.p_tuning.dropout has no effect here: encoder_type "mlp" has no dropout (NeMo ' +
    "applies it between the LSTM's layers only)",
  ]);
  // torch.nn.LSTM refuses a dropout outside [0, 1]; 1 would drop everything.
  assertThrows(
    () => nemoWith("model.p_tuning.dropout=1"),
    ServiceError,
    "model.p_tuning.dropout must be a number >= 0 and < 1: found 1",
  );
});

Deno.test("batch sizes: global must be a multiple of micro", () => {
  assertThrows(
    () => nemoWith("model.micro_batch_size=3"),
    ServiceError,
    "model.global_batch_size (8) must be a multiple of model.micro_batch_size (3)",
  );
  assertThrows(
    () => nemoWith("model.validation_micro_batch_size=5"),
    ServiceError,
    "model.validation_global_batch_size (8) must be a multiple of model.validation_micro_batch_size (5)",
  );
  assertThrows(
    () => nemoWith("model.global_batch_size=0"),
    ServiceError,
    "model.global_batch_size must be an integer >= 1: found 0",
  );
  assertThrows(
    () => nemoWith("trainer.accumulate_grad_batches=2"),
    ServiceError,
    "trainer.accumulate_grad_batches must be 1: accumulation follows model.global_batch_size / " +
      "model.micro_batch_size, as in NeMo: found 2",
  );
});

Deno.test("optim and sched: names, warmup, constant steps, min_lr", () => {
  assertEquals(
    nemoWith("model.optim.sched.name=WarmupAnnealing").config.model.optim.sched?.kind,
    "linear",
  );
  assertEquals(
    nemoWith("model.optim.sched.name=WarmupPolicy").config.model.optim.sched?.kind,
    "constant",
  );
  assertEquals(nemoWith("~model.optim.sched").config.model.optim.sched, null);
  assertThrows(
    () => nemoWith("model.optim.sched.name=NoamAnnealing"),
    ServiceError,
    'model.optim.sched.name must be one of "CosineAnnealing", "WarmupAnnealing", "WarmupPolicy", ' +
      '"ConstantLR", "cosine", "linear", "constant": found "NoamAnnealing"',
  );
  assertThrows(
    () => nemoWith("model.optim.name=sgd"),
    ServiceError,
    'model.optim.name must be one of "fused_adam", "adamw", "adam": found "sgd"',
  );
  assertThrows(
    () => nemoWith("model.optim.sched.warmup_ratio=0.1"),
    ServiceError,
    "model.optim.sched: give warmup_steps or warmup_ratio, not both",
  );
  assertThrows(
    () => nemoWith("model.optim.sched.name=WarmupAnnealing", "model.optim.sched.constant_steps=5"),
    ServiceError,
    "constant_steps/constant_ratio apply to CosineAnnealing only: found WarmupAnnealing",
  );
  assertThrows(
    () => nemoWith("model.optim.sched.min_lr=0.001"),
    ServiceError,
    "model.optim.sched.min_lr (0.001) must not exceed model.optim.lr (0.0001)",
  );
  assertThrows(
    () => nemoWith("model.optim.sched.reduce_on_plateau=true"),
    ServiceError,
    "model.optim.sched.reduce_on_plateau must be false: not supported: found true",
  );
  assertThrows(
    () => nemoWith("model.optim.betas=[0.9]"),
    ServiceError,
    "model.optim.betas must be two numbers: found [0.9]",
  );
  assertThrows(
    () => nemoWith("model.optim.lr=fast"),
    ServiceError,
    'model.optim.lr must be a number > 0: found "fast"',
  );
});

Deno.test("val_check_interval: YAML integers are steps, floats a fraction of an epoch", () => {
  assertEquals(nemoWith("trainer.val_check_interval=50").config.trainer.val_check_interval, {
    kind: "steps",
    steps: 50,
  });
  assertEquals(nemoWith("trainer.val_check_interval=1").config.trainer.val_check_interval, {
    kind: "steps",
    steps: 1,
  });
  assertEquals(nemoWith("trainer.val_check_interval=0.25").config.trainer.val_check_interval, {
    kind: "epoch_fraction",
    fraction: 0.25,
  });
  assertThrows(
    () => nemoWith("trainer.val_check_interval=1.5"),
    ServiceError,
    "trainer.val_check_interval must be a number <= 1: found 1.5",
  );
  // Plain JSON cannot tell 1 from 1.0: integers above 1 are steps, the rest fractions.
  const json = (v: number) =>
    minimalWith((r) => (r.trainer.val_check_interval = v)).config.trainer.val_check_interval;
  assertEquals(json(200), { kind: "steps", steps: 200 });
  assertEquals(json(1), { kind: "epoch_fraction", fraction: 1 });
});

Deno.test("a key that is neither honoured nor NeMo's is refused, with the closest known key", () => {
  const e = assertThrows(
    () => nemoWith("model.optim.lrr=0.1", "trainer.max_step=10"),
    ServiceError,
    "nemo.yaml: model.optim.lrr is not a key of NeMo's prompt-learning configuration (did you " +
      "mean lr?): expected one of name, lr, weight_decay, betas, eps, sched",
  );
  // Every problem is listed, not only the first.
  assert(
    e.message.includes(
      "trainer.max_step is not a key of NeMo's prompt-learning " +
        "configuration (did you mean max_steps?)",
    ),
    e.message,
  );
});

Deno.test("a file of many stray keys gets a bounded answer", () => {
  const many = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`k${i}`, i]));
  const e = assertThrows(
    () => validateTrainingConfig({ ...YAML.parse(minimalText), ...many }),
    ServiceError,
    "(and 4995 more unknown keys)",
  );
  assert(e.message.length < 4000, `${e.message.length} characters`);
});

Deno.test("NeMo keys with one meaning here are refused with any other value, saying why", () => {
  const cases: [string, string][] = [
    [
      "model.tensor_model_parallel_size=2",
      "model.tensor_model_parallel_size must be 1: no tensor parallelism here: found 2",
    ],
    [
      "model.pipeline_model_parallel_size=4",
      "model.pipeline_model_parallel_size must be 1: no pipeline parallelism here: found 4",
    ],
    ["trainer.num_nodes=2", "trainer.num_nodes must be 1: one engine process trains here: found 2"],
    ["exp_manager.create_wandb_logger=true", "exp_manager.create_wandb_logger must be false"],
    ["model.data.load_cache=true", "model.data.load_cache must be false"],
    ["model.inference.all_probs=true", "model.inference.all_probs must be false"],
    ["trainer.limit_val_batches=0.5", "trainer.limit_val_batches must be 1.0"],
    [
      "model.validation_metric=bleu",
      'model.validation_metric must be one of "accuracy" (BLEU and ROUGE are not implemented): found "bleu"',
    ],
    [
      "exp_manager.checkpoint_callback_params.monitor=val_acc",
      "exp_manager.checkpoint_callback_params.monitor must be a metric the run logs: one of val_loss",
    ],
  ];
  for (const [override, message] of cases) {
    assertThrows(() => nemoWith(override), ServiceError, message);
  }
  // NeMo parity: the metric is logged as val_<metric>, `self.log(f'val_{metric_name}', ...)` with
  // AccuracyScore's {'accuracy': ...} (megatron_gpt_prompt_learning_model.py v1.20.0:474,
  // prompt_learning_metrics.py v1.20.0:37), once validation answers are generated. Before,
  // val_accuracy was refused. This project's earlier name, validation_accuracy, still reads.
  for (const monitor of ["val_accuracy", "validation_accuracy"]) {
    const acc = nemoWith(
      "model.report_validation_metric=true",
      `exp_manager.checkpoint_callback_params.monitor=${monitor}`,
      "exp_manager.checkpoint_callback_params.mode=max",
      `exp_manager.early_stopping_callback_params.monitor=${monitor}`,
      "exp_manager.early_stopping_callback_params.mode=max",
    );
    assertEquals(acc.config.exp_manager.checkpoint_callback_params.monitor, "val_accuracy");
    assertEquals(acc.config.exp_manager.early_stopping_callback_params.monitor, "val_accuracy");
  }
});

Deno.test("errors name the file, the line and the YAML path", () => {
  const text = minimalText.replace("lr: 0.03", "lr: fast");
  const line = text.split("\n").findIndex((l) => l.includes("lr: fast")) + 1;
  assertThrows(
    () => parseTrainingConfig(text, { file: "run.yaml" }),
    ServiceError,
    `run.yaml:${line}: model.optim.lr must be a number > 0: found "fast"`,
  );
});

Deno.test("interpolations: undefined, circular and resolver references are errors", () => {
  assertThrows(
    () => nemoWith("model.nemo_path=${model.output_dir}/x.nemo"),
    ServiceError,
    "nemo.yaml: model.nemo_path refers to ${model.output_dir}, which the file does not define",
  );
  assertThrows(
    () => nemoWith("model.seed=${model.micro_batch_size}", "model.micro_batch_size=${model.seed}"),
    ServiceError,
    "refers to itself",
  );
  assertThrows(
    () => nemoWith("model.restore_path=${oc.env:HOME}"),
    ServiceError,
    "interpolation ${oc.env:HOME} is not supported",
  );
  const spliced = nemoWith("model.nemo_path=out/${name}-${model.seed}.nemo");
  assertEquals(spliced.config.model.nemo_path, "out/megatron_virtual_prompt_gpt-1234.nemo");
});

Deno.test("YAML errors give the line; types are checked with the path", () => {
  assertThrows(
    () => parseTrainingConfig("model:\n  new_tasks: [a\n  seed: 1\n", { file: "bad.yaml" }),
    ServiceError,
    "bad.yaml: not valid YAML at line",
  );
  assertThrows(
    () => parseTrainingConfig("model: {}\nmodel: {}\n", { file: "dup.yaml" }),
    ServiceError,
    "dup.yaml: not valid YAML at line 2",
  );
  assertThrows(
    () => nemoWith("model.new_tasks={a: 1}"),
    ServiceError,
    'model.new_tasks must be a list of strings: found {"a":1}',
  );
  assertThrows(
    () => nemoWith("model.data.shuffle=sometimes"),
    ServiceError,
    'model.data.shuffle must be true or false: found "sometimes"',
  );
  assertThrows(
    () => nemoWith("model.optim=3"),
    ServiceError,
    "model.optim must be a mapping: found 3",
  );
  assertThrows(
    () => validateTrainingConfig([], { file: "x.json" }),
    ServiceError,
    "x.json: the configuration must be a mapping with a model section: found []",
  );
  assertThrows(
    () => parseTrainingConfig(nemoText, { overrides: ["trainer.max_steps"] }),
    ServiceError,
    'override "trainer.max_steps" must look like key.path=value',
  );
});

Deno.test("a JSON object config validates like the YAML file", () => {
  const fromYaml = parseTrainingConfig(nemoText).config;
  const fromJson = validateTrainingConfig(JSON.parse(JSON.stringify(YAML.parse(nemoText))));
  assertEquals(fromJson.config, fromYaml);
});

Deno.test("adamwOptions(), scheduleOptions() and totalSteps() carry the config to the trainer", () => {
  const { config } = nemoWith("trainer.max_steps=500");
  assertEquals(adamwOptions(config.model.optim), {
    betas: [0.9, 0.98],
    eps: 1e-8,
    weightDecay: 0.01,
    decoupled: true,
  });
  assertEquals(
    adamwOptions(nemoWith("model.optim.name=adam").config.model.optim).decoupled,
    false,
  );
  // 3 epochs of 100 steps would be 300 steps; max_steps 500 is not reached first.
  const steps = totalSteps(config.trainer, 100);
  assertEquals(steps, 300);
  assertEquals(totalSteps(nemoWith("trainer.max_steps=120").config.trainer, 100), 120);
  const schedule = createSchedule(scheduleOptions(config.model.optim, steps));
  assertEquals(schedule.warmupSteps, 50);
  assertEquals(schedule.lrAt(50), 1e-4);
  assertEquals(schedule.lrAt(300), 0);
  const flat = createSchedule(
    scheduleOptions(nemoWith("~model.optim.sched").config.model.optim, 10),
  );
  assertEquals([flat.lrAt(0), flat.lrAt(9)], [1e-4, 1e-4]);
});

Deno.test("interpolation fan-out and alias bombs are refused quickly, naming the limit", () => {
  // 30 references per level over 5 levels: 30^5 values if each were expanded separately.
  const levels = ["l0", "l1", "l2", "l3", "l4", "l5"];
  const lines = [`l5: "x"`];
  for (let i = 4; i >= 0; i--) {
    lines.push(
      `${levels[i]}: "${Array.from({ length: 30 }, () => `\${${levels[i + 1]}}`).join("")}"`,
    );
  }
  const t0 = performance.now();
  const e = assertThrows(
    () => parseTrainingConfig(`name: bomb\n${lines.join("\n")}\n`, { file: "bomb.yaml" }),
    ServiceError,
    "longer than 1048576 characters",
  );
  assertEquals(e.kind, "invalid_argument");
  assert(performance.now() - t0 < 2000, `took ${performance.now() - t0} ms`);
  // YAML aliases: the parser's own alias limit applies.
  const bomb = [
    "a: &a [x, x, x, x, x, x, x, x, x]",
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]",
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]",
    "f: [*e, *e, *e, *e, *e, *e, *e, *e, *e]",
  ].join("\n");
  assertThrows(() => parseTrainingConfig(bomb, { file: "alias.yaml" }), ServiceError, "alias.yaml");
});

Deno.test("NeMo parity: samplingOf() gives greedy decoding no repetition penalty, sampling its own", () => {
  // text_generation_utils.py v1.20.0:725-726: greedy is a plain argmax; the penalty is in the
  // sampling branch (:730-731). Validation and `eval --config` decode with samplingOf().
  const inf = (over: string[]) => nemoWith(...over).config.model.inference;
  assertEquals(
    samplingOf(inf(["model.inference.greedy=true", "model.inference.repetition_penalty=1.2"]), 1)
      .repetitionPenalty,
    1,
  );
  assertEquals(
    samplingOf(inf(["model.inference.greedy=false", "model.inference.repetition_penalty=1.2"]), 1)
      .repetitionPenalty,
    1.2,
  );
});
