/**
 * The registry's vocabulary: one immutable artifact per task version (template, virtual-token
 * count, materialised prompt table, optional p-tuning encoder state, base-model fingerprint), and
 * the store interface that the disk and memory stores implement.
 */
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { PageRequest } from "../util/paging.ts";

/** Identifies the frozen base model a table was tuned on; a table only makes sense on it. */
export interface ModelFingerprint {
  hiddenSize: number;
  vocabSize: number;
  /** sha256 hex over the model's float32 weights (`LoadedModel.weightsHash`). */
  weightsHash: string;
}

export interface EncoderTensor {
  shape: number[];
  data: Float32Array;
}

/**
 * A p-tuning encoder's architecture (see `training/prompt_encoder.ts`): NeMo's tpmlp and mlp
 * (num_layers Linear layers), lstm (NeMo's and PEFT's), PEFT's fixed three-layer MLP, and NeMo's
 * embedding (the trained embedding itself).
 */
export type EncoderKind = "tpmlp" | "mlp" | "lstm" | "peft_mlp" | "embedding";

/** Every kind, NeMo's default first. */
export const ENCODER_KINDS: readonly EncoderKind[] = [
  "tpmlp",
  "mlp",
  "lstm",
  "peft_mlp",
  "embedding",
];

/** A p-tuning prompt encoder, kept so that training can resume; serving uses only the table. */
export interface EncoderState {
  kind: EncoderKind;
  config: Record<string, unknown>;
  tensors: Record<string, EncoderTensor>;
}

/** How a version came to be. */
export type TaskSource = "prompt_tuning" | "p_tuning" | "peft_import" | "register";

/** What a caller hands to `TaskStore.put()`; the store assigns version, time and checksum. */
export interface TaskDraft {
  template: TaskTemplate;
  totalVirtualTokens: number;
  hiddenSize: number;
  /** [totalVirtualTokens, hiddenSize] row-major. */
  table: Float32Array;
  encoderState?: EncoderState;
  fingerprint: ModelFingerprint;
  /** Default: {}. */
  metrics?: Record<string, number>;
  source: TaskSource;
}

/** Everything about a version except its tensors: cheap to read for listings. */
export interface TaskVersionMeta {
  name: string;
  /** 1, 2, 3, ... assigned by the store. */
  version: number;
  template: TaskTemplate;
  totalVirtualTokens: number;
  hiddenSize: number;
  fingerprint: ModelFingerprint;
  metrics: Record<string, number>;
  /** ISO 8601. */
  createdAt: string;
  source: TaskSource;
  /** sha256 hex of the table bytes followed by the encoder tensors (see `checksum.ts`). */
  checksum: string;
  /** Present when the version carries encoder state. */
  encoderKind?: EncoderKind;
}

export interface TaskVersion extends TaskVersionMeta {
  /** [totalVirtualTokens, hiddenSize] row-major; the caller's own copy. */
  table: Float32Array;
  encoderState?: EncoderState;
}

/** One evaluation of a version on a dataset (an Evaluate job's result), kept with the version. */
export interface TaskEvaluation {
  /** Unique per evaluation (the job's id): adding one with the same id replaces it. */
  id: string;
  /** ISO 8601. */
  createdAt: string;
  /** The dataset as the request named it (its files, or "inline records"). */
  dataset: string;
  /** Examples evaluated. */
  examples: number;
  metrics: Record<string, number>;
  /** Classification: the label set the answers were scored over... */
  labels?: string[];
  /** ...and counts[gold][predicted] over it. */
  confusion?: number[][];
}

/** Paging of `list()`: page_size 1..1000 (0 or absent: 50), and the previous page's token. */
export type ListOptions = PageRequest;

/** One task in a listing: its latest version's metadata, or why it could not be read. */
export interface TaskSummary {
  name: string;
  latestVersion: number;
  versionCount: number;
  /** null when the latest version's metadata is unreadable; `problem` then says why. */
  latest: TaskVersionMeta | null;
  problem?: string;
}

export interface TaskPage {
  /** Sorted by name. */
  tasks: TaskSummary[];
  /** "" when this is the last page. */
  nextPageToken: string;
}

export interface PutOptions {
  /**
   * Only create the task: already_exists when it has a version, decided atomically (of two
   * concurrent creators exactly one succeeds).
   */
  createOnly?: boolean;
  /**
   * Names the call that asks for this version (AIP-155; the service passes a UUID). When a version
   * of the same task already carries the id, nothing is written: that version is returned if its
   * `requestDigest` matches, else already_exists names the id and the version. Of concurrent puts
   * with one id exactly one writes. Kept with the version (across restarts and replicas) until
   * it is deleted. Absent or "": every put writes.
   */
  requestId?: string;
  /** A digest of the request (`request_digest.ts`): tells a retry from a reuse of the id. */
  requestDigest?: string;
  /**
   * The caller's: once it aborts, a put that has not reached its commit point writes nothing and
   * rejects with deadline_exceeded or cancelled (after the signal's reason).
   */
  signal?: AbortSignal;
}

export interface TaskStore {
  /** Stores `draft` as the next version of `name` (creating the task) and returns it. */
  put(name: string, draft: TaskDraft, options?: PutOptions): Promise<TaskVersion>;
  /**
   * A version with its table (the latest when `version` is omitted). Refuses a version whose
   * stored bytes fail their checksum or whose fingerprint differs from the store's model.
   */
  get(name: string, version?: number): Promise<TaskVersion>;
  /** Like `get()` without reading the tensors. */
  describe(name: string, version?: number): Promise<TaskVersionMeta>;
  /** Tasks sorted by name, a page at a time. */
  list(options?: ListOptions): Promise<TaskPage>;
  /** The version numbers of `name`, ascending. */
  versions(name: string): Promise<number[]>;
  /** Removes the task and all its versions. */
  delete(name: string): Promise<void>;
  /**
   * Removes one version (a run undoing what it wrote when a later write fails); not_found when
   * it does not exist.
   */
  deleteVersion(name: string, version: number): Promise<void>;
  has(name: string): Promise<boolean>;
  /**
   * Keeps `evaluation` with `name` v`version` (replacing one with the same id); not_found when
   * that version does not exist. Evaluations go with their version when it is deleted.
   */
  addEvaluation(name: string, version: number, evaluation: TaskEvaluation): Promise<void>;
  /** The evaluations kept with a version, oldest first; not_found when it does not exist. */
  evaluations(name: string, version: number): Promise<TaskEvaluation[]>;
}
