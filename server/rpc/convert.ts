/**
 * The one place that maps proto messages to the domain's own types and back. It checks nothing
 * the domain checks (names, ranges, paths): it only gives proto3's zero values their documented
 * meaning ("0: the default") and picks the oneof that was set.
 */
import { status } from "@grpc/grpc-js";
import type { Struct__Output } from "../../proto/gen/google/protobuf/Struct.ts";
import type { Timestamp } from "../../proto/gen/google/protobuf/Timestamp.ts";
import type { Value__Output } from "../../proto/gen/google/protobuf/Value.ts";
import type { Completion } from "../../proto/gen/promptlearning/v1/Completion.ts";
import type { Dataset__Output } from "../../proto/gen/promptlearning/v1/Dataset.ts";
import type { FinishReason as ProtoFinishReason } from "../../proto/gen/promptlearning/v1/FinishReason.ts";
import type { InferRequest__Output } from "../../proto/gen/promptlearning/v1/InferRequest.ts";
import type { InferResult } from "../../proto/gen/promptlearning/v1/InferResult.ts";
import type { InferStreamEvent } from "../../proto/gen/promptlearning/v1/InferStreamEvent.ts";
import type { Job as ProtoJob } from "../../proto/gen/promptlearning/v1/Job.ts";
import type { JobState as ProtoJobState } from "../../proto/gen/promptlearning/v1/JobState.ts";
import type { RegisterTaskRequest__Output } from "../../proto/gen/promptlearning/v1/RegisterTaskRequest.ts";
import type { Task } from "../../proto/gen/promptlearning/v1/Task.ts";
import type { TaskMetrics } from "../../proto/gen/promptlearning/v1/TaskMetrics.ts";
import type {
  TaskTemplate as ProtoTemplate,
  TaskTemplate__Output as ProtoTemplateOut,
} from "../../proto/gen/promptlearning/v1/TaskTemplate.ts";
import type { TrainConfig__Output } from "../../proto/gen/promptlearning/v1/TrainConfig.ts";
import type { TrainEvent as ProtoTrainEvent } from "../../proto/gen/promptlearning/v1/TrainEvent.ts";
import type { TrainRequest__Output } from "../../proto/gen/promptlearning/v1/TrainRequest.ts";
import type { Evaluation } from "../../proto/gen/promptlearning/v1/Evaluation.ts";
import type { EvaluateRequest__Output } from "../../proto/gen/promptlearning/v1/EvaluateRequest.ts";
import type { EvaluateRequest } from "../evaluation/evaluation_job.ts";
import type { TaskEvaluation } from "../registry/types.ts";
import type { MetricKind } from "../training/metrics.ts";
import { invalidArgument } from "../errors.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { RegisterTaskRequest, TaskInfo } from "../registry/task_service.ts";
import type { FinishReason } from "../serving/scheduler.ts";
import type {
  InferenceRequest,
  InferenceResult,
  InferenceStreamEvent,
  InferManyItem,
} from "../serving/inference_service.ts";
import type { JobEvent, MetricsByTask } from "../training/events.ts";
import type { Job, JobState } from "../training/job_store.ts";
import type { TrainRequest } from "../training/training_service.ts";
import type { PageRequest } from "../util/paging.ts";
import { type GrpcStatus, statusOf, toStatus } from "./errors.ts";

// ------------------------------------------------------------------------------------------
// Well-known types, paging

export function toTimestamp(d: Date | undefined): Timestamp | null {
  if (!d) return null;
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
}

export function fromValue(v: Value__Output): unknown {
  switch (v.kind) {
    case "nullValue":
      return null;
    case "numberValue":
      return v.numberValue;
    case "stringValue":
      return v.stringValue;
    case "boolValue":
      return v.boolValue;
    case "structValue":
      return v.structValue ? fromStruct(v.structValue) : {};
    case "listValue":
      return (v.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct as the plain JSON object it stands for. */
export function fromStruct(s: Struct__Output): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s.fields ?? {})) out[k] = fromValue(v);
  return out;
}

/** page_size 0 means the list's default, which the domain applies. */
export function toPageRequest(req: { pageSize: number; pageToken: string }): PageRequest {
  return { pageSize: req.pageSize, pageToken: req.pageToken };
}

// ------------------------------------------------------------------------------------------
// Templates

