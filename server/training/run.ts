/**
 * One training run from a NeMo-style configuration: check the tasks, load and tokenise the
 * datasets, train, and write each new task's materialised table to the registry as a new
 * version. Existing tasks are read-only here: the run refuses to start if one is missing, and
 * never writes them.
 */
import { isAbsolute, join, resolve, sep } from "node:path";
import { writeFileDurable } from "../util/durable_fs.ts";
import { invalidArgument, notFound, resourceExhausted } from "../errors.ts";
import type { Engine } from "../model/engine.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { type DatasetSource, loadDataset } from "../prompts/dataset.ts";
import { tokenizeExample } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import {
  type ModelFingerprint,
  type TaskDraft,
  type TaskStore,
  type TaskVersionMeta,
  validateDraft,
  versionChecksum,
} from "../registry/mod.ts";
import * as YAML from "yaml";
import {
  adamwOptions,
  samplingOf,
  scheduleOptions,
  totalSteps,
  type TrainingConfig,
} from "./config.ts";
import { writeTaskArchive } from "../registry/archive.ts";
import { removeCheckpoint } from "./checkpoint.ts";
import { MetricAccumulator } from "./metrics.ts";
import type { TaskVersionRef, TrainingEvent } from "./events.ts";
import {
  type Monitor,
  stepsPerEpochOf,
  Trainer,
  type TrainPlan,
  type ValidationExample,
} from "./trainer.ts";

export interface RunDeps {
  engine: Engine;
  tokenizer: Tokenizer;
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** Relative dataset paths resolve against this directory. */
  baseDir: string;
  /**
   * Dataset files must resolve inside baseDir (a service reading files for remote callers must
   * not open arbitrary paths). Default false: the local train command reads any file.
   */
  confineToBaseDir?: boolean;
  /** Where checkpoints go: <runsDir>/<config name>. Omit for no checkpoints. */
  runsDir?: string;
  /**
   * This run's own checkpoint directory, instead of one named after the config (a service gives
   * each job its own, so no caller text ever becomes a path and no two runs share one). A
   * checkpoint found there is always resumed: it can only be this run's.
   */
  checkpointDir?: string;
  /** Validation examples whose answers are generated for metrics. Default 256. */
  valGenerateLimit?: number;
  /** The most optimiser steps a run may take (max_steps, or max_epochs x steps per epoch). */
  maxTotalSteps?: number;
  /** Notes for the person running it (a checkpoint not resumed, and why). */
  log?: (message: string) => void;
  /** Records sent with the request, added to the configured files. */
  inline?: { train?: readonly unknown[]; validation?: readonly unknown[] };
  /** Keys of the configuration that have no effect here, for the started event. */
  notes?: string[];
  /**
   * Write model.nemo_path's archive (the train command does; a service refuses the key, since no
   * caller text becomes a server path). Default false.
   */
  writeNemoPath?: boolean;
}

export interface RunResult {
  versions: TaskVersionMeta[];
  metrics: Record<string, Record<string, number>>;
}

function templatesOf(config: TrainingConfig): Map<string, TaskTemplate> {
  return new Map(config.model.task_templates.map((t) => [t.taskname, t]));
}

/** Builds the trainer's plan from the configuration; `stepsPerEpoch` fixes the schedule length. */
export function planFrom(
  config: TrainingConfig,
  stepsPerEpoch: number,
  valGenerateLimit: number,
): TrainPlan {
  const m = config.model, t = config.trainer, em = config.exp_manager;
  const templates = templatesOf(config);
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

const RUN_FILE = "run.json";

/**
 * What a checkpoint belongs to: a digest of everything that makes its state meaningful (tasks and
 * templates, style, encoder, optimiser, batch, seed, data files and the base model), not of the
 * step limits, so a run continued with more steps still resumes.
 */
async function runIdentity(config: TrainingConfig, fingerprint: ModelFingerprint): Promise<string> {
  const m = config.model;
  const basis = JSON.stringify({
    tasks: m.new_tasks,
    existing: m.existing_tasks,
    templates: m.task_templates,
    style: m.virtual_prompt_style,
    prompt_tuning: m.prompt_tuning,
    p_tuning: m.p_tuning,
    optim: m.optim,
    batch: [m.global_batch_size, m.micro_batch_size],
    seed: m.seed,
    data: [m.data.train_ds, m.data.validation_ds],
    model: fingerprint,
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(basis));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function readRunIdentity(dir: string): Promise<string | null> {
  try {
    const raw = JSON.parse(await Deno.readTextFile(join(dir, RUN_FILE)));
    return typeof raw?.identity === "string" ? raw.identity : null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof SyntaxError) return null;
    throw e;
  }
}

async function writeRunIdentity(dir: string, identity: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${RUN_FILE}.${crypto.randomUUID()}.tmp`);
  await writeFileDurable(tmp, new TextEncoder().encode(JSON.stringify({ identity }) + "\n"));
  await Deno.rename(tmp, join(dir, RUN_FILE));
}

/** A run name as a directory name: one path segment, nothing that climbs or hides. */
function runDirName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(name) || name.includes("..")) {
    throw invalidArgument(
      `name (exp_manager.name) names the checkpoint directory and must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127} without "..": found ${
        JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}...` : name)
      }`,
    );
  }
  return name;
}

