/**
 * Evaluate jobs: one task version evaluated on a dataset, as a job on the training queue. The
 * request is checked when it is submitted (the version resolved, the data read and checked) and
 * planned again when a runner takes it; the result is kept with the version.
 */
import { invalidArgument } from "../errors.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { type DatasetSource, loadDataset } from "../prompts/dataset.ts";
import type { TaskEvaluation, TaskStore } from "../registry/types.ts";
import type { TrainingEvent } from "../training/events.ts";
import type { Job } from "../training/job_store.ts";
import type { EvaluationJobs } from "../training/training_service.ts";
import { defaultMetricKind, METRIC_KINDS, type MetricKind } from "../training/metrics.ts";
import { datasetPath } from "../training/run_plan.ts";
import { evaluate, type EvaluationSpec, type InferMany } from "./evaluate.ts";
import { parseSquad } from "../prompts/raw_sources.ts";
import { type SquadGold, squadGoldsFor } from "./squad_golds.ts";

/** Records a request may carry inline, at most (larger sets go in files under DATA_DIR). */
export const MAX_INLINE_EVAL_RECORDS = 10_000;

export interface EvaluateRequest {
  task: string;
  /** Default: the latest (resolved at submission, so the job evaluates one fixed version). */
  version?: number;
  /** Files under DATA_DIR (as the request names them) and inline records. */
  data: { files?: string[]; records?: unknown[] };
  labels?: string[];
  metric?: MetricKind;
  /** Tokens generated per answer. Default 32. */
  maxNewTokens?: number;
  /**
   * SQuAD: the raw SQuAD v2.0 file (under DATA_DIR) whose every gold answer each record is scored
   * against, as the official scorer does; the data must then be one file.
   */
  squadGold?: string;
  requestId?: string;
}

/**
 * Evaluation jobs for the training queue: a request is checked (and its version fixed) when it
 * is submitted, and planned again when a runner takes it (the data as it is then).
 */
export function evaluationJobs(deps: {
  infer: InferMany;
  store: TaskStore;
  tokenizer: Tokenizer;
  dataDir: string;
}): EvaluationJobs {
  const plan = (req: EvaluateRequest) =>
    planEvaluation(req, { dataDir: deps.dataDir }, {
      store: deps.store,
      tokenizer: deps.tokenizer,
    });
  return {
    async admit(request: unknown) {
      const req = request as EvaluateRequest;
      const p = await plan(req);
      const stored: EvaluateRequest = { ...req, version: p.spec.version };
      delete stored.requestId;
      return { name: p.spec.task, tasks: [p.spec.task], stored };
    },
    async run(stored: unknown, job: Job, emit: (e: TrainingEvent) => void, signal: AbortSignal) {
      const p = await plan(stored as EvaluateRequest);
      await runEvaluation(p, { infer: deps.infer, store: deps.store }, job.id, emit, signal);
    },
  };
}

export interface EvaluationPlan {
  spec: EvaluationSpec;
  /** The dataset as the request named it, for the kept result. */
  dataset: string;
}

