/**
 * The training loop: prompt tuning or p-tuning of many tasks at once against the frozen model.
 * schedule -> pack -> loss and input gradient -> table gradients -> clip -> AdamW, with periodic
 * validation (loss and generated-answer metrics), early stopping, and latest/best checkpoints a
 * killed run resumes from. Existing tasks are never touched; new tasks are written to the store
 * only when training completes.
 */
import { invalidArgument } from "../errors.ts";
import { ensureTfBackend } from "../model/backend.ts";
import { createYielder } from "../util/event_loop.ts";
import { mulberry32, seedOf } from "../util/random.ts";
import type { Engine } from "../model/engine.ts";
import {
  generateAndScore,
  type MetricSink as GenericMetricSink,
  type ValidationGeneration,
} from "./validation_scoring.ts";

export type { ValidationGeneration };
import { crossEntropy, packBatch, tableGradients, type TrainExample } from "./batch.ts";
import {
  type CheckpointState,
  loadCheckpoint,
  removeCheckpoint,
  saveCheckpoint,
} from "./checkpoint.ts";
import { checkpointName, TopK } from "./top_k.ts";
import { AdamW, clipGradNorm } from "./optimizer.ts";
import { directTables, type PromptParams, type TrainingPass } from "./prompt_params.ts";
import { createSchedule, type ScheduleOptions } from "./schedule.ts";
import {
  better,
  EarlyStopping,
  type EarlyStoppingOptions,
  type MonitorMode,
  worst,
} from "./early_stopping.ts";
import type { PromptInitMethod } from "./config.ts";
import type { TaskVersionRef, TrainingEvent } from "./events.ts";
import type { EncoderKind } from "./prompt_encoder.ts";

export type PromptStyle = "prompt-tuning" | "p-tuning";
export type InitMethod = PromptInitMethod;

export interface NewTaskPlan {
  task: string;
  virtualTokens: number;
  init: { method: InitMethod; text?: string };
}

/**
 * Subscribers see progress at least this often (ms): a step event whenever this long has passed
 * since the last, whatever log_every_n_steps is (as a progress bar is apart from logging).
 */
export const PROGRESS_MS = 1000;

export interface TrainPlan {
  style: PromptStyle;
  newTasks: NewTaskPlan[];
  encoder?: {
    /** See prompt_encoder.ts: tpmlp and mlp are NeMo's, lstm both's, peft_mlp PEFT's MLP. */
    kind: EncoderKind;
    hiddenSize: number;
    /** LSTM layers (lstm) or Linear layers (mlp); 2 for tpmlp and peft_mlp. */
    numLayers: number;
    /** tpmlp's weight std (NeMo p_tuning.init_std). Default 0.023. */
    initStd?: number;
    /** lstm's dropout between its layers in training (NeMo p_tuning.dropout). Default 0. */
    dropout?: number;
    /** Start from a stored encoder (the registry keeps it) instead of a fresh initialisation. */
    state?: Record<string, { shape: number[]; data: Float32Array }>;
  };
  optim: {
    lr: number;
    weightDecay: number;
    betas: [number, number];
    eps: number;
    /** true: AdamW (decoupled decay; NeMo's fused_adam and adamw); false: Adam with L2 decay (adam). */
    decoupled: boolean;
    gradClip: number;
  };
  /** The schedule; its length is maxSteps when set, else the epochs' steps (NeMo's). */
  schedule: Omit<ScheduleOptions, "maxSteps">;
  maxEpochs: number;
  /** Stop after this many optimiser steps (-1 or 0: no limit beyond maxEpochs). */
  maxSteps: number;
  batchSize: number;
  /**
   * Examples per engine call within a step (memory bound); the step's gradient is the same as
   * one call over the whole batch. Default: batchSize.
   */
  microBatchSize?: number;
  /** Reshuffle the training examples every epoch (model.data.shuffle). Default true. */
  shuffle?: boolean;
  /**
   * A step event every this many steps, and at the last (trainer.log_every_n_steps): the steps
   * whose metrics are logged. Default 1. Progress does not wait for them: a step event also
   * comes whenever PROGRESS_MS has passed since the last one.
   */
  logEveryNSteps?: number;
  /** Validate every this many steps (0: once per epoch). */
  valInterval: number;
  /**
   * Validation batches (model.validation_*_batch_size, validation_drop_last): the last partial
   * global batch is left out when dropLast. Default: the training batch sizes, nothing dropped.
   */
  validation?: { globalBatchSize: number; microBatchSize: number; dropLast: boolean };
  /**
   * Answers generated at validation for metrics (model.report_validation_metric with
   * model.inference); absent: validation measures the loss only.
   */
  generation?: ValidationGeneration;
  /** What the best checkpoint means and which are kept (exp_manager.checkpoint_callback_params). */
  checkpoint?: CheckpointPlan;
  earlyStopping?: EarlyStoppingPlan;
  seed: number;
}