export async function runTraining(
  config: TrainingConfig,
  deps: RunDeps,
  emit: (e: TrainingEvent) => void,
  signal?: AbortSignal,
): Promise<RunResult> {
  const m = config.model;
  const templates = templatesOf(config);
  for (const task of m.existing_tasks) {
    if (!(await deps.store.has(task))) {
      throw notFound(`model.existing_tasks: task "${task}" is not in the registry`);
    }
  }
  const path = (p: string, field: string) =>
    datasetPath(deps.baseDir, p, field, deps.confineToBaseDir ?? false);
  // As NeMo: the input is cut to leave room for the answer generated at validation, so a long
  // example never runs generation past max_seq_length (or the model's n_positions).
  const toGenerate = m.inference.tokens_to_generate;
  const generationPrompt = (
    template: TaskTemplate,
    record: Record<string, string>,
    e: { ids: Int32Array; answerStart: number; truncated: boolean },
  ) => {
    const room = Math.min(template.max_seq_length, deps.engine.config.nPositions) - toGenerate;
    if (room < 1) return null;
    // An uncut prompt that fits already is the one inference tokenization would give.
    const fits = e.answerStart <= room && e.answerStart >= template.min_seq_length;
    if (!e.truncated && fits) return undefined;
    const r = tokenizeExample({ ...template, max_seq_length: room }, record, deps.tokenizer, {
      forInference: true,
    });
    return r.ok ? r.example.ids : null;
  };
  const load = async (
    files: string[],
    inline: readonly unknown[] | undefined,
    name: string,
    field: string,
  ) => {
    const all: ValidationExample[] = [];
    let skipped = 0;
    const dropped: Record<string, number> = {};
    // Files are named in messages as the configuration wrote them, never by their server path.
    const sources: [DatasetSource, string | undefined][] = files.map((
      f,
      i,
    ) => [path(f, `${field}[${i}]`), f]);
    if (inline?.length) sources.push([{ name, records: inline }, undefined]);
    for (const [source, displayName] of sources) {
      const ds = await loadDataset(source, templates, deps.tokenizer, {
        skipBadLines: m.data.skip_bad_lines,
        displayName,
      });
      skipped += ds.skipped.length;
      for (const [task, n] of Object.entries(ds.droppedByTask)) {
        dropped[task] = (dropped[task] ?? 0) + n;
      }
      ds.examples.forEach((e, i) => {
        if (!m.new_tasks.includes(e.taskname)) return; // existing tasks' records are not trained on
        const template = templates.get(e.taskname)!;
        const record = ds.records[i];
        all.push({
          ...e,
          answer: record[template.answer_field] ?? "",
          record,
          generationPrompt: generationPrompt(template, record, e),
        });
      });
    }
    return { examples: all, skipped, dropped };
  };
  const train = await load(
    m.data.train_ds,
    deps.inline?.train,
    "inline training records",
    "model.data.train_ds",
  );
  const val = await load(
    m.data.validation_ds,
    deps.inline?.validation,
    "inline validation records",
    "model.data.validation_ds",
  );
  const test = await load(m.data.test_ds, undefined, "test records", "model.data.test_ds");
  if (train.examples.length === 0) {
    throw invalidArgument(
      "model.data.train_ds: no training examples of the new tasks (give JSONL files or inline records)",
    );
  }
  const droppedExamples: Record<string, number> = {};
  for (const d of [train.dropped, val.dropped, test.dropped]) {
    for (const [task, n] of Object.entries(d)) {
      droppedExamples[task] = (droppedExamples[task] ?? 0) + n;
    }
  }
  let encoderFrom: TaskVersionRef | undefined;
  const stepsPerEpoch = stepsPerEpochOf(train.examples.length, m.global_batch_size);
  const plan = planFrom(config, stepsPerEpoch, deps.valGenerateLimit ?? 256);
  const steps = totalSteps(config.trainer, stepsPerEpoch);
  if (deps.maxTotalSteps !== undefined && steps > deps.maxTotalSteps) {
    throw resourceExhausted(
      `the run would take ${steps} steps (trainer.max_epochs x ${stepsPerEpoch} steps per epoch, or trainer.max_steps): at most ${deps.maxTotalSteps} (the server's max_train_steps)`,
      "max_train_steps",
    );
  }
  // NeMo's default encoder width is half the model's (hidden_size // 2).
  if (plan.encoder && plan.encoder.hiddenSize === 0) {
    plan.encoder.hiddenSize = Math.max(1, Math.floor(deps.engine.config.nEmbd / 2));
  }
  // As NeMo, a run starts a fresh encoder; it continues from the one stored with the same tasks
  // only when it resumes on purpose (exp_manager.resume_if_exists).
  if (plan.style === "p-tuning" && plan.encoder && config.exp_manager.resume_if_exists) {
    const from = await storedEncoder(deps.store, plan);
    if (from) {
      plan.encoder.state = from.state;
      encoderFrom = from.version;
    }
  }
  // Interleave validation examples across tasks so a generation limit samples every task.
  const valExamples = interleaveByTask(val.examples);
  const metricTasks = Object.fromEntries(
    m.new_tasks.map((t) => [t, { answerField: templates.get(t)!.answer_field }]),
  );
  // NeMo's layout: exactly explicit_log_dir, else exp_dir/name (exp_dir defaults to the runs dir).
  const em = config.exp_manager;
  const runsDir = em.exp_dir ?? deps.runsDir;
  const checkpointDir = !em.create_checkpoint_callback ? undefined : deps.checkpointDir ??
    (em.explicit_log_dir
      ? resolve(em.explicit_log_dir)
      : runsDir
      ? resolve(runsDir, runDirName(em.name || config.name))
      : undefined);
  // A job run again (taken over, or restarted) after a first attempt began in its own directory.
  let retried = false;
  if (checkpointDir) {
    // A checkpoint belongs to one run: the same tasks, templates, settings and base model. Any
    // other run finding it there starts fresh (and says so) instead of resuming someone else's.
    const identity = await runIdentity(config, deps.fingerprint);
    const found = await readRunIdentity(checkpointDir);
    // A job's own directory (deps.checkpointDir) holds only that job's checkpoint: a job taken
    // over or restarted always continues it, whatever resume_if_exists says about other runs.
    const resume = config.exp_manager.resume_if_exists || deps.checkpointDir !== undefined;
    const reuse = resume && found === identity;
    retried = deps.checkpointDir !== undefined && found === identity;
    if (!reuse) {
      if (found !== null && found !== identity && resume) {
        deps.log?.(
          `${checkpointDir}: the checkpoint there belongs to another run (other tasks, templates, settings or base model): starting fresh`,
        );
      }
      await removeCheckpoint(checkpointDir, "latest");
      await removeCheckpoint(checkpointDir, "best");
      await writeRunIdentity(checkpointDir, identity);
    }
  }
  const trainer = new Trainer(plan, {
    engine: deps.engine,
    encode: (s) => deps.tokenizer.encode(s),
    decode: (ids) => deps.tokenizer.decode(ids),
    eosId: deps.tokenizer.eosId,
    newMetrics: () => {
      const acc = new MetricAccumulator(metricTasks);
      return {
        add: (task, pred, ex) => acc.add(task, pred, ex.record as Record<string, string>),
        result: () => acc.result(),
      };
    },
    checkpointDir,
    data: {
      droppedExamples,
      skippedRecords: train.skipped + val.skipped + test.skipped,
      encoderFrom,
      notes: deps.notes ?? [],
    },
    onEvent: emit,
    signal,
  });
  const result = await trainer.run(train.examples, valExamples);
  signal?.throwIfAborted();
  // The test set is measured on the tables the run stores (NeMo tests the model it ends with).
  if (test.examples.length > 0) {
    const t = await trainer.evaluate(result.tables, interleaveByTask(test.examples));
    for (const [task, metrics] of Object.entries(t.metrics)) {
      const prefixed = Object.fromEntries(
        Object.entries(metrics).map(([k, v]) => [`test_${k}`, v]),
      );
      result.metrics[task] = { ...result.metrics[task], ...prefixed };
    }
  }
  signal?.throwIfAborted();
  // Every task's version is checked before the first is written, so a run does not stop halfway
  // with some of its tasks stored (what can still fail after that is the disk itself).
  const drafts = plan.newTasks.map((t) => {
    const draft: TaskDraft = {
      template: templates.get(t.task)!,
      totalVirtualTokens: t.virtualTokens,
      hiddenSize: deps.engine.config.nEmbd,
      table: result.tables.get(t.task)!,
      encoderState: result.encoderState,
      fingerprint: deps.fingerprint,
      metrics: flattenMetrics(result.metrics[t.task], result.bestValLoss),
      source: plan.style === "p-tuning" ? "p_tuning" : "prompt_tuning",
    };
    validateDraft(t.task, draft, deps.fingerprint);
    return [t.task, draft] as const;
  });
  const versions: TaskVersionMeta[] = [];
  const written: TaskVersionMeta[] = [];
  try {
    for (const [task, draft] of drafts) {
      // A retried job whose first attempt wrote this very version (and was killed before its end
      // was recorded) reports that version instead of writing it twice.
      const earlier = retried ? await identicalLatest(deps.store, task, draft) : undefined;
      if (earlier) {
        versions.push(earlier);
        continue;
      }
      const v = await deps.store.put(task, draft);
      const { table: _t, encoderState: _e, ...meta } = v;
      versions.push(meta);
      written.push(meta);
    }
  } catch (e) {
    // All of the run's tasks or none: the versions this attempt wrote go again.
    for (const v of written) await deps.store.deleteVersion(v.name, v.version);
    throw e;
  }
  if (m.nemo_path && deps.writeNemoPath) {
    await writeTaskArchive(resolve(m.nemo_path), {
      configYaml: YAML.stringify(config),
      tasks: drafts.map(([task, draft]) => ({ task, draft })),
    });
  }
  // The run is finished and its result is in the registry: the same config runs afresh next
  // time instead of resuming at its last step (the best checkpoint stays for inspection).
  if (checkpointDir) await removeCheckpoint(checkpointDir, "latest");
  emit({
    type: "completed",
    written: versions.map((v) => ({ task: v.name, version: v.version })),
    metrics: result.metrics,
    steps: result.steps,
    earlyStopped: result.earlyStopped,
  });
  return { versions, metrics: result.metrics };
}

