/**
 * Conversions between the generated protobuf types and the ports' domain types, with the
 * request checks that belong to the protocol (names, paging, oneofs, sizes). Messages name the
 * proto field as the client wrote it (snake_case).
 */
import type { TaskTemplate } from "../prompts/template_types.ts";
import { invalidArgument, RpcError } from "./errors.ts";
import { status } from "@grpc/grpc-js";
import type { Struct__Output } from "../../proto/gen/google/protobuf/Struct.ts";
import type { Timestamp } from "../../proto/gen/google/protobuf/Timestamp.ts";
import type { Value__Output } from "../../proto/gen/google/protobuf/Value.ts";
import type { Completion } from "../../proto/gen/promptlearning/v1/Completion.ts";
import type { Dataset__Output } from "../../proto/gen/promptlearning/v1/Dataset.ts";
import type { FinishReason as ProtoFinishReason } from "../../proto/gen/promptlearning/v1/FinishReason.ts";
import type { InferRequest__Output } from "../../proto/gen/promptlearning/v1/InferRequest.ts";
import type { Job } from "../../proto/gen/promptlearning/v1/Job.ts";
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
import type {
  DatasetRecord,
  FinishReason,
  InferInput,
  InferOutput,
  JobState,
  JobView,
  MetricsByTask,
  PageRequest,
  RegisterTaskInput,
  TaskView,
  TemplateInput,
  TrainEvent,
  TrainSubmission,
} from "./ports.ts";

// ------------------------------------------------------------------------------------------
// Names, paging

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Task names and job ids: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, no "..": no path tricks. */
export function checkName(value: string, field: string): string {
  if (!NAME.test(value) || value.includes("..")) {
    throw invalidArgument(
      `${field} must match ${NAME.source} and not contain "..": found ${
        JSON.stringify(value.length > 80 ? value.slice(0, 80) + "..." : value)
      }`,
    );
  }
  return value;
}

export interface PagingLimits {
  /** Default 50. */
  defaultPageSize: number;
  /** Default 1000. */
  maxPageSize: number;
}

export function toPageRequest(
  pageSize: number,
  pageToken: string,
  limits: PagingLimits,
): PageRequest {
  if (!Number.isInteger(pageSize) || pageSize < 0 || pageSize > limits.maxPageSize) {
    throw invalidArgument(`page_size must be in [0, ${limits.maxPageSize}]: found ${pageSize}`);
  }
  if (pageToken.length > 1024) {
    throw invalidArgument(`page_token must be at most 1024 characters: found ${pageToken.length}`);
  }
  return { pageSize: pageSize === 0 ? limits.defaultPageSize : pageSize, pageToken };
}

// ------------------------------------------------------------------------------------------
// Well-known types

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

// ------------------------------------------------------------------------------------------
// Templates

