/**
 * The one vocabulary of a training job's progress: the trainer emits these, the job queue records
 * them (and folds them into the job's progress), watchers receive them, and the RPC layer maps each
 * to its TrainEvent message one to one. Nothing is translated in between.
 */
import type { ErrorKind } from "../errors.ts";
import type { TaskEvaluation } from "../registry/types.ts";

export interface TaskVersionRef {
  task: string;
  version: number;
}

/** Metrics per task name: `{ sentiment: { loss: 0.4, exact_match: 0.78 } }`. */
export type MetricsByTask = Record<string, Record<string, number>>;

export type TrainingEvent =
  /** Jobs ahead of this one. */
  | { type: "queued"; position: number }
  | {
    type: "started";
    tasks: string[];
    totalSteps: number;
    totalEpochs: number;
    /** Training examples per task. */
    trainExamples: Record<string, number>;
    /** Examples per task the templates' max/min_seq_length removed. */
    droppedExamples: Record<string, number>;
    /** Bad dataset records skipped (skip_bad_lines). */
    skippedRecords: number;
    /** The step a resumed run continues from; 0 when fresh. */
    resumedFromStep: number;
    /** P-tuning continues from the encoder stored with this task version. */
    encoderFrom?: TaskVersionRef;
    /** Keys of the configuration that have no effect here, and why, each once. */
    notes: string[];
  }
  | {
    type: "step";
    step: number;
    /** 0-based. */
    epoch: number;
    totalSteps: number;
    loss: number;
    learningRate: number;
    tokensPerSecond: number;
    etaSeconds: number;
    /** Before clipping; NaN when clipping is off. */
    gradNorm: number;
  }
  | { type: "validation"; step: number; epoch: number; loss: number; metrics: MetricsByTask }
  /** An evaluation job's progress: requests answered of all it makes. */
  | { type: "evaluating"; task: string; version: number; done: number; total: number }
  | { type: "checkpoint"; step: number; kind: "latest" | "best" }
  | {
    type: "completed";
    written: TaskVersionRef[];
    metrics: MetricsByTask;
    steps: number;
    earlyStopped: boolean;
    /** An evaluation job's result, as it is kept with the version (`written`'s one entry). */
    evaluation?: TaskEvaluation;
  }
  | {
    type: "failed";
    reason: string;
    /** What went wrong, as the error taxonomy says (absent in events of older versions). */
    kind?: ErrorKind;
  }
  | { type: "cancelled"; reason: string };

export type TrainingEventType = TrainingEvent["type"];

/** An event as recorded: numbered 1, 2, 3, ... within its job. */
export interface JobEvent {
  sequence: number;
  jobId: string;
  time: Date;
  event: TrainingEvent;
}

/** Whether the event ends its job (no event follows it). */
export function isTerminal(e: TrainingEvent): boolean {
  return e.type === "completed" || e.type === "failed" || e.type === "cancelled";
}
