/**
 * The service's one error taxonomy. Every failure the domain reports on purpose is a
 * `ServiceError` whose `kind` says what went wrong; the RPC layer turns a kind into a gRPC status
 * in one function (`rpc/errors.ts`), and commands print the message. Anything thrown that is not
 * a `ServiceError` (a TypeError from a bug, an I/O error nobody expected) is a bug: callers see
 * "internal error" and the details go to the server log only.
 *
 * Messages name the field and the value found:
 * `model.optim.lr must be a finite number > 0: found -1`.
 */

export type ErrorKind =
  /** The caller's input is malformed or out of range; the message names the field. */
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  /** The input is fine but the system is not in a state to act on it (wrong base model). */
  | "failed_precondition"
  /** A size or queue limit; `limit` names the setting. */
  | "resource_exhausted"
  | "cancelled"
  | "deadline_exceeded"
  | "unauthenticated"
  | "permission_denied"
  | "unavailable"
  /** Stored bytes are damaged (checksum, unreadable metadata): never served, not the caller's fault. */
  | "data_loss"
  /** A bug. Its message is logged, never sent. */
  | "internal";

export const ERROR_KINDS: readonly ErrorKind[] = [
  "invalid_argument",
  "not_found",
  "already_exists",
  "failed_precondition",
  "resource_exhausted",
  "cancelled",
  "deadline_exceeded",
  "unauthenticated",
  "permission_denied",
  "unavailable",
  "data_loss",
  "internal",
];

export interface ServiceErrorOptions extends ErrorOptions {
  /** The setting that refused the request (e.g. "max_queue_length"), for resource limits. */
  limit?: string;
}

export class ServiceError extends Error {
  readonly kind: ErrorKind;
  readonly limit?: string;

  constructor(kind: ErrorKind, message: string, options: ServiceErrorOptions = {}) {
    const { limit, ...rest } = options;
    super(message, rest.cause === undefined ? undefined : rest);
    this.name = "ServiceError";
    this.kind = kind;
    if (limit !== undefined) this.limit = limit;
  }
}

/** `limit`: the setting whose bound the value broke, when a setting did (e.g. "max_new_tokens"). */
export function invalidArgument(message: string, limit?: string): ServiceError {
  return new ServiceError("invalid_argument", message, { limit });
}

export function notFound(message: string): ServiceError {
  return new ServiceError("not_found", message);
}

export function alreadyExists(message: string): ServiceError {
  return new ServiceError("already_exists", message);
}

export function failedPrecondition(message: string): ServiceError {
  return new ServiceError("failed_precondition", message);
}

export function resourceExhausted(message: string, limit: string): ServiceError {
  return new ServiceError("resource_exhausted", message, { limit });
}

export function cancelled(message = "the request was cancelled"): ServiceError {
  return new ServiceError("cancelled", message);
}

export function unauthenticated(message: string): ServiceError {
  return new ServiceError("unauthenticated", message);
}

/**
 * The kind of anything thrown: a ServiceError's own; an AbortError (a signal's reason) is
 * cancelled and a TimeoutError deadline_exceeded; everything else is internal (a bug).
 */
export function errorKind(err: unknown): ErrorKind {
  if (err instanceof ServiceError) return err.kind;
  if (err instanceof Error || err instanceof DOMException) {
    if (err.name === "TimeoutError") return "deadline_exceeded";
    if (err.name === "AbortError") return "cancelled";
  }
  return "internal";
}

/** The OS's codes for a full file system (ENOSPC) or a used-up disk quota (EDQUOT). */
const DISK_FULL_CODES = new Set(["ENOSPC", "EDQUOT"]);

/** Whether `err` is the OS saying a disk (or its quota) is full. */
export function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && DISK_FULL_CODES.has(code);
}

/**
 * A full disk as the caller may read it: resource_exhausted naming `storage` as a setting, never
 * a path (e.g. "the registry (REGISTRY_DIR)"); anything else is returned as it was. The writers
 * leave what they had stored whole (they write aside and rename), so the message says so.
 */
export function diskFull(err: unknown, storage: string): unknown {
  if (err instanceof ServiceError || !isDiskFull(err)) return err;
  return new ServiceError(
    "resource_exhausted",
    `${storage} is full (no space left on device): free space there, then retry; ` +
      "what was stored before is intact",
    { cause: err },
  );
}

/** Runs `fn`, a write to `storage`; a full disk becomes `diskFull(err, storage)`. */
export async function writingTo<T>(storage: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw diskFull(e, storage);
  }
}

/** Whether `err` is a ServiceError of `kind`. */
export function isKind(err: unknown, kind: ErrorKind): err is ServiceError {
  return err instanceof ServiceError && err.kind === kind;
}

/**
 * The message a caller may see for `err`: its own for a deliberate error, a fixed sentence with a
 * reference for a bug (whose details `log` receives with the same reference).
 */
export function publicMessage(
  err: unknown,
  log: (ref: string, err: unknown) => void = logInternal,
): string {
  const kind = errorKind(err);
  if (kind !== "internal") return (err as Error).message;
  const ref = crypto.randomUUID().slice(0, 8);
  log(ref, err);
  return `internal error: a bug in the service; the server log has the details under ${ref}`;
}

function logInternal(ref: string, err: unknown): void {
  const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
  console.error(JSON.stringify({ msg: "internal error", ref, error: detail }));
}
