/**
 * What the gRPC handlers need from the domain, in domain terms: no gRPC or protobuf type appears
 * here. `server/main.ts` implements these over the trainer, the registry and the scheduler; the
 * tests implement them with small in-memory fakes.
 *
 * Errors: a port throws an `Error` whose `kind` (see `ErrorKind`) says what went wrong, and whose
 * message names the field ("max_new_tokens must be at most 256: found 1000"). `PortError` is one
 * such class, but any error with a `kind` property works (the serving path's `ServingError` does),
 * and `RangeError`/`TypeError` count as invalid_argument. `errors.ts` translates, in one place.
 *
 * Cancellation: every port call that does work receives an `AbortSignal` that aborts when the
 * client cancels or the call's deadline passes; the work should stop then.
 */
import type { TaskTemplate } from "../prompts/template_types.ts";

export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "resource_exhausted"
  | "unauthenticated"
  | "permission_denied"
  | "cancelled"
  | "deadline_exceeded"
  | "unavailable"
  | "unimplemented"
  | "internal";

/** A domain error with a kind; the message should name the field and the value found. */
export class PortError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PortError";
    this.kind = kind;
  }
}

// ------------------------------------------------------------------------------------------
// Paging

export interface PageRequest {
  /** 1..1000 (the RPC layer applies the default, 50). */
  pageSize: number;
  /** "" for the first page. */
  pageToken: string;
}

export interface Page<T> {
  items: T[];
  /** "" on the last page. */
  nextPageToken: string;
}

// ------------------------------------------------------------------------------------------
// Training

/** A dataset record: `taskname` and the template's fields (strings). */
export type DatasetRecord = Record<string, unknown>;

/**
 * A training configuration as submitted. `object` has the shape NeMo's
 * megatron_gpt_prompt_learning_config.yaml has once parsed (`name`, `trainer`, `exp_manager`,
 * `model.task_templates`, `model.optim.sched`, `model.data.train_ds`, ...), built by the RPC layer
 * from the structured request; `yaml` is the text as sent. Either goes through the domain's one
 * config validator.
 */
export type TrainConfigSource =
  | { kind: "yaml"; text: string }
  | { kind: "object"; config: Record<string, unknown> };

export interface TrainSubmission {
  source: TrainConfigSource;
  /** Records sent inline, added to the datasets the configuration names. */
  inlineRecords: { train: DatasetRecord[]; validation: DatasetRecord[]; test: DatasetRecord[] };
}

export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

export interface TaskVersionRef {
  task: string;
  version: number;
}

export interface JobView {
  id: string;
  state: JobState;
  tasks: string[];
  createdAt: Date;
  startedAt?: Date;
  finishedAt?: Date;
  step: number;
  totalSteps: number;
  /** The sequence number of the job's latest event (0 before any). */
  lastSequence: number;
  /** Why it failed. */
  error?: string;
  /** Task versions written (when it succeeded). */
  written: TaskVersionRef[];
}

/** Metrics per task name, e.g. { sentiment: { loss: 0.4, accuracy: 0.78 } }. */
export type MetricsByTask = Record<string, Record<string, number>>;

export type TrainEventBody =
  | { type: "queued"; position: number }
  | {
    type: "started";
    totalSteps: number;
    totalEpochs: number;
    tasks: string[];
    droppedExamples?: Record<string, number>;
  }
  | {
    type: "step";
    step: number;
    epoch: number;
    loss: number;
    learningRate: number;
    tokensPerSecond: number;
    etaSeconds: number;
    totalSteps: number;
  }
  | { type: "validation"; step: number; epoch: number; loss: number; metrics: MetricsByTask }
  | { type: "checkpoint"; step: number; kind: "latest" | "best" }
  | { type: "completed"; written: TaskVersionRef[]; metrics: MetricsByTask }
  | { type: "failed"; reason: string }
  | { type: "cancelled"; reason?: string };

export interface TrainEvent {
  /** 1, 2, 3, ... within the job. */
  sequence: number;
  jobId: string;
  time: Date;
  body: TrainEventBody;
}