/** The values a monitor can name: val_loss, or NeMo's val_accuracy when answers are generated. */
export type Monitor = "val_loss" | "val_accuracy";

export interface CheckpointPlan {
  monitor: Monitor;
  mode: MonitorMode;
  /** Keep this many best checkpoints by the monitor (-1: all; 0: none). */
  saveTopK: number;
  /** The result is the best validation's tables (true) or the last step's (false). */
  saveBestModel: boolean;
  /** Keep the last step's checkpoint (what a killed run resumes from). */
  saveLast: boolean;
  /** The top-k checkpoints' names: `{val_loss:.3f}-{step}`. */
  filename: string;
}

export interface EarlyStoppingPlan extends EarlyStoppingOptions {
  monitor: Monitor;
  /** A validation without the monitored value fails the run (Lightning's strict). */
  strict: boolean;
}

const DEFAULT_CHECKPOINT: CheckpointPlan = {
  monitor: "val_loss",
  mode: "min",
  saveTopK: 1,
  saveBestModel: true,
  saveLast: true,
  filename: "{val_loss:.3f}-{step}",
};

export interface ValidationExample extends TrainExample {
  /** The record's answer text (gold). */
  answer: string;
  record: Record<string, unknown>;
  /**
   * The prompt generation starts from: the input cut to leave room for the tokens to generate
   * (NeMo's max_seq_length - tokens_to_generate). Absent when it cannot be cut to fit (no
   * truncate_field): the example then counts for the loss only. Default: the prompt of `ids`.
   */
  generationPrompt?: Int32Array | null;
}

/** What the trainer's started event says about the data, which the caller loaded. */
export interface DataSummary {
  droppedExamples: Record<string, number>;
  skippedRecords: number;
  encoderFrom?: TaskVersionRef;
  /** Configuration keys that have no effect here, each once. */
  notes?: string[];
}

export interface TrainerResult {
  /**
   * Materialised tables of the best validation point (checkpoint.saveBestModel) or of the last
   * step (otherwise, and without validation).
   */
  tables: Map<string, Float32Array>;
  /** The encoder that produced `tables`. */
  encoderState: ReturnType<PromptParams["encoderState"]>;
  /** The validation metrics of `tables` (empty when they were not validated). */
  metrics: Record<string, Record<string, number>>;
  steps: number;
  /** The step the run resumed at (0: it started afresh); equal to `steps`: it trained none. */
  resumedFromStep: number;
  /** The validation loss of `tables`; null when they were not validated. */
  bestValLoss: number | null;
  earlyStopped: boolean;
}

/** What one validation measured. */
export interface ValidationResult {
  loss: number;
  /** Per task: loss, and the metrics of generated answers. */
  metrics: Record<string, Record<string, number>>;
  /** Exact-match fraction over every generated answer; NaN when none was generated. */
  accuracy: number;
}

/** Scores generated answers per task; the metrics module plugs in here. */
export type MetricSink = GenericMetricSink<ValidationExample>;