/** The template fields that were given (proto3 optionals stay absent when unset). */
export function fromProtoTemplate(t: ProtoTemplateOut): Partial<TaskTemplate> {
  const out: Partial<TaskTemplate> = {};
  if (t.taskname) out.taskname = t.taskname;
  if (t.promptTemplate) out.prompt_template = t.promptTemplate;
  if (t.promptTemplateFields.length) out.prompt_template_fields = [...t.promptTemplateFields];
  if (t.totalVirtualTokens) out.total_virtual_tokens = t.totalVirtualTokens;
  if (t.virtualTokenSplits.length) out.virtual_token_splits = [...t.virtualTokenSplits];
  if (t.truncateField !== undefined) out.truncate_field = t.truncateField || null;
  if (t.answerField) out.answer_field = t.answerField;
  if (t.answerOnlyLoss !== undefined) out.answer_only_loss = t.answerOnlyLoss;
  if (t.addBos !== undefined) out.add_bos = t.addBos;
  if (t.addEos !== undefined) out.add_eos = t.addEos;
  if (t.maxSeqLength !== undefined) out.max_seq_length = t.maxSeqLength;
  if (t.minSeqLength !== undefined) out.min_seq_length = t.minSeqLength;
  return out;
}

export function toProtoTemplate(t: TaskTemplate): ProtoTemplate {
  return {
    taskname: t.taskname,
    promptTemplate: t.prompt_template,
    promptTemplateFields: t.prompt_template_fields,
    totalVirtualTokens: t.total_virtual_tokens,
    virtualTokenSplits: t.virtual_token_splits,
    ...(t.truncate_field === null ? {} : { truncateField: t.truncate_field }),
    answerField: t.answer_field,
    answerOnlyLoss: t.answer_only_loss,
    addBos: t.add_bos,
    addEos: t.add_eos,
    maxSeqLength: t.max_seq_length,
    minSeqLength: t.min_seq_length,
  };
}

// ------------------------------------------------------------------------------------------
// Training

const STYLE: Record<string, string | undefined> = {
  VIRTUAL_PROMPT_STYLE_PROMPT_TUNING: "prompt-tuning",
  VIRTUAL_PROMPT_STYLE_P_TUNING: "p-tuning",
};
const INIT: Record<string, string | undefined> = {
  INIT_METHOD_TEXT: "text",
  INIT_METHOD_RANDOM: "random",
  INIT_METHOD_SAMPLED_VOCAB: "vocab",
};
/** The config's encoder_type strings: NeMo's names, and "peft_mlp" for PEFT's MLP. */
const ENCODER: Record<string, string | undefined> = {
  ENCODER_TYPE_LSTM: "lstm",
  ENCODER_TYPE_MLP: "mlp",
  ENCODER_TYPE_TPMLP: "tpmlp",
  ENCODER_TYPE_PEFT_MLP: "peft_mlp",
  ENCODER_TYPE_EMBEDDING: "embedding",
};

const MATCH: Record<string, string | undefined> = {
  VALIDATION_MATCH_SEQUENCE: "sequence",
  VALIDATION_MATCH_ANSWER: "answer",
};

function setIf(o: Record<string, unknown>, key: string, v: unknown) {
  if (v !== undefined && v !== null && v !== "") o[key] = v;
}

function records(d: Dataset__Output | null): Record<string, unknown>[] {
  return (d?.records ?? []).map(fromStruct);
}

/**
 * The structured TrainConfig as the object NeMo's YAML parses to, with only the keys given, so
 * the domain's one validator applies its defaults and rules to both sources alike.
 */
