/**
 * One training run, planned (run_plan.ts: every rule met, the data loaded), in named stages:
 * take the encoder to continue from, claim the checkpoint directory, train, measure the test
 * set, write every new task's table to the registry as a new version (all or none), and report
 * it done. Existing tasks are read-only here: the plan refused a missing one, and none is written.
 */
import { join, resolve } from "node:path";
import { writeFileDurable } from "../util/durable_fs.ts";
import { invalidArgument, writingTo } from "../errors.ts";
import type { Engine } from "../model/engine.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import {
  type ModelFingerprint,
  type TaskDraft,
  type TaskStore,
  type TaskVersionMeta,
  validateDraft,
  versionChecksum,
} from "../registry/mod.ts";
import * as YAML from "yaml";
import type { LoadedConfig, TrainingConfig } from "./config.ts";
import { writeTaskArchive } from "../registry/archive.ts";
import { CHECKPOINT_STORAGE, removeCheckpoint } from "./checkpoint.ts";
import { MetricAccumulator } from "./metrics.ts";
import type { TaskVersionRef, TrainingEvent } from "./events.ts";
import { type InlineRecords, planRun, type RunPlan, type RunRules } from "./run_plan.ts";
import { TENSORBOARD_DIR, TensorBoardLog } from "./tensorboard.ts";
import { Trainer, type TrainerResult, type TrainPlan } from "./trainer.ts";

export interface RunDeps {
  engine: Engine;
  tokenizer: Tokenizer;
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** Where runs go (checkpoints, event files): <runsDir>/<config name>. Omit for neither. */
  runsDir?: string;
  /**
   * This run's own directory (its checkpoint, and its event files under tensorboard/), instead of
   * one named after the config (a service gives each job its own, so no caller text ever becomes
   * a path and no two runs share one). A checkpoint found there is always resumed: it can only be
   * this run's.
   */
  checkpointDir?: string;
  /**
   * Notes for the person running it (a checkpoint not resumed, and why; where the event files
   * go, or why they stopped).
   */
  log?: (message: string) => void;
  /**
   * Write model.nemo_path's archive (the train command does; a service refuses the key, since no
   * caller text becomes a server path). Default false.
   */
  writeNemoPath?: boolean;
}

export interface RunResult {
  versions: TaskVersionMeta[];
  metrics: Record<string, Record<string, number>>;
  /** Where the run's TensorBoard event files are; absent when it writes none. */
  tensorboardDir?: string;
}

/** Plans the configuration under `rules` and runs it: the train command's whole run. */
export async function trainFromConfig(
  loaded: LoadedConfig,
  rules: RunRules,
  deps: RunDeps & { inline?: InlineRecords },
  emit: (e: TrainingEvent) => void,
  signal?: AbortSignal,
): Promise<RunResult> {
  const world = { model: deps.engine.config, tokenizer: deps.tokenizer, store: deps.store };
  const plan = await planRun(loaded, rules, world, deps.inline);
  return await runTraining(plan, deps, emit, signal);
}

/** Runs a planned run to its end: the tasks written and reported, or a throw. */
export async function runTraining(
  run: RunPlan,
  deps: RunDeps,
  emit: (e: TrainingEvent) => void,
  signal?: AbortSignal,
): Promise<RunResult> {
  const board = tensorBoard(run.config, deps);
  try {
    const result = await train(run, deps, board ? withBoard(board, emit) : emit, signal);
    return board ? { ...result, tensorboardDir: board.dir } : result;
  } finally {
    board?.close();
  }
}

