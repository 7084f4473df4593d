/** Generated answers scored as eval reports them: the task's metric, SQuAD against every gold. */
import { invalidArgument } from "../errors.ts";
import { SQUAD_UNANSWERABLE } from "../prompts/raw_sources.ts";
import { MetricAccumulator, type MetricKind, squadPrediction } from "../training/metrics.ts";
import type { SquadGold } from "./squad_golds.ts";

export interface EvalScore {
  metrics: Record<string, number>;
  /** `{question id: answer}` as the official scorer reads it; only with SQuAD golds. */
  predictions?: Record<string, string>;
}

/**
 * Scores generated answers (`texts[i]` for `records[i]`) as eval reports them. With `golds`
 * (SQuAD), each record is scored against all its gold answers (an unanswerable question's one
 * gold is "unanswerable") and the predictions come back keyed by question id.
 */
export function scoreEval(
  task: string,
  answerField: string,
  metric: MetricKind,
  records: readonly Record<string, string>[],
  texts: readonly string[],
  golds?: readonly SquadGold[],
): EvalScore {
  const acc = new MetricAccumulator({ [task]: { answerField, metric } });
  const predictions: Record<string, string> = {};
  texts.forEach((text, i) => {
    if (golds === undefined) {
      acc.add(task, text, records[i]);
      return;
    }
    const g = golds[i];
    const answers = g.answers.length > 0 ? g.answers : [SQUAD_UNANSWERABLE];
    acc.add(task, text, { ...records[i], [answerField]: answers });
    if (Object.hasOwn(predictions, g.id)) {
      throw invalidArgument(
        `record ${i + 1}: question ${g.id} of the raw file is another record's too`,
      );
    }
    predictions[g.id] = squadPrediction(text);
  });
  return { metrics: acc.result()[task], ...(golds ? { predictions } : {}) };
}