export function trainConfigObject(c: TrainConfig__Output): Record<string, unknown> {
  const model: Record<string, unknown> = {};
  setIf(model, "virtual_prompt_style", STYLE[c.virtualPromptStyle]);
  if (c.taskTemplates.length) model.task_templates = c.taskTemplates.map(fromProtoTemplate);
  model.new_tasks = [...c.newTasks];
  model.existing_tasks = [...c.existingTasks];
  if (c.promptTuning) {
    const method = INIT[c.promptTuning.initMethod];
    if (method) {
      model.prompt_tuning = {
        new_prompt_init_methods: c.newTasks.map(() => method),
        new_prompt_init_text: c.newTasks.map(() =>
          method === "text" ? c.promptTuning!.initText : null
        ),
      };
    }
  }
  if (c.pTuning) {
    const p: Record<string, unknown> = {};
    setIf(p, "encoder_type", ENCODER[c.pTuning.encoderType]);
    setIf(p, "encoder_hidden", c.pTuning.encoderHiddenSize);
    setIf(p, "num_layers", c.pTuning.numLayers);
    setIf(p, "dropout", c.pTuning.dropout);
    setIf(p, "init_std", c.pTuning.initStd);
    model.p_tuning = p;
  }
  const trainer: Record<string, unknown> = {};
  if (c.optim) {
    const o: Record<string, unknown> = {};
    setIf(o, "name", c.optim.name);
    setIf(o, "lr", c.optim.lr);
    setIf(o, "weight_decay", c.optim.weightDecay);
    if (c.optim.betas.length) o.betas = [...c.optim.betas];
    setIf(o, "eps", c.optim.eps);
    if (c.optim.sched?.name) {
      const s: Record<string, unknown> = { name: c.optim.sched.name };
      setIf(s, "warmup_steps", c.optim.sched.warmupSteps);
      setIf(s, "warmup_ratio", c.optim.sched.warmupRatio);
      setIf(s, "min_lr", c.optim.sched.minLr);
      o.sched = s;
    }
    model.optim = o;
    setIf(trainer, "gradient_clip_val", c.optim.gradientClipVal);
  }
  setIf(model, "seed", c.seed);
  setIf(model, "global_batch_size", c.globalBatchSize);
  setIf(model, "micro_batch_size", c.microBatchSize);
  const data: Record<string, unknown> = {
    train_ds: [...(c.trainDs?.files ?? [])],
    validation_ds: [...(c.validationDs?.files ?? [])],
    test_ds: [...(c.testDs?.files ?? [])],
  };
  if (c.skipBadRecords) data.skip_bad_lines = true;
  if (c.refuseMissingFields) data.refuse_missing_fields = true;
  if (c.reportValidationMetric) {
    model.report_validation_metric = true;
    model.inference = { greedy: true };
  }
  setIf(model, "validation_match", MATCH[c.validationMatch]);
  model.data = data;
  setIf(trainer, "max_epochs", c.maxEpochs);
  setIf(trainer, "max_steps", c.maxSteps);
  setIf(trainer, "val_check_interval", c.valCheckInterval);
  setIf(trainer, "log_every_n_steps", c.logEveryNSteps);
  const out: Record<string, unknown> = { trainer, model };
  setIf(out, "name", c.name);
  if (c.earlyStopping?.enabled) {
    const p: Record<string, unknown> = {};
    setIf(p, "monitor", c.earlyStopping.monitor);
    setIf(p, "mode", c.earlyStopping.mode);
    setIf(p, "patience", c.earlyStopping.patience);
    setIf(p, "min_delta", c.earlyStopping.minDelta);
    out.exp_manager = { create_early_stopping_callback: true, early_stopping_callback_params: p };
  }
  return out;
}

export function toTrainRequest(req: TrainRequest__Output): TrainRequest {
  const train = records(req.extraTrainRecords);
  const validation = records(req.extraValidationRecords);
  // "" is proto3's unset: no request id.
  const requestId = req.requestId ? { requestId: req.requestId } : {};
  if (req.source === "configYaml") {
    return {
      config: { kind: "yaml", text: req.configYaml ?? "" },
      inline: { train, validation },
      ...requestId,
    };
  }
  if (req.source === "config" && req.config) {
    return {
      config: { kind: "object", config: trainConfigObject(req.config) },
      inline: {
        train: [...records(req.config.trainDs), ...train],
        validation: [...records(req.config.validationDs), ...validation],
        test: records(req.config.testDs),
      },
      ...requestId,
    };
  }
  throw invalidArgument("one of config or config_yaml is required");
}

const JOB_STATE: Record<JobState, ProtoJobState> = {
  queued: "JOB_STATE_QUEUED",
  running: "JOB_STATE_RUNNING",
  cancelling: "JOB_STATE_CANCELLING",
  succeeded: "JOB_STATE_SUCCEEDED",
  failed: "JOB_STATE_FAILED",
  cancelled: "JOB_STATE_CANCELLED",
};