export interface TrainerDeps {
  engine: Engine;
  decode(ids: readonly number[]): string;
  encode(text: string): number[];
  eosId: number;
  /** Default eosId (GPT-2's). */
  bosId?: number;
  newMetrics(): MetricSink;
  /** Directory for latest/best checkpoints; a run finding one there resumes from it. */
  checkpointDir?: string;
  /** Folded into the started event. */
  data?: DataSummary;
  /** Every event but the job's lifecycle ones (queued, completed, failed, cancelled). */
  onEvent(e: TrainingEvent): void;
  signal?: AbortSignal;
  now?: () => number;
}

function permutation(n: number, seed: number): Int32Array {
  const rnd = mulberry32(seed), p = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

function gaussian(rnd: () => number): number {
  const u = Math.max(rnd(), 1e-12), v = rnd();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Initial table of a new task: text embeddings (tiled/truncated), sampled vocab rows, or random. */
export function initialTable(
  plan: NewTaskPlan,
  deps: Pick<TrainerDeps, "engine" | "encode">,
  seed: number,
): Float32Array {
  const { engine } = deps, C = engine.config.nEmbd, n = plan.virtualTokens;
  const rnd = mulberry32(seed);
  if (plan.init.method === "text") {
    const ids = deps.encode(plan.init.text ?? "");
    if (ids.length === 0) {
      throw invalidArgument(
        `task "${plan.task}": init text for the "text" method must not be empty`,
      );
    }
    return engine.embed(Array.from({ length: n }, (_, i) => ids[i % ids.length]));
  }
  if (plan.init.method === "vocab") {
    // PEFT's SAMPLE_VOCAB: token ids drawn uniformly from the whole vocabulary.
    return engine.embed(
      Array.from({ length: n }, () => Math.floor(rnd() * engine.config.vocabSize)),
    );
  }
  // NeMo's random init is Xavier normal over the [n, C] table (fan_in C, fan_out n); PEFT's is
  // N(0, 1), the default of the nn.Embedding it creates.
  const std = plan.init.method === "peft_random" ? 1 : Math.sqrt(2 / (n + C));
  return Float32Array.from({ length: n * C }, () => gaussian(rnd) * std);
}

/**
 * Optimiser steps in one epoch: whole batches only. As NeMo (its training sampler drops the last
 * partial batch), the examples left over go unseen that epoch; the shuffle differs each epoch.
 */
export function stepsPerEpochOf(examples: number, batchSize: number): number {
  const steps = Math.floor(examples / batchSize);
  if (steps < 1) {
    throw invalidArgument(
      `model.global_batch_size (${batchSize}) is larger than the training set (${examples} examples): NeMo drops the partial batch, so no step would run`,
    );
  }
  return steps;
}

/** The value a monitor names in one validation (NaN when not measured). */
export function monitored(monitor: Monitor, v: ValidationResult): number {
  return monitor === "val_loss" ? v.loss : v.accuracy;
}

export class Trainer {
  readonly #plan: TrainPlan;
  readonly #deps: TrainerDeps;

  constructor(plan: TrainPlan, deps: TrainerDeps) {
    this.#plan = plan;
    this.#deps = deps;
  }

  async #makeParams(resume?: CheckpointState): Promise<PromptParams> {
    const { engine } = this.#deps, plan = this.#plan;
    if (plan.style === "p-tuning") {
      // TF.js (the encoders' framework) is loaded here, by the runs that need it, and only then.
      await ensureTfBackend();
      const { encoderTables } = await import("./encoder_params.ts");
      const enc = plan.encoder ??
        { kind: "lstm" as const, hiddenSize: engine.config.nEmbd, numLayers: 2 };
      const p = encoderTables(
        plan.newTasks.map((t) => ({ task: t.task, virtualTokens: t.virtualTokens })),
        { ...enc, seed: plan.seed, hidden: engine.config.nEmbd, state: enc.state },
      );
      if (resume) {
        for (const [name, data] of Object.entries(resume.params)) p.params.get(name)?.set(data);
        p.sync();
      }
      return p;
    }
    const init = new Map(
      plan.newTasks.map((
        t,
        i,
      ) => [
        t.task,
        resume?.params[`prompt.${t.task}`] ?? initialTable(t, this.#deps, plan.seed + i),
      ]),
    );
    return directTables(init);
  }

  /**
   * Loss (and, with plan.generation, generated-answer metrics) of `tables` on `examples`: what a
   * validation measures, and what the test set gets after training.
   */
  async evaluate(
    tables: Map<string, Float32Array>,
    examples: ValidationExample[],
  ): Promise<ValidationResult> {
    const { engine } = this.#deps, V = engine.config.vocabSize, plan = this.#plan;
    const vb = plan.validation ??
      {
        globalBatchSize: plan.batchSize,
        microBatchSize: plan.microBatchSize ?? plan.batchSize,
        dropLast: false,
      };
    // NeMo's validation loader drops the last partial global batch when validation_drop_last.
    const kept = vb.dropLast
      ? examples.slice(0, Math.floor(examples.length / vb.globalBatchSize) * vb.globalBatchSize)
      : examples;
    // As NeMo: the loss is the mean over global batches of the mean over their micro-batches of
    // each one's token mean (megatron_gpt_prompt_learning_model.py v1.20.0:320-324 for a batch,
    // :432 over the validation; megatron_gpt_model.py v1.20.0:918-923 within a micro-batch).
    // Per-task losses weight every scored token alike (NeMo reports none).
    const batchMeans: number[] = [];
    let microMeans: number[] = [];
    const endBatch = () => {
      if (microMeans.length) {
        batchMeans.push(microMeans.reduce((a, b) => a + b) / microMeans.length);
      }
      microMeans = [];
    };
    const perTask = new Map<string, { sum: number; n: number }>();
    const yieldNow = createYielder();
    for (let s = 0; s < kept.length; s += vb.microBatchSize) {
      await yieldNow();
      if (s % vb.globalBatchSize === 0) endBatch();
      const batch = kept.slice(s, s + vb.microBatchSize);
      const b = packBatch(engine, batch, tables);
      if (b.lossRows.length === 0) continue;
      let microSum = 0, microCount = 0;
      const { logits } = await engine.forward({
        embeds: b.embeds,
        seqs: b.seqs,
        logitRows: b.lossRows,
      });
      // Loss rows come example by example, as many as its loss covers.
      let r = 0;
      for (const [i, e] of batch.entries()) {
        const n = b.rowsPerExample[i];
        if (n === 0) continue;
        const rows = logits.subarray(r * V, (r + n) * V);
        const ce = crossEntropy(rows, b.targets.subarray(r, r + n), V) * n;
        const t = perTask.get(e.taskname) ?? { sum: 0, n: 0 };
        t.sum += ce;
        t.n += n;
        perTask.set(e.taskname, t);
        microSum += ce;
        microCount += n;
        r += n;
      }
      microMeans.push(microSum / microCount);
    }
    endBatch();
    const metrics: Record<string, Record<string, number>> = {};
    for (const [task, t] of perTask) metrics[task] = { loss: t.n ? t.sum / t.n : NaN };
    let accuracy = NaN;
    if (plan.generation) {
      const scores = await generateAndScore(engine, tables, kept, plan.generation, this.#deps);
      for (const [task, m] of Object.entries(scores.metrics)) {
        metrics[task] = { ...metrics[task], ...m };
      }
      accuracy = scores.accuracy;
    }
    const loss = batchMeans.length ? batchMeans.reduce((a, b) => a + b) / batchMeans.length : NaN;
    return { loss, metrics, accuracy };
  }

  async run(train: TrainExample[], val: ValidationExample[]): Promise<TrainerResult> {
    const plan = this.#plan, deps = this.#deps, { engine } = deps, C = engine.config.nEmbd;
    const cp = plan.checkpoint ?? DEFAULT_CHECKPOINT;
    const now = deps.now ?? (() => performance.now());
    if (train.length === 0) throw new RangeError("the training set is empty after tokenisation");
    for (const e of train) {
      if (!plan.newTasks.some((t) => t.task === e.taskname)) {
        throw new RangeError(`training example of task "${e.taskname}": not among new_tasks`);
      }
    }
    const stepsPerEpoch = stepsPerEpochOf(train.length, plan.batchSize);
    const totalSteps = plan.maxSteps > 0
      ? Math.min(plan.maxSteps, stepsPerEpoch * plan.maxEpochs)
      : stepsPerEpoch * plan.maxEpochs;
    // As NeMo: the schedule spans trainer.max_steps whenever it is set, even when the epoch limit
    // ends the run first; the epochs' steps only without it (modelPT.py v1.20.0:616-632).
    const scheduleSteps = plan.maxSteps > 0 ? plan.maxSteps : stepsPerEpoch * plan.maxEpochs;
    const schedule = createSchedule({ ...plan.schedule, maxSteps: scheduleSteps });
    const resume = deps.checkpointDir
      ? await loadCheckpoint(deps.checkpointDir, "latest")
      : undefined;
    const params = await this.#makeParams(resume);
    const optim = new AdamW({
      betas: plan.optim.betas,
      eps: plan.optim.eps,
      weightDecay: plan.optim.weightDecay,
      decoupled: plan.optim.decoupled,
    });
    if (resume?.optimizer) optim.loadState(resume.optimizer);
    let step = resume?.step ?? 0;
    // The best checkpoint follows any improvement of the checkpoint monitor; early stopping keeps
    // its own reference, moved only by an improvement of more than min_delta (as Lightning).
    let best = resume?.bestValLoss ?? worst(cp.mode);
    const es = plan.earlyStopping;
    const stopping = es
      ? new EarlyStopping(es, {
        best: resume?.stoppingBestLoss ?? resume?.bestValLoss ?? worst(es.mode),
        bad: resume?.badValidations ?? 0,
      })
      : undefined;
    const topK = new TopK(cp.saveTopK, cp.mode, resume?.topK ?? []);
    const bestCheckpoint = resume ? await loadCheckpoint(deps.checkpointDir!, "best") : undefined;
    let bestTables = bestCheckpoint?.tables;
    // The encoder stored with the tasks is the one that produced their (best) tables.
    let bestEncoder: TrainerResult["encoderState"];
    if (bestCheckpoint && plan.style === "p-tuning") {
      const atBest = await this.#makeParams(bestCheckpoint);
      bestEncoder = atBest.encoderState();
      atBest.dispose();
    }
    let bestMetrics: Record<string, Record<string, number>> = resume?.bestMetrics ?? {};
    let bestLoss: number | null = resume?.bestLoss ?? null;
    const lv = resume?.lastValidation;
    let last: ValidationResult | undefined = lv
      ? { loss: lv.loss ?? NaN, metrics: lv.metrics, accuracy: lv.accuracy ?? NaN }
      : undefined;
    const trainExamples: Record<string, number> = {};
    for (const t of plan.newTasks) trainExamples[t.task] = 0;
    for (const e of train) trainExamples[e.taskname]++;
    deps.onEvent({
      type: "started",
      tasks: plan.newTasks.map((t) => t.task),
      totalSteps,
      totalEpochs: Math.ceil(totalSteps / stepsPerEpoch),
      trainExamples,
      droppedExamples: deps.data?.droppedExamples ?? {},
      skippedRecords: deps.data?.skippedRecords ?? 0,
      resumedFromStep: step,
      notes: deps.data?.notes ?? [],
      ...(deps.data?.encoderFrom ? { encoderFrom: deps.data.encoderFrom } : {}),
    });
    const valEvery = plan.valInterval > 0 ? plan.valInterval : stepsPerEpoch;
    const logEvery = plan.logEveryNSteps ?? 1;
    const t0 = now();
    let lastReport = t0;
    let tokensSinceStart = 0;
    const startStep = step;
    let stopped = false;
    const copyTables = () =>
      new Map([...params.tables()].map(([t, x]) => [t, Float32Array.from(x)]));
    const snapshot = (): CheckpointState => ({
      step,
      params: Object.fromEntries(params.params),
      optimizer: optim.state(),
      bestValLoss: Number.isFinite(best) ? best : null,
      badValidations: stopping?.state.bad ?? 0,
      stoppingBestLoss: stopping && Number.isFinite(stopping.state.best)
        ? stopping.state.best
        : null,
      bestMetrics,
      bestLoss,
      tables: params.tables(),
      topK: [...topK.kept],
      lastValidation: last
        ? {
          loss: Number.isFinite(last.loss) ? last.loss : null,
          metrics: last.metrics,
          accuracy: Number.isFinite(last.accuracy) ? last.accuracy : null,
        }
        : null,
    });
    try {
      const yieldNow = createYielder(20, now);
      while (step < totalSteps && !stopped) {
        await yieldNow();
        const epoch = Math.floor(step / stepsPerEpoch);
        const order = plan.shuffle === false
          ? Int32Array.from({ length: train.length }, (_, k) => k)
          : permutation(train.length, plan.seed * 1000 + epoch);
        const i = step % stepsPerEpoch;
        deps.signal?.throwIfAborted();
        const examples = Array.from(
          order.subarray(i * plan.batchSize, (i + 1) * plan.batchSize),
          (k) => train[k],
        );
        // As NeMo: the step's loss and gradient are the mean over micro-batches of each one's
        // token mean (megatron_gpt_model.py v1.20.0:918-923 takes the token mean of a micro-batch;
        // Megatron core's forward_step divides it by num_microbatches before the backward;
        // megatron_gpt_prompt_learning_model.py v1.20.0:320-324 logs the mean of those means).
        // Each micro-batch's forward runs the encoder (NeMo's embed_input per forward), so with
        // dropout each has its own pass; without, they share one and one backward.
        const micro = plan.microBatchSize ?? plan.batchSize;
        const parts = [];
        for (let m = 0; m < examples.length; m += micro) {
          const pass = params.trainingPass(seedOf(plan.seed, step, m / micro));
          parts.push({ pass, ...packBatch(engine, examples.slice(m, m + micro), pass.tables) });
        }
        // A micro-batch with nothing to score (NeMo: 0/0) counts for nothing.
        const microWithTargets = parts.filter((b) => b.targets.length > 0).length;
        const passGrads = new Map<TrainingPass, Map<string, Float32Array>>();
        let loss = 0, batchTokens = 0;
        for (const b of parts) {
          // Between micro-batches too: a step of many micro-batches must not hold the loop.
          await yieldNow();
          batchTokens += b.tokens;
          if (b.targets.length === 0) continue;
          const out = await engine.lossAndGrad({
            embeds: b.embeds,
            seqs: b.seqs,
            lossRows: b.lossRows,
            targets: b.targets,
          });
          const w = 1 / microWithTargets;
          loss += out.loss * w;
          let tableGrads = passGrads.get(b.pass);
          if (!tableGrads) {
            tableGrads = new Map(
              [...b.pass.tables].map(([t, x]) => [t, new Float32Array(x.length)]),
            );
            passGrads.set(b.pass, tableGrads);
          }
          for (const [t, g] of tableGradients(b, out.gradEmbeds, b.pass.tables, C)) {
            const acc = tableGrads.get(t)!;
            for (let i = 0; i < g.length; i++) acc[i] += g[i] * w;
          }
        }
        const grads = sumGrads(
          [...passGrads].map(([pass, tableGrads]) => pass.backward(tableGrads)),
          params.params,
        );
        const gradNorm = plan.optim.gradClip > 0 ? clipGradNorm(grads, plan.optim.gradClip) : NaN;
        const lr = schedule.lrAt(step);
        optim.step(params.params, grads, lr);
        params.sync();
        step++;
        tokensSinceStart += batchTokens;
        const at = now();
        if (step % logEvery === 0 || step === totalSteps || at - lastReport >= PROGRESS_MS) {
          lastReport = at;
          const elapsed = (at - t0) / 1000;
          const rate = tokensSinceStart / Math.max(elapsed, 1e-9);
          const secPerStep = elapsed / (step - startStep);
          deps.onEvent({
            type: "step",
            step,
            epoch,
            totalSteps,
            loss,
            learningRate: lr,
            tokensPerSecond: rate,
            etaSeconds: secPerStep * (totalSteps - step),
            gradNorm,
          });
        }
        if (step % valEvery === 0 || step === totalSteps) {
          if (val.length > 0) {
            const v = await this.evaluate(params.tables(), val);
            last = v;
            deps.onEvent({ type: "validation", step, epoch, loss: v.loss, metrics: v.metrics });
            const score = monitored(cp.monitor, v);
            if (better(cp.mode, score, best)) {
              best = score;
              bestTables = copyTables();
              bestEncoder = params.encoderState();
              bestMetrics = v.metrics;
              bestLoss = v.loss;
              if (deps.checkpointDir) {
                await saveCheckpoint(deps.checkpointDir, "best", snapshot());
                deps.onEvent({ type: "checkpoint", step, kind: "best" });
              }
            }
            if (deps.checkpointDir) await this.#keepTopK(topK, cp, v, step, epoch, snapshot);
            if (stopping && es) {
              const value = monitored(es.monitor, v);
              if (Number.isNaN(value) && !es.checkFinite) {
                if (es.strict) {
                  throw invalidArgument(
                    `exp_manager.early_stopping_callback_params.monitor: "${es.monitor}" was not measured at step ${step} (strict: true)`,
                  );
                }
              } else if (stopping.observe(value)) {
                stopped = true;
              }
            }
          }
          if (deps.checkpointDir && cp.saveLast) {
            await saveCheckpoint(deps.checkpointDir, "latest", snapshot());
            deps.onEvent({ type: "checkpoint", step, kind: "latest" });
          }
        }
      }
      const useBest = cp.saveBestModel && bestTables !== undefined;
      return {
        tables: useBest ? bestTables! : copyTables(),
        encoderState: useBest ? (bestEncoder ?? params.encoderState()) : params.encoderState(),
        metrics: useBest ? bestMetrics : (last?.metrics ?? {}),
        steps: step,
        resumedFromStep: startStep,
        bestValLoss: useBest ? bestLoss : (last?.loss ?? null),
        earlyStopped: stopped,
      };
    } finally {
      params.dispose();
    }
  }

  /** Saves this validation as a top-k checkpoint when it ranks, dropping the one it displaces. */
  async #keepTopK(
    topK: TopK,
    cp: CheckpointPlan,
    v: ValidationResult,
    step: number,
    epoch: number,
    snapshot: () => CheckpointState,
  ): Promise<void> {
    const dir = this.#deps.checkpointDir!;
    const values: Record<string, number> = { val_loss: v.loss, step, epoch };
    // Both names, for filename templates written for NeMo and for this project's earlier versions.
    if (!Number.isNaN(v.accuracy)) values.val_accuracy = values.validation_accuracy = v.accuracy;
    const name = checkpointName(cp.filename, values);
    const { keep, evict } = topK.consider({ name, score: monitored(cp.monitor, v), step });
    if (!keep) return;
    await saveCheckpoint(dir, name, snapshot());
    for (const e of evict) await removeCheckpoint(dir, e.name);
  }
}

/** The sum of each pass's parameter gradients; one pass's map is returned as it is. */
function sumGrads(
  perPass: Map<string, Float32Array>[],
  params: Map<string, Float32Array>,
): Map<string, Float32Array> {
  if (perPass.length === 1) return perPass[0];
  const sum = new Map([...params].map(([n, p]) => [n, new Float32Array(p.length)]));
  for (const grads of perPass) {
    for (const [n, g] of grads) {
      const acc = sum.get(n)!;
      for (let i = 0; i < g.length; i++) acc[i] += g[i];
    }
  }
  return sum;
}
