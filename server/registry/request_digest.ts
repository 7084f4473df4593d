/**
 * Request ids (AIP-155): a caller names a mutating call with a UUID, and a retry with the same
 * id gets the first call's result instead of repeating its effect. A store records the id with
 * what it wrote, beside a digest of the request, so that a retry (same digest) is told from a
 * different request that reuses the id (another digest: already_exists).
 *
 * The digest is SHA-256 over a canonical JSON of the request: object keys sorted, typed arrays
 * written as arrays of numbers (so a Float32Array and the number[] a proto decoder gives digest
 * alike), undefined members dropped, as JSON.stringify does. It is hashed as it is written, so a
 * 16 MiB table is never one string.
 */
import { createHash } from "node:crypto";
import { invalidArgument } from "../errors.ts";
import { isUuid } from "../util/uuid.ts";

/**
 * The request id of a call: undefined when empty (proto3's unset), else the UUID in lower case
 * (ids are compared without regard to case); invalid_argument naming `field` otherwise.
 */
export function parseRequestId(
  value: string | undefined,
  field = "request_id",
): string | undefined {
  if (value === undefined || value === "") return undefined;
  if (typeof value !== "string" || !isUuid(value)) {
    throw invalidArgument(
      `${field} must be a UUID (8-4-4-4-12 hex digits, AIP-155) or empty: found ${
        JSON.stringify(String(value).slice(0, 80))
      }`,
    );
  }
  return value.toLowerCase();
}

/** SHA-256 hex of `value`'s canonical JSON. */
export function requestDigest(value: unknown): string {
  const hash = createHash("sha256");
  let buf = "";
  writeCanonical(value, (s) => {
    buf += s;
    if (buf.length >= 1 << 16) {
      hash.update(buf);
      buf = "";
    }
  });
  hash.update(buf);
  return hash.digest("hex");
}

/** The canonical JSON text itself (for small values and tests). */
export function canonicalJson(value: unknown): string {
  let out = "";
  writeCanonical(value, (s) => out += s);
  return out;
}

type TypedArray =
  | BigInt64Array
  | BigUint64Array
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array;

/** Numbers as JSON writes them: NaN and the infinities are null, -0 is 0. */
function number(n: number): string {
  return Number.isFinite(n) ? JSON.stringify(n) : "null";
}

function writeCanonical(value: unknown, emit: (s: string) => void): void {
  // Typed arrays first: a Buffer's toJSON would make it {type, data}, unlike a Uint8Array.
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) {
    const a = value as TypedArray;
    emit("[");
    for (let at = 0; at < a.length; at += 4096) {
      const chunk = a.subarray(at, at + 4096);
      if (at > 0) emit(",");
      // Integers print the same through join as through JSON; floats may be NaN.
      emit(
        chunk instanceof Float32Array || chunk instanceof Float64Array
          ? Array.from(chunk, number).join(",")
          : chunk.join(","),
      );
    }
    emit("]");
    return;
  }
  const toJSON = (value as { toJSON?: unknown } | null | undefined)?.toJSON;
  const v = typeof toJSON === "function" ? toJSON.call(value) : value;
  if (v === null || v === undefined || typeof v === "function" || typeof v === "symbol") {
    emit("null");
  } else if (typeof v === "number") {
    emit(number(v));
  } else if (typeof v === "boolean" || typeof v === "string") {
    emit(JSON.stringify(v));
  } else if (typeof v === "bigint") {
    throw new TypeError("a request digest cannot hold a bigint");
  } else if (Array.isArray(v)) {
    emit("[");
    v.forEach((x, i) => {
      if (i > 0) emit(",");
      writeCanonical(x, emit);
    });
    emit("]");
  } else {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => {
      const x = o[k];
      return x !== undefined && typeof x !== "function" && typeof x !== "symbol";
    }).sort();
    emit("{");
    keys.forEach((k, i) => {
      emit(`${i > 0 ? "," : ""}${JSON.stringify(k)}:`);
      writeCanonical(o[k], emit);
    });
    emit("}");
  }
}