/** The run's stages, in order (see the file's comment). */
async function train(
  run: RunPlan,
  deps: RunDeps,
  emit: (e: TrainingEvent) => void,
  signal: AbortSignal | undefined,
): Promise<RunResult> {
  const encoderFrom = await continueEncoder(run, deps.store);
  const checkpoint = await claimCheckpointDir(run.config, deps);
  const trainer = newTrainer(run, deps, checkpoint.dir, encoderFrom, emit, signal);
  // In file order, as NeMo's validation loader (not shuffled) batches them.
  const result = await trainer.run(run.train.examples, run.validation.examples);
  signal?.throwIfAborted();
  await measureTestSet(run, trainer, result);
  signal?.throwIfAborted();
  // A finished run resumed (NeMo resumes its last checkpoint and trains no further) has nothing
  // new to store: the versions it wrote are its result, as for a job retried after writing them.
  const nothingTrained = result.steps === result.resumedFromStep && result.steps > 0;
  const versions = await writeTasks(run, deps, result, checkpoint.retried || nothingTrained);
  // A job's own directory is never run again: its checkpoint goes with it. A run directory keeps
  // the last checkpoint, as NeMo's does, so the same config with resume_if_exists resumes there
  // (and, given more steps, continues).
  if (deps.checkpointDir) await removeCheckpoint(deps.checkpointDir, "latest");
  emit({
    type: "completed",
    written: versions.map((v) => ({ task: v.name, version: v.version })),
    metrics: result.metrics,
    steps: result.steps,
    earlyStopped: result.earlyStopped,
  });
  return { versions, metrics: result.metrics };
}

/** The run's TensorBoard log, when exp_manager.create_tensorboard_logger asks and it has a dir. */
function tensorBoard(config: TrainingConfig, deps: RunDeps): TensorBoardLog | undefined {
  const dir = config.exp_manager.create_tensorboard_logger ? runDir(config, deps) : undefined;
  if (!dir) return undefined;
  const tb = join(dir, TENSORBOARD_DIR);
  deps.log?.(`TensorBoard event files go to ${tb} (tensorboard --logdir ${tb})`);
  return new TensorBoardLog({ dir: tb, hparams: config, log: deps.log });
}

/** `emit`, after the event is in the event files (whoever sees a job end finds them whole). */
function withBoard(board: TensorBoardLog, emit: (e: TrainingEvent) => void) {
  return (e: TrainingEvent) => {
    board.observe(e);
    emit(e);
  };
}

/**
 * The run's directory (NeMo's layout: exactly explicit_log_dir, else exp_dir/name, exp_dir
 * defaulting to the runs dir; a job's own directory for the service); undefined: none.
 */
function runDir(config: TrainingConfig, deps: RunDeps): string | undefined {
  if (deps.checkpointDir) return deps.checkpointDir;
  const em = config.exp_manager;
  if (em.explicit_log_dir) return resolve(em.explicit_log_dir);
  const runsDir = em.exp_dir ?? deps.runsDir;
  return runsDir ? resolve(runsDir, runDirName(em.name || config.name)) : undefined;
}

/**
 * As NeMo, a run starts a fresh encoder; it continues from the one stored with the same tasks
 * only when it resumes on purpose (exp_manager.resume_if_exists). Sets the plan's encoder state
 * and says whose it is.
 */
async function continueEncoder(
  run: RunPlan,
  store: TaskStore,
): Promise<TaskVersionRef | undefined> {
  const plan = run.trainer;
  if (plan.style !== "p-tuning" || !plan.encoder || !run.config.exp_manager.resume_if_exists) {
    return undefined;
  }
  const from = await storedEncoder(store, plan);
  if (!from) return undefined;
  plan.encoder.state = from.state;
  return from.version;
}

/**
 * The run's directory (`runDir`) as its checkpoint directory, made this run's: a checkpoint
 * belongs to one run (the same tasks, templates, settings and base model), and any other run
 * finding it there starts fresh (and says so). `retried`: a job run again (taken over, or
 * restarted) after a first attempt began in its own directory.
 */
async function claimCheckpointDir(
  config: TrainingConfig,
  deps: RunDeps,
): Promise<{ dir?: string; retried: boolean }> {
  const em = config.exp_manager;
  if (!em.create_checkpoint_callback) return { retried: false };
  const dir = runDir(config, deps);
  if (!dir) return { retried: false };
  const identity = await runIdentity(config, deps.fingerprint);
  const found = await readRunIdentity(dir);
  // A job's own directory (deps.checkpointDir) holds only that job's checkpoint: a job taken
  // over or restarted always continues it, whatever resume_if_exists says about other runs.
  const resume = em.resume_if_exists || deps.checkpointDir !== undefined;
  if (!(resume && found === identity)) {
    if (found !== null && found !== identity && resume) {
      deps.log?.(
        `${dir}: the checkpoint there belongs to another run (other tasks, templates, settings or base model): starting fresh`,
      );
    }
    await removeCheckpoint(dir, "latest");
    await removeCheckpoint(dir, "best");
    await writeRunIdentity(dir, identity);
  }
  return { dir, retried: deps.checkpointDir !== undefined && found === identity };
}

