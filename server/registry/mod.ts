/** Public surface of the task registry: versioned prompt tables, their stores, PEFT adapters. */
export { ENCODER_KINDS } from "./types.ts";
export type {
  EncoderKind,
  EncoderState,
  EncoderTensor,
  ListOptions,
  ModelFingerprint,
  PutOptions,
  TaskDraft,
  TaskPage,
  TaskSource,
  TaskStore,
  TaskSummary,
  TaskVersion,
  TaskVersionMeta,
} from "./types.ts";
export { FingerprintMismatchError, TaskCorruptError, TaskNotFoundError } from "./errors.ts";
export { DiskTaskStore, type DiskTaskStoreOptions, type WriteEvent } from "./disk_store.ts";
export {
  type RegisterTaskRequest,
  type TableSource,
  type TaskInfo,
  TaskService,
  type TaskServiceOptions,
} from "./task_service.ts";
export { checkFingerprint, fingerprintOf, sameFingerprint } from "./fingerprint.ts";
export { validateTaskName } from "./names.ts";
export { validateDraft } from "./_draft.ts";
export { versionChecksum } from "./checksum.ts";
export {
  encodePeftAdapter,
  exportPeftAdapter,
  importPeftAdapter,
  parsePeftAdapter,
  type PeftAdapterFiles,
  type PeftExportOptions,
  type PeftImportOptions,
} from "./peft.ts";