/** The template fields that were given (proto3 optionals stay absent when unset). */
export function fromProtoTemplate(t: ProtoTemplateOut): TemplateInput {
  const out: TemplateInput = {};
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
const ENCODER: Record<string, string | undefined> = {
  ENCODER_TYPE_LSTM: "lstm",
  ENCODER_TYPE_MLP: "mlp",
};

function setIf(o: Record<string, unknown>, key: string, v: unknown) {
  if (v !== undefined && v !== null && v !== "") o[key] = v;
}

function datasetFiles(d: Dataset__Output | null, field: string): string[] {
  const files = d?.files ?? [];
  files.forEach((f, i) => {
    if (f.startsWith("/") || f.split(/[\\/]/).includes("..") || f.includes("\0")) {
      throw invalidArgument(
        `${field}.files[${i}] must be a relative path without "..": found ${JSON.stringify(f)}`,
      );
    }
  });
  return files;
}

function records(d: Dataset__Output | null): DatasetRecord[] {
  return (d?.records ?? []).map(fromStruct);
}

/**
 * The structured TrainConfig as the object NeMo's YAML would parse to (only the keys given, so
 * that the domain's defaults apply to the rest).
 */
export function trainConfigObject(c: TrainConfig__Output): Record<string, unknown> {
  const model: Record<string, unknown> = {};
  const style = STYLE[c.virtualPromptStyle];
  setIf(model, "virtual_prompt_style", style);
  if (c.taskTemplates.length) {
    model.task_templates = c.taskTemplates.map((t, i) => {
      const tpl = fromProtoTemplate(t);
      if (!tpl.taskname) throw invalidArgument(`config.task_templates[${i}].taskname is required`);
      checkName(tpl.taskname, `config.task_templates[${i}].taskname`);
      return tpl;
    });
  }
  c.newTasks.forEach((n, i) => checkName(n, `config.new_tasks[${i}]`));
  c.existingTasks.forEach((n, i) => checkName(n, `config.existing_tasks[${i}]`));
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
    train_ds: datasetFiles(c.trainDs, "config.train_ds"),
    validation_ds: datasetFiles(c.validationDs, "config.validation_ds"),
    test_ds: datasetFiles(c.testDs, "config.test_ds"),
  };
  if (c.skipBadRecords) data.skip_bad_lines = true;
  model.data = data;
  setIf(trainer, "max_epochs", c.maxEpochs);
  setIf(trainer, "max_steps", c.maxSteps);
  setIf(trainer, "val_check_interval", c.valCheckInterval);
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

export function toTrainSubmission(req: TrainRequest__Output, maxYaml: number): TrainSubmission {
  const inlineRecords = {
    train: records(req.extraTrainRecords),
    validation: records(req.extraValidationRecords),
    test: [] as DatasetRecord[],
  };
  if (req.source === "configYaml") {
    const text = req.configYaml ?? "";
    if (!text.trim()) throw invalidArgument("config_yaml must not be empty");
    if (text.length > maxYaml) {
      throw new RpcError(
        status.RESOURCE_EXHAUSTED,
        `config_yaml must be at most ${maxYaml} characters: found ${text.length}`,
      );
    }
    return { source: { kind: "yaml", text }, inlineRecords };
  }
  if (req.source === "config" && req.config) {
    inlineRecords.train.unshift(...records(req.config.trainDs));
    inlineRecords.validation.unshift(...records(req.config.validationDs));
    inlineRecords.test.push(...records(req.config.testDs));
    return { source: { kind: "object", config: trainConfigObject(req.config) }, inlineRecords };
  }
  throw invalidArgument("one of config or config_yaml is required");
}

const JOB_STATE: Record<JobState, ProtoJobState> = {
  queued: "JOB_STATE_QUEUED",
  running: "JOB_STATE_RUNNING",
  succeeded: "JOB_STATE_SUCCEEDED",
  failed: "JOB_STATE_FAILED",
  cancelled: "JOB_STATE_CANCELLED",
};

export function toProtoJob(j: JobView): Job {
  return {
    jobId: j.id,
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
  };
}

function toProtoMetrics(m: MetricsByTask): Record<string, TaskMetrics> {
  const out: Record<string, TaskMetrics> = {};
  for (const [task, values] of Object.entries(m)) out[task] = { values };
  return out;
}

export function toProtoEvent(e: TrainEvent): ProtoTrainEvent {
  const head = { sequence: e.sequence, jobId: e.jobId, time: toTimestamp(e.time) };
  const b = e.body;
  switch (b.type) {
    case "queued":
      return { ...head, queued: { position: b.position } };
    case "started":
      return {
        ...head,
        started: {
          totalSteps: b.totalSteps,
          totalEpochs: b.totalEpochs,
          tasks: b.tasks,
          droppedExamples: b.droppedExamples ?? {},
        },
      };
    case "step":
      return {
        ...head,
        step: {
          step: b.step,
          epoch: b.epoch,
          loss: b.loss,
          learningRate: b.learningRate,
          tokensPerSecond: b.tokensPerSecond,
          etaSeconds: b.etaSeconds,
          totalSteps: b.totalSteps,
        },
      };
    case "validation":
      return {
        ...head,
        validation: {
          step: b.step,
          epoch: b.epoch,
          loss: b.loss,
          metrics: toProtoMetrics(b.metrics),
        },
      };
    case "checkpoint":
      return { ...head, checkpoint: { step: b.step, kind: b.kind } };
    case "completed":
      return { ...head, completed: { written: b.written, metrics: toProtoMetrics(b.metrics) } };
    case "failed":
      return { ...head, failed: { reason: b.reason } };
    case "cancelled":
      return { ...head, cancelled: { reason: b.reason ?? "" } };
  }
}

/** Whether an event ends its job's stream. */
export function isTerminal(e: TrainEvent): boolean {
  return e.body.type === "completed" || e.body.type === "failed" || e.body.type === "cancelled";
}

// ------------------------------------------------------------------------------------------
// Tasks

export function toRegisterInput(
  req: RegisterTaskRequest__Output,
  limits: { maxTableValues: number },
): RegisterTaskInput {
  const name = checkName(req.name, "name");
  const template = req.template ? fromProtoTemplate(req.template) : undefined;
  if (template?.taskname && template.taskname !== name) {
    throw invalidArgument(
      `template.taskname must equal name (${JSON.stringify(name)}) or be empty: found ${
        JSON.stringify(template.taskname)
      }`,
    );
  }
  if (template) template.taskname = name;
  if (req.source === "table" && req.table) {
    const { rows, hidden, values } = req.table;
    if (!template) throw invalidArgument("template is required with a table");
    if (rows <= 0 || hidden <= 0) {
      throw invalidArgument(`table.rows and table.hidden must be > 0: found ${rows} x ${hidden}`);
    }
    if (values.length > limits.maxTableValues) {
      throw new RpcError(
        status.RESOURCE_EXHAUSTED,
        `table.values must hold at most ${limits.maxTableValues} values: found ${values.length}`,
      );
    }
    if (values.length !== rows * hidden) {
      throw invalidArgument(
        `table.values must hold rows x hidden = ${rows} x ${hidden} = ${
          rows * hidden
        } values: found ${values.length}`,
      );
    }
    return {
      name,
      template,
      source: { kind: "table", rows, hidden, values: Float32Array.from(values) },
      createOnly: req.createOnly,
    };
  }
  if (req.source === "peft" && req.peft) {
    if (req.peft.adapterConfigJson.length === 0) {
      throw invalidArgument("peft.adapter_config_json must not be empty");
    }
    if (req.peft.adapterSafetensors.length === 0) {
      throw invalidArgument("peft.adapter_safetensors must not be empty");
    }
    return {
      name,
      template,
      source: {
        kind: "peft",
        adapterConfigJson: new Uint8Array(req.peft.adapterConfigJson),
        adapterSafetensors: new Uint8Array(req.peft.adapterSafetensors),
      },
      createOnly: req.createOnly,
    };
  }
  throw invalidArgument("one of table or peft is required");
}

export function toProtoTask(t: TaskView): Task {
  return {
    name: t.name,
    version: t.version,
    template: t.template ? toProtoTemplate(t.template) : null,
    totalVirtualTokens: t.totalVirtualTokens,
    hiddenSize: t.hiddenSize,
    baseModelFingerprint: t.baseModelFingerprint,
    metrics: t.metrics,
    createdAt: toTimestamp(t.createdAt),
    versions: t.versions,
    hasEncoderState: t.hasEncoderState,
    source: t.source,
  };
}

// ------------------------------------------------------------------------------------------
// Inference

export function toInferInput(r: InferRequest__Output, field: string): InferInput {
  const task = checkName(r.task, `${field}.task`);
  if (r.version !== undefined && r.version < 1) {
    throw invalidArgument(`${field}.version must be >= 1 when set: found ${r.version}`);
  }
  if (r.maxNewTokens < 0) {
    throw invalidArgument(`${field}.max_new_tokens must be >= 0: found ${r.maxNewTokens}`);
  }
  if (r.minNewTokens < 0) {
    throw invalidArgument(`${field}.min_new_tokens must be >= 0: found ${r.minNewTokens}`);
  }
  const random = r.sampling?.mode === "random" ? r.sampling.random : null;
  if (random && !(random.temperature > 0)) {
    throw invalidArgument(
      `${field}.sampling.random.temperature must be > 0: found ${random.temperature}`,
    );
  }
  if (random && (random.topP < 0 || random.topP > 1)) {
    throw invalidArgument(`${field}.sampling.random.top_p must be in [0, 1]: found ${random.topP}`);
  }
  if (random && random.topK < 0) {
    throw invalidArgument(`${field}.sampling.random.top_k must be >= 0: found ${random.topK}`);
  }
  return {
    task,
    ...(r.version !== undefined ? { version: r.version } : {}),
    fields: { ...r.fields },
    options: {
      ...(r.maxNewTokens > 0 ? { maxNewTokens: r.maxNewTokens } : {}),
      ...(r.minNewTokens > 0 ? { minNewTokens: r.minNewTokens } : {}),
      doSample: random !== null,
      ...(random
        ? {
          temperature: random.temperature,
          ...(random.topK > 0 ? { topK: random.topK } : {}),
          ...(random.topP > 0 ? { topP: random.topP } : {}),
          ...(random.seed !== undefined ? { seed: random.seed } : {}),
        }
        : {}),
      ...(r.repetitionPenalty !== undefined ? { repetitionPenalty: r.repetitionPenalty } : {}),
      stop: [...r.stop],
      logprobs: r.returnLogprobs,
    },
  };
}

const FINISH: Record<FinishReason, ProtoFinishReason> = {
  length: "FINISH_REASON_LENGTH",
  stop: "FINISH_REASON_STOP",
  eos: "FINISH_REASON_EOS",
};

export function toCompletion(o: InferOutput): Completion {
  return {
    text: o.text,
    tokenIds: o.tokenIds,
    finishReason: FINISH[o.finishReason],
    logprobs: o.logprobs
      ? o.logprobs.map((lp, i) => ({
        tokenId: o.tokenIds[i],
        text: o.tokenTexts?.[i] ?? "",
        logprob: lp,
      }))
      : [],
    promptTokens: o.promptTokens,
    taskVersion: o.version,
  };
}
