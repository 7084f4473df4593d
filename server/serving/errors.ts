/**
 * The one error type of the serving path. `kind` names the gRPC-like category so that the RPC
 * layer can translate it in one place; `limit` names the setting that refused the request.
 */

export type ServingErrorKind =
  | "invalid_argument"
  | "resource_exhausted"
  | "cancelled"
  | "not_found"
  | "unavailable"
  | "internal";

export class ServingError extends Error {
  readonly kind: ServingErrorKind;
  /** The limit or option that caused a refusal (e.g. "max_queue_length"), when one did. */
  readonly limit?: string;

  constructor(
    kind: ServingErrorKind,
    message: string,
    opts: { limit?: string; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "ServingError";
    this.kind = kind;
    if (opts.limit !== undefined) this.limit = opts.limit;
  }
}

export function invalidArgument(message: string, limit?: string): ServingError {
  return new ServingError("invalid_argument", message, { limit });
}

export function resourceExhausted(message: string, limit: string): ServingError {
  return new ServingError("resource_exhausted", message, { limit });
}

export function cancelled(message = "the request was cancelled"): ServingError {
  return new ServingError("cancelled", message);
}
