/**
 * Registry failures that callers tell apart, in the service's one taxonomy (`../errors.ts`).
 */
import { ServiceError } from "../errors.ts";

/** The task, or the asked-for version of it, does not exist. */
export class TaskNotFoundError extends ServiceError {
  constructor(message: string) {
    super("not_found", message);
    this.name = "TaskNotFoundError";
  }
}

/**
 * Stored bytes are damaged (checksum, unreadable file, inconsistent metadata): never served. Not
 * the caller's fault and not fixed by retrying, hence data_loss.
 */
export class TaskCorruptError extends ServiceError {
  constructor(message: string, options?: ErrorOptions) {
    super("data_loss", message, options);
    this.name = "TaskCorruptError";
  }
}

/** A version was tuned on another base model than the one this store serves. */
export class FingerprintMismatchError extends ServiceError {
  constructor(message: string) {
    super("failed_precondition", message);
    this.name = "FingerprintMismatchError";
  }
}