/** Reads and checks a request's data and version (invalid_argument or not_found naming the field). */
export async function planEvaluation(
  req: EvaluateRequest,
  rules: { dataDir: string },
  world: { store: TaskStore; tokenizer: Tokenizer },
): Promise<EvaluationPlan> {
  if (typeof req.task !== "string" || req.task === "") {
    throw invalidArgument("task must name a task");
  }
  const meta = await world.store.describe(req.task, req.version);
  const metric = req.metric ?? defaultMetricKind(req.task);
  if (!METRIC_KINDS.includes(metric)) {
    throw invalidArgument(
      `metric must be one of ${METRIC_KINDS.join(", ")}: found ${JSON.stringify(metric)}`,
    );
  }
  const labels = req.labels && req.labels.length > 0 ? req.labels : undefined;
  if (labels && new Set(labels).size !== labels.length) {
    throw invalidArgument("labels must not repeat a label");
  }
  const maxNewTokens = req.maxNewTokens ?? 32;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
    throw invalidArgument(`max_new_tokens must be an integer >= 1: found ${maxNewTokens}`);
  }
  const files = req.data.files ?? [];
  const inline = req.data.records ?? [];
  if (inline.length > MAX_INLINE_EVAL_RECORDS) {
    throw invalidArgument(
      `data.records must hold at most ${MAX_INLINE_EVAL_RECORDS} records (put more in files under DATA_DIR): found ${inline.length}`,
    );
  }
  const sources: [DatasetSource, string | undefined][] = files.map((f, i) => [
    datasetPath(rules.dataDir, f, `data.files[${i}]`, true),
    f,
  ]);
  if (inline.length > 0) sources.push([{ name: "data.records", records: inline }, undefined]);
  if (sources.length === 0) throw invalidArgument("data must name files or hold records");
  const templates = new Map([[req.task, meta.template]]);
  const records: Record<string, string>[] = [];
  const answer = meta.template.answer_field;
  for (const [source, displayName] of sources) {
    // Prompts as Infer fills them; the gold answer is each record's answer field.
    const ds = await loadDataset(source, templates, world.tokenizer, {
      forInference: true,
      displayName,
    });
    ds.records.forEach((r, i) => {
      if (typeof r[answer] !== "string") {
        throw invalidArgument(
          `${displayName ?? "data.records"}: record ${
            i + 1
          }: field "${answer}" (the gold answer) is missing`,
        );
      }
      if (labels && !labels.includes(r[answer])) {
        throw invalidArgument(
          `${displayName ?? "data.records"}: record ${
            i + 1
          }: field "${answer}" is not among the labels`,
        );
      }
    });
    records.push(...ds.records);
  }
  if (records.length === 0) throw invalidArgument("data holds no records of this task");
  let golds: SquadGold[] | undefined;
  if (req.squadGold) {
    if (metric !== "squad" || files.length !== 1 || inline.length > 0) {
      throw invalidArgument(
        "squad_gold applies to the squad metric over one data file (its records are matched to the raw questions by line)",
      );
    }
    const goldPath = datasetPath(rules.dataDir, req.squadGold, "squad_gold", true);
    const dataPath = sources[0][0] as string;
    const read = async (path: string, field: string) => {
      try {
        return await Deno.readTextFile(path);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) throw invalidArgument(`${field}: file not found`);
        throw e;
      }
    };
    const { questions } = parseSquad(await read(goldPath, "squad_gold"), req.squadGold);
    golds = squadGoldsFor(
      records,
      await read(dataPath, "data.files[0]"),
      answer,
      questions,
      files[0],
      req.squadGold,
    );
  }
  return {
    spec: {
      task: meta.name,
      version: meta.version,
      answerField: answer,
      records,
      metric,
      labels,
      golds,
      options: { maxNewTokens },
    },
    dataset: [...files, ...(inline.length > 0 ? ["data.records"] : [])].join(", "),
  };
}

/**
 * Runs a planned evaluation: progress events (at most one a second), the result kept with the
 * version under the job's id, then `completed` naming the version and carrying the result.
 */
export async function runEvaluation(
  plan: EvaluationPlan,
  deps: { infer: InferMany; store: TaskStore; now?: () => number },
  jobId: string,
  emit: (e: TrainingEvent) => void,
  signal: AbortSignal,
): Promise<void> {
  const { spec } = plan;
  const now = deps.now ?? (() => performance.now());
  let last = -Infinity;
  const outcome = await evaluate(deps.infer, spec, (done, total) => {
    const at = now();
    if (at - last < 1000 && done < total) return;
    last = at;
    emit({ type: "evaluating", task: spec.task, version: spec.version, done, total });
  }, signal);
  signal.throwIfAborted();
  const evaluation: TaskEvaluation = {
    id: jobId,
    createdAt: new Date().toISOString(),
    dataset: plan.dataset,
    examples: spec.records.length,
    metrics: Object.fromEntries(
      Object.entries(outcome.metrics).filter(([, v]) => Number.isFinite(v)),
    ),
    ...(outcome.labels ? { labels: outcome.labels, confusion: outcome.confusion } : {}),
  };
  await deps.store.addEvaluation(spec.task, spec.version, evaluation);
  emit({
    type: "completed",
    written: [{ task: spec.task, version: spec.version }],
    metrics: { [spec.task]: evaluation.metrics },
    steps: 0,
    earlyStopped: false,
    evaluation,
  });
}