export function toProtoJob(j: Job): ProtoJob {
  return {
    jobId: j.id,
    kind: j.kind === "evaluate" ? "JOB_KIND_EVALUATE" : "JOB_KIND_TRAIN",
    state: JOB_STATE[j.state],
    tasks: j.tasks,
    createdAt: toTimestamp(j.createdAt),
    startedAt: toTimestamp(j.startedAt),
    finishedAt: toTimestamp(j.finishedAt),
    step: j.step,
    totalSteps: j.totalSteps,
    lastSequence: j.lastSequence,
    error: j.error ?? "",
    written: j.written,
    epoch: j.epoch,
    totalEpochs: j.totalEpochs,
    droppedExamples: j.droppedExamples,
    skippedRecords: j.skippedRecords,
  };
}

function toProtoMetrics(m: MetricsByTask): Record<string, TaskMetrics> {
  const out: Record<string, TaskMetrics> = {};
  for (const [task, values] of Object.entries(m)) out[task] = { values };
  return out;
}

export function toProtoEvent(ev: JobEvent): ProtoTrainEvent {
  const head = { sequence: ev.sequence, jobId: ev.jobId, time: toTimestamp(ev.time) };
  const e = ev.event;
  switch (e.type) {
    case "queued":
      return { ...head, queued: { position: e.position } };
    case "started":
      return {
        ...head,
        started: {
          totalSteps: e.totalSteps,
          totalEpochs: e.totalEpochs,
          tasks: e.tasks,
          droppedExamples: e.droppedExamples,
          skippedRecords: e.skippedRecords,
          trainExamples: e.trainExamples,
          resumedFromStep: e.resumedFromStep,
          notes: e.notes,
        },
      };
    case "step":
      return {
        ...head,
        step: {
          step: e.step,
          epoch: e.epoch,
          loss: e.loss,
          learningRate: e.learningRate,
          tokensPerSecond: e.tokensPerSecond,
          etaSeconds: e.etaSeconds,
          totalSteps: e.totalSteps,
        },
      };
    case "validation":
      return {
        ...head,
        validation: {
          step: e.step,
          epoch: e.epoch,
          loss: e.loss,
          metrics: toProtoMetrics(e.metrics),
        },
      };
    case "checkpoint":
      return { ...head, checkpoint: { step: e.step, kind: e.kind } };
    case "completed":
      return {
        ...head,
        completed: {
          written: e.written,
          metrics: toProtoMetrics(e.metrics),
          steps: e.steps,
          earlyStopped: e.earlyStopped,
          ...(e.evaluation ? { evaluation: toProtoEvaluation(e.evaluation) } : {}),
        },
      };
    case "evaluating":
      return {
        ...head,
        evaluating: { task: e.task, version: e.version, done: e.done, total: e.total },
      };
    case "failed":
      // Events recorded before failures had a kind say UNKNOWN.
      return {
        ...head,
        failed: { reason: e.reason, code: e.kind ? statusOf(e.kind) : status.UNKNOWN },
      };
    case "cancelled":
      return { ...head, cancelled: { reason: e.reason } };
  }
}

// ------------------------------------------------------------------------------------------
// Tasks

export function toRegisterTaskRequest(req: RegisterTaskRequest__Output): RegisterTaskRequest {
  const template = req.template ? fromProtoTemplate(req.template) : undefined;
  const createOnly = req.createOnly;
  // "" is proto3's unset: no request id.
  const requestId = req.requestId ? { requestId: req.requestId } : {};
  if (req.source === "table" && req.table) {
    const { rows, hidden, values } = req.table;
    return {
      name: req.name,
      template,
      source: { kind: "table", rows, hidden, values },
      createOnly,
      ...requestId,
    };
  }
  if (req.source === "peft" && req.peft) {
    return {
      name: req.name,
      template,
      source: {
        kind: "peft",
        configJson: new Uint8Array(req.peft.adapterConfigJson),
        safetensors: new Uint8Array(req.peft.adapterSafetensors),
      },
      createOnly,
      ...requestId,
    };
  }
  throw invalidArgument("one of table or peft is required");
}

export function toProtoTask(t: TaskInfo): Task {
  const f = t.fingerprint;
  return {
    name: t.name,
    version: t.version,
    template: toProtoTemplate(t.template),
    totalVirtualTokens: t.totalVirtualTokens,
    hiddenSize: t.hiddenSize,
    baseModelFingerprint: `h=${f.hiddenSize} v=${f.vocabSize} sha256=${f.weightsHash}`,
    metrics: t.metrics,
    createdAt: toTimestamp(new Date(t.createdAt)),
    versions: t.versions,
    hasEncoderState: t.encoderKind !== undefined,
    source: t.source,
    evaluations: (t.evaluations ?? []).map(toProtoEvaluation),
  };
}

