/**
 * The one place where errors become gRPC statuses. Handlers and ports throw; the binding in
 * `bind.ts` calls `toStatus()` on whatever reaches it.
 */
import { status } from "@grpc/grpc-js";
import type { ErrorKind } from "./ports.ts";

/** An error raised by the RPC layer itself (validation of the request, auth, limits). */
export class RpcError extends Error {
  readonly code: status;
  constructor(code: status, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RpcError";
    this.code = code;
  }
}

export function invalidArgument(message: string): RpcError {
  return new RpcError(status.INVALID_ARGUMENT, message);
}

const KIND_TO_CODE: Record<ErrorKind, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  failed_precondition: status.FAILED_PRECONDITION,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  unauthenticated: status.UNAUTHENTICATED,
  permission_denied: status.PERMISSION_DENIED,
  cancelled: status.CANCELLED,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  unavailable: status.UNAVAILABLE,
  unimplemented: status.UNIMPLEMENTED,
  internal: status.INTERNAL,
};

/**
 * Domain errors known by name, for layers that signal with their own classes rather than a
 * `kind` (the registry's and the job queue's).
 */
const NAME_TO_CODE: Record<string, status> = {
  TaskNotFoundError: status.NOT_FOUND,
  TaskCorruptError: status.FAILED_PRECONDITION,
  FingerprintMismatchError: status.FAILED_PRECONDITION,
  JobQueueFullError: status.RESOURCE_EXHAUSTED,
  BadLinesError: status.INVALID_ARGUMENT,
};

export interface GrpcStatus {
  code: status;
  details: string;
}

/**
 * Translates anything thrown into a status. `signal` is the call's: when it has aborted, an
 * AbortError becomes CANCELLED or DEADLINE_EXCEEDED according to its reason.
 */
export function toStatus(err: unknown, signal?: AbortSignal): GrpcStatus {
  if (err instanceof RpcError) return { code: err.code, details: err.message };
  if (!(err instanceof Error)) return { code: status.UNKNOWN, details: String(err) };
  const kind = (err as { kind?: unknown }).kind;
  if (typeof kind === "string" && kind in KIND_TO_CODE) {
    return { code: KIND_TO_CODE[kind as ErrorKind], details: err.message };
  }
  const byName = NAME_TO_CODE[err.name];
  if (byName !== undefined) return { code: byName, details: err.message };
  if (err.name === "AbortError" || err.name === "TimeoutError" || signal?.aborted) {
    const reason = signal?.reason;
    if (
      err.name === "TimeoutError" || (reason instanceof Error && reason.name === "TimeoutError")
    ) {
      return { code: status.DEADLINE_EXCEEDED, details: "deadline exceeded" };
    }
    if (signal?.aborted || err.name === "AbortError") {
      return { code: status.CANCELLED, details: "cancelled" };
    }
  }
  if (err instanceof RangeError || err instanceof TypeError) {
    return { code: status.INVALID_ARGUMENT, details: err.message };
  }
  return { code: status.INTERNAL, details: `internal error: ${err.message}` };
}

/** The name of a status code ("NOT_FOUND"), for logs and span attributes. */
export function codeName(code: status): string {
  return status[code] ?? String(code);
}
