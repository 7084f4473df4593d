/**
 * Evaluating a task version on a dataset, through the serving path (`InferenceService.inferMany`:
 * the scheduler's batches, the same prompts and decoding as Infer). Each record's answer is
 * generated and scored with the task's metric (exact match, SQuAD against every gold, intent and
 * slots); with a label set, each record's labels are also scored as candidate answers, giving
 * accuracy, the confusion matrix and the expected calibration error of the label probabilities.
 * `deno task eval` and Evaluate jobs both run this.
 */
import { ServiceError } from "../errors.ts";
import type {
  InferenceRequest,
  InferenceResult,
  InferManyItem,
} from "../serving/inference_service.ts";
import type { GenerationOptions } from "../serving/generation_options.ts";
import type { MetricKind } from "../training/metrics.ts";
import { confusionMatrix, expectedCalibrationError } from "./calibration.ts";
import { scoreEval } from "./score_answers.ts";
import type { SquadGold } from "./squad_golds.ts";

/** Runs requests in one batch (`InferenceService.inferMany`). */
export type InferMany = (
  reqs: readonly InferenceRequest[],
  signal?: AbortSignal,
) => Promise<InferManyItem[]>;

export interface EvaluationSpec {
  task: string;
  version: number;
  /** The template's answer field: the gold answer of each record. */
  answerField: string;
  /** The dataset's records (template fields and the gold answer). */
  records: readonly Record<string, string>[];
  metric: MetricKind;
  /** Classification: the label set; every record's gold answer must be one of them. */
  labels?: readonly string[];
  /** SQuAD: every gold answer of each record (from the raw file). */
  golds?: readonly SquadGold[];
  /** How answers are generated. Default: greedy, the scheduler's default length. */
  options?: GenerationOptions;
  /** Requests per batch. Default 64. */
  batch?: number;
}

export interface EvaluationOutcome {
  metrics: Record<string, number>;
  labels?: string[];
  /** counts[gold][predicted] over `labels`. */
  confusion?: number[][];
  /** Each record's generated answer, in order. */
  generated: InferenceResult[];
  /** SQuAD with golds: `{question id: answer}` as the official scorer reads it. */
  predictions?: Record<string, string>;
}

/**
 * Evaluates `spec`; `onProgress(done, total)` after each batch (total counts a generation per
 * record and, with labels, a scoring per record). Stops at `signal`.
 */
export async function evaluate(
  infer: InferMany,
  spec: EvaluationSpec,
  onProgress: (done: number, total: number) => void = () => {},
  signal?: AbortSignal,
): Promise<EvaluationOutcome> {
  const { records, answerField } = spec;
  const labels = spec.labels ? [...spec.labels] : undefined;
  if (labels) {
    records.forEach((r, i) => {
      if (!labels.includes(r[answerField])) {
        throw new ServiceError(
          "invalid_argument",
          `record ${i + 1}: field "${answerField}" is not among the labels (${
            labels.map((l) => JSON.stringify(l)).join(", ")
          })`,
        );
      }
    });
  }
  const fields = records.map((r) => {
    const { [answerField]: _gold, ...rest } = r;
    return rest;
  });
  const base = (i: number): InferenceRequest => ({
    task: spec.task,
    version: spec.version,
    fields: fields[i],
  });
  const jobs: InferenceRequest[] = [
    ...records.map((_, i) => ({ ...base(i), ...(spec.options ? { options: spec.options } : {}) })),
    ...(labels ? records.map((_, i) => ({ ...base(i), choices: labels })) : []),
  ];
  const results: InferenceResult[] = new Array(jobs.length);
  const batch = spec.batch ?? 64;
  for (let at = 0; at < jobs.length; at += batch) {
    signal?.throwIfAborted();
    const items = await infer(jobs.slice(at, at + batch), signal);
    items.forEach((item, k) => {
      const i = at + k;
      if (!item.ok) {
        const record = (i % records.length) + 1;
        const kind = item.error instanceof ServiceError ? item.error.kind : "internal";
        throw new ServiceError(kind, `record ${record}: ${item.error.message}`, {
          cause: item.error,
        });
      }
      results[i] = item.result;
    });
    onProgress(Math.min(at + batch, jobs.length), jobs.length);
  }
  const generated = results.slice(0, records.length);
  const scored = scoreEval(
    spec.task,
    answerField,
    spec.metric,
    records,
    generated.map((r) => r.text),
    spec.golds,
  );
  const outcome: EvaluationOutcome = {
    metrics: scored.metrics,
    generated,
    ...(scored.predictions ? { predictions: scored.predictions } : {}),
  };
  if (labels) {
    const ranked = results.slice(records.length);
    const golds = records.map((r) => r[answerField]);
    const predicted = ranked.map((r) => r.text);
    const correct = predicted.map((p, i) => p === golds[i]);
    const confidence = ranked.map((r) => Math.max(...r.choices!.map((c) => c.probability)));
    outcome.labels = labels;
    outcome.confusion = confusionMatrix(labels, golds, predicted);
    outcome.metrics = {
      ...outcome.metrics,
      choice_accuracy: correct.filter(Boolean).length / Math.max(1, correct.length),
      ece: expectedCalibrationError(confidence, correct),
    };
  }
  return outcome;
}