function flattenMetrics(
  m: Record<string, number> | undefined,
  valLoss: number | null,
): Record<string, number> {
  // The task's own validation loss when measured; the run's overall one otherwise.
  const { loss, test_loss, ...rest } = m ?? {};
  const out: Record<string, number> = { ...rest };
  if (loss !== undefined) out.val_loss = loss;
  else if (valLoss !== null) out.val_loss = valLoss;
  if (test_loss !== undefined) out.test_loss = test_loss;
  // A metric nothing was measured for (every validation example dropped) is left out.
  for (const [k, v] of Object.entries(out)) if (!Number.isFinite(v)) delete out[k];
  return out;
}

/** The task's latest version when it holds exactly `draft` (tables, encoder, template, model). */
async function identicalLatest(
  store: TaskStore,
  task: string,
  draft: TaskDraft,
): Promise<TaskVersionMeta | undefined> {
  if (!(await store.has(task))) return undefined;
  const meta = await store.describe(task);
  const same = meta.checksum === versionChecksum(draft.table, draft.encoderState) &&
    JSON.stringify(meta.template) === JSON.stringify(draft.template) &&
    meta.fingerprint.weightsHash === draft.fingerprint.weightsHash;
  return same ? meta : undefined;
}

function interleaveByTask<T extends { taskname: string }>(xs: T[]): T[] {
  const byTask = new Map<string, T[]>();
  for (const x of xs) byTask.set(x.taskname, [...(byTask.get(x.taskname) ?? []), x]);
  const lists = [...byTask.values()];
  const out: T[] = [];
  for (let i = 0; out.length < xs.length; i++) {
    for (const l of lists) if (i < l.length) out.push(l[i]);
  }
  return out;
}

/**
 * The encoder a previous p-tuning run stored with the same tasks (same names, virtual-token
 * counts, kind and sizes), so tuning continues where it ended; undefined when there is none.
 */
async function storedEncoder(
  store: TaskStore,
  plan: TrainPlan,
): Promise<
  {
    state: NonNullable<NonNullable<TrainPlan["encoder"]>["state"]>;
    version: { task: string; version: number };
  } | undefined
> {
  const first = plan.newTasks[0];
  if (!first || !(await store.has(first.task))) return undefined;
  const prev = await store.get(first.task);
  const st = prev.encoderState;
  const enc = plan.encoder!;
  if (!st || st.kind !== enc.kind) return undefined;
  const cfg = st.config as {
    hidden_size?: number;
    num_layers?: number;
    tasks?: { task: string; virtual_tokens: number }[];
  };
  const same = cfg.hidden_size === enc.hiddenSize && cfg.num_layers === enc.numLayers &&
    JSON.stringify(cfg.tasks) ===
      JSON.stringify(plan.newTasks.map((t) => ({ task: t.task, virtual_tokens: t.virtualTokens })));
  return same
    ? { state: st.tensors, version: { task: prev.name, version: prev.version } }
    : undefined;
}