function newTrainer(
  run: RunPlan,
  deps: RunDeps,
  checkpointDir: string | undefined,
  encoderFrom: TaskVersionRef | undefined,
  emit: (e: TrainingEvent) => void,
  signal?: AbortSignal,
): Trainer {
  const metricTasks = Object.fromEntries(
    run.config.model.new_tasks.map((t) => [t, { answerField: run.templates.get(t)!.answer_field }]),
  );
  return new Trainer(run.trainer, {
    engine: deps.engine,
    encode: (s) => deps.tokenizer.encode(s),
    decode: (ids) => deps.tokenizer.decode(ids),
    eosId: deps.tokenizer.eosId,
    bosId: deps.tokenizer.bosId,
    newMetrics: () => {
      const acc = new MetricAccumulator(metricTasks);
      return {
        add: (task, pred, ex) => acc.add(task, pred, ex.record as Record<string, string>),
        result: () => acc.result(),
      };
    },
    checkpointDir,
    data: {
      droppedExamples: run.droppedExamples,
      skippedRecords: run.skippedRecords,
      encoderFrom,
      notes: run.notes,
    },
    onEvent: emit,
    signal,
  });
}

/** The test set, measured on the tables the run stores (NeMo tests the model it ends with). */
async function measureTestSet(run: RunPlan, trainer: Trainer, result: TrainerResult) {
  if (run.test.examples.length === 0) return;
  const t = await trainer.evaluate(result.tables, run.test.examples);
  for (const [task, metrics] of Object.entries(t.metrics)) {
    const prefixed = Object.fromEntries(Object.entries(metrics).map(([k, v]) => [`test_${k}`, v]));
    result.metrics[task] = { ...result.metrics[task], ...prefixed };
  }
}

/**
 * Writes every new task's version, or none: each is checked before the first is written, and
 * the versions this attempt wrote go again when a later write fails. With `reuse` (a retried
 * job whose first attempt wrote a version and was killed before its end was recorded, or a
 * finished run resumed) a task whose latest version holds exactly this result reports that
 * version instead of writing it twice.
 */
async function writeTasks(
  run: RunPlan,
  deps: RunDeps,
  result: TrainerResult,
  reuse: boolean,
): Promise<TaskVersionMeta[]> {
  const plan = run.trainer;
  const drafts = plan.newTasks.map((t) => {
    const draft: TaskDraft = {
      template: run.templates.get(t.task)!,
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
      const earlier = reuse ? await identicalLatest(deps.store, task, draft) : undefined;
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
    for (const v of written) await deps.store.deleteVersion(v.name, v.version);
    throw e;
  }
  const m = run.config.model;
  if (m.nemo_path && deps.writeNemoPath) {
    await writeTaskArchive(resolve(m.nemo_path), {
      configYaml: YAML.stringify(run.config),
      tasks: drafts.map(([task, draft]) => ({ task, draft })),
    });
  }
  return versions;
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
  await writingTo(CHECKPOINT_STORAGE, async () => {
    await Deno.mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${RUN_FILE}.${crypto.randomUUID()}.tmp`);
    await writeFileDurable(tmp, new TextEncoder().encode(JSON.stringify({ identity }) + "\n"));
    await Deno.rename(tmp, join(dir, RUN_FILE));
  });
}

/** A run name as a directory name: one path segment, nothing that climbs or hides. */
function runDirName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(name) || name.includes("..")) {
    throw invalidArgument(
      `name (exp_manager.name) names the run directory (checkpoints, event files) and must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127} without "..": found ${
        JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}...` : name)
      }`,
    );
  }
  return name;
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
