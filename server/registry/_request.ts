/**
 * What every store's put() does alike with its options' request id and signal: read them, answer
 * a retry, and stop at the commit point once the caller has given up. Each store decides where
 * its commit point is and how it finds an id it recorded; the answers are the same.
 */
import { alreadyExists, errorKind, invalidArgument, ServiceError } from "../errors.ts";
import type { PutOptions } from "./types.ts";

/** A put's request id and the digest of its request ("" when none was given). */
export interface PutRequest {
  id: string;
  digest: string;
}

/** Longer ids are refused: they are stored with every version. */
const MAX_ID_LENGTH = 128;

/** The request id of `options`, or null when it has none (absent or empty). */
export function requestOf(options: PutOptions): PutRequest | null {
  const { requestId, requestDigest } = options;
  if (requestId === undefined || requestId === "") return null;
  if (typeof requestId !== "string" || requestId.length > MAX_ID_LENGTH) {
    throw invalidArgument(
      `request_id must be a string of at most ${MAX_ID_LENGTH} characters: found ${
        JSON.stringify(requestId)?.slice(0, 80)
      }`,
    );
  }
  if (requestDigest !== undefined && typeof requestDigest !== "string") {
    throw invalidArgument(`requestDigest must be a string: found ${JSON.stringify(requestDigest)}`);
  }
  return { id: requestId, digest: requestDigest ?? "" };
}

/**
 * The answer to a put whose request id a version of `name` already carries: that version when
 * the request is the same (a retry), already_exists when it is another request reusing the id.
 */
export function answerRetry(
  name: string,
  req: PutRequest,
  found: { version: number; digest: string },
): number {
  if (found.digest === req.digest) return found.version;
  throw alreadyExists(
    `request_id: ${JSON.stringify(req.id)} was already used by a different request to task ` +
      `"${name}", which made version ${found.version}; a new request needs a new request_id`,
  );
}

/**
 * Throws when `signal` has aborted: called at a store's commit point, so that work whose caller
 * gave up (its deadline passed, it cancelled) writes nothing instead of landing unseen later.
 * The error is deadline_exceeded or cancelled, after the signal's reason.
 */
export function checkNotAborted(signal: AbortSignal | undefined, name: string): void {
  if (!signal?.aborted) return;
  const reason: unknown = signal.reason;
  if (errorKind(reason) === "deadline_exceeded") {
    throw new ServiceError(
      "deadline_exceeded",
      `task "${name}": nothing was written: the deadline passed before the version was committed`,
    );
  }
  const why = (reason instanceof Error || reason instanceof DOMException) && reason.message
    ? ` (${reason.message})`
    : "";
  throw new ServiceError(
    "cancelled",
    `task "${name}": nothing was written: the call was cancelled${why} before the version was ` +
      "committed",
  );
}