export interface TrainingPort {
  /** Validates and queues a job. `signal` covers the submission only, not the job. */
  start(submission: TrainSubmission, signal: AbortSignal): Promise<JobView>;
  /** Throws kind not_found for an unknown id. */
  get(id: string): Promise<JobView>;
  /** Newest first. */
  list(page: PageRequest): Promise<Page<JobView>>;
  /** Cancels a queued or running job; a finished job is returned as it is. */
  cancel(id: string): Promise<JobView>;
  /**
   * Events with sequence > afterSequence: the recorded ones, then live ones; the iterable ends
   * after the job's last event, or when `signal` aborts. Throws not_found for an unknown id.
   */
  events(id: string, afterSequence: number, signal: AbortSignal): AsyncIterable<TrainEvent>;
}

// ------------------------------------------------------------------------------------------
// Tasks

/**
 * A template as sent: NeMo's keys, only those given. The domain validates it and fills the
 * defaults (the RPC layer does not know them).
 */
export type TemplateInput = Partial<TaskTemplate>;

export type TaskSourceInput =
  | {
    kind: "table";
    rows: number;
    hidden: number;
    /** [rows, hidden] row-major. */
    values: Float32Array;
  }
  | { kind: "peft"; adapterConfigJson: Uint8Array; adapterSafetensors: Uint8Array };

export interface RegisterTaskInput {
  name: string;
  /** Required with a table; optional with a PEFT adapter. */
  template?: TemplateInput;
  source: TaskSourceInput;
  /** Refuse with already_exists when the task exists. */
  createOnly: boolean;
}

export interface TaskView {
  name: string;
  version: number;
  template?: TaskTemplate;
  totalVirtualTokens: number;
  hiddenSize: number;
  /** e.g. "h=768 v=50257 sha256=ab12..." */
  baseModelFingerprint: string;
  metrics: Record<string, number>;
  createdAt: Date;
  /** Every stored version, ascending. */
  versions: number[];
  hasEncoderState: boolean;
  /** "trained", "table" or "peft" (or the domain's own word). */
  source: string;
}

export interface TasksPort {
  register(input: RegisterTaskInput, signal: AbortSignal): Promise<TaskView>;
  /** The latest version when `version` is undefined. */
  get(name: string, version?: number): Promise<TaskView>;
  list(page: PageRequest): Promise<Page<TaskView>>;
  /** Returns the versions removed. */
  delete(name: string): Promise<{ name: string; versionsDeleted: number[] }>;
}

// ------------------------------------------------------------------------------------------
// Inference

/** Generation options, named as the serving path names them. */
export interface GenerationInput {
  maxNewTokens?: number;
  minNewTokens?: number;
  /** false: greedy. */
  doSample: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  repetitionPenalty?: number;
  stop: string[];
  logprobs: boolean;
}

export interface InferInput {
  task: string;
  version?: number;
  fields: Record<string, string>;
  options: GenerationInput;
}

export type FinishReason = "length" | "stop" | "eos";

export interface InferOutput {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  /** Aligned with tokenIds when logprobs were asked for. */
  logprobs?: number[];
  /** Text of each token in tokenIds, when the domain has it (for logprob display). */
  tokenTexts?: string[];
  promptTokens: number;
  /** The task version that served the request. */
  version: number;
}

/** One outcome per request, in request order. */
export type InferOutcome = { ok: true; result: InferOutput } | { ok: false; error: Error };

export type InferStreamItem =
  | { type: "token"; tokenId: number; text: string; logprob?: number }
  | { type: "done"; result: InferOutput };

export interface InferencePort {
  /**
   * Runs the requests (batched with whatever else is running). Resolves with one outcome per
   * request in order; a request-level failure is an outcome, not a rejection. Rejects only when
   * the whole call fails (e.g. resource_exhausted before any work).
   */
  infer(requests: InferInput[], signal: AbortSignal, deadline?: Date): Promise<InferOutcome[]>;
  /** Tokens as generated, then one "done". Stops when `signal` aborts. */
  stream(request: InferInput, signal: AbortSignal): AsyncIterable<InferStreamItem>;
}

export interface ServicePorts {
  training: TrainingPort;
  tasks: TasksPort;
  inference: InferencePort;
}