export function toProtoEvaluation(e: TaskEvaluation): Evaluation {
  return {
    id: e.id,
    createdAt: toTimestamp(new Date(e.createdAt)),
    dataset: e.dataset,
    examples: e.examples,
    metrics: e.metrics,
    labels: e.labels ?? [],
    confusion: (e.confusion ?? []).map((row) => ({ predicted: row })),
  };
}

/** The request in the domain's names; "" and 0 are proto3's unset. */
export function toEvaluateRequest(r: EvaluateRequest__Output): EvaluateRequest {
  return {
    task: r.task,
    ...(r.version !== undefined ? { version: r.version } : {}),
    data: { files: [...(r.data?.files ?? [])], records: records(r.data) },
    ...(r.labels.length > 0 ? { labels: [...r.labels] } : {}),
    ...(r.metric ? { metric: r.metric as MetricKind } : {}),
    ...(r.maxNewTokens !== 0 ? { maxNewTokens: r.maxNewTokens } : {}),
    ...(r.requestId ? { requestId: r.requestId } : {}),
    ...(r.squadGold ? { squadGold: r.squadGold } : {}),
  };
}

// ------------------------------------------------------------------------------------------
// Inference

/**
 * The request in the serving path's names. Proto3 zeros mean "unset" where the proto says so
 * (max_new_tokens, top_k, top_p); every other value goes to the domain as sent, to be checked
 * there.
 */
export function toInferenceRequest(r: InferRequest__Output): InferenceRequest {
  const random = r.sampling?.mode === "random" ? r.sampling.random : null;
  return {
    task: r.task,
    ...(r.version !== undefined ? { version: r.version } : {}),
    fields: { ...r.fields },
    options: {
      ...(r.maxNewTokens !== 0 ? { maxNewTokens: r.maxNewTokens } : {}),
      ...(r.minNewTokens !== 0 ? { minNewTokens: r.minNewTokens } : {}),
      doSample: random !== null,
      ...(random
        ? {
          temperature: random.temperature,
          ...(random.topK !== 0 ? { topK: random.topK } : {}),
          ...(random.topP !== 0 ? { topP: random.topP } : {}),
          ...(random.seed !== undefined ? { seed: random.seed } : {}),
        }
        : {}),
      ...(r.repetitionPenalty !== undefined ? { repetitionPenalty: r.repetitionPenalty } : {}),
      stop: [...r.stop],
      logprobs: r.returnLogprobs,
    },
    // proto3 cannot tell an empty list from none: no candidates means generation.
    ...(r.choices.length > 0 ? { choices: [...r.choices] } : {}),
    ...(r.allowed.length > 0 ? { allowed: [...r.allowed] } : {}),
  };
}

const FINISH: Record<FinishReason, ProtoFinishReason> = {
  length: "FINISH_REASON_LENGTH",
  stop: "FINISH_REASON_STOP",
  eos: "FINISH_REASON_EOS",
  choice: "FINISH_REASON_CHOICE",
};

export function toCompletion(r: InferenceResult): Completion {
  return {
    text: r.text,
    tokenIds: r.tokenIds,
    finishReason: FINISH[r.finishReason],
    logprobs: r.logprobs
      ? r.logprobs.map((lp, i) => ({
        tokenId: r.tokenIds[i],
        text: r.tokenTexts?.[i] ?? "",
        logprob: lp,
      }))
      : [],
    promptTokens: r.promptTokens,
    taskVersion: r.version,
    choices: (r.choices ?? []).map((c) => ({
      text: c.text,
      logprob: c.logprob,
      logprobPerToken: c.logprobPerToken,
      probability: c.probability,
      tokenIds: c.tokenIds,
    })),
  };
}

/** One batch item: its completion, or its error as the status it would have had alone. */
export function toInferResult(
  item: InferManyItem,
  index: number,
  signal?: AbortSignal,
): InferResult {
  if (item.ok) return { completion: toCompletion(item.result) };
  const s: GrpcStatus = toStatus(item.error, signal);
  return { error: { code: s.code, message: `requests[${index}]: ${s.details}` } };
}

export function toStreamEvent(e: InferenceStreamEvent): InferStreamEvent {
  return e.type === "token"
    ? { token: { tokenId: e.tokenId, text: e.text, logprob: e.logprob ?? 0 } }
    : { done: toCompletion(e.result) };
}
