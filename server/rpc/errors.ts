/**
 * The one place where errors become gRPC statuses: an error's kind (`../errors.ts`) picks the
 * code; a bug (no kind) is INTERNAL with a fixed message and a reference, its details logged.
 */
import { status } from "@grpc/grpc-js";
import { type ErrorKind, errorKind, publicMessage, ServiceError } from "../errors.ts";

const KIND_TO_CODE: Record<ErrorKind, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  failed_precondition: status.FAILED_PRECONDITION,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  cancelled: status.CANCELLED,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  unauthenticated: status.UNAUTHENTICATED,
  permission_denied: status.PERMISSION_DENIED,
  unavailable: status.UNAVAILABLE,
  data_loss: status.DATA_LOSS,
  internal: status.INTERNAL,
};

/** The status code of an error kind. */
export function statusOf(kind: ErrorKind): status {
  return KIND_TO_CODE[kind];
}

export interface GrpcStatus {
  code: status;
  details: string;
}

/**
 * Translates anything thrown into a status. `signal` is the call's: once it has aborted, whatever
 * the work threw on the way out is reported as the abort's reason (the client's cancel or its
 * deadline), not as a failure of the work.
 */
export function toStatus(err: unknown, signal?: AbortSignal): GrpcStatus {
  const cause = signal?.aborted && errorKind(err) === "internal" ? signal.reason : err;
  const kind = errorKind(cause);
  if (!(cause instanceof ServiceError) && kind !== "internal") {
    // An AbortError or TimeoutError: the signal's own words are about our plumbing.
    const details = kind === "deadline_exceeded" ? "deadline exceeded" : "cancelled";
    return { code: KIND_TO_CODE[kind], details };
  }
  return { code: KIND_TO_CODE[kind], details: publicMessage(cause) };
}

/** The name of a status code ("NOT_FOUND"), for logs and span attributes. */
export function codeName(code: status): string {
  return status[code] ?? String(code);
}
