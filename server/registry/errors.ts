/**
 * Registry failures that callers must tell apart (the RPC layer maps each to a status code).
 * All are RangeErrors, so code that only cares "was the input acceptable" can catch that.
 */

/** The task, or the asked-for version of it, does not exist. */
export class TaskNotFoundError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = "TaskNotFoundError";
  }
}

/** Stored bytes are damaged (checksum, unreadable file, inconsistent metadata): never served. */
export class TaskCorruptError extends RangeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TaskCorruptError";
  }
}

/** A version was tuned on another base model than the one this store serves. */
export class FingerprintMismatchError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = "FingerprintMismatchError";
  }
}
