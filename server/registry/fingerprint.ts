/** Base-model fingerprints: what a table was tuned on, compared before a table is served. */
import { invalidArgument } from "../errors.ts";
import type { LoadedModel } from "../model/weights.ts";
import { FingerprintMismatchError } from "./errors.ts";
import type { ModelFingerprint } from "./types.ts";

/** The fingerprint of a loaded model. */
export function fingerprintOf(model: LoadedModel): ModelFingerprint {
  return {
    hiddenSize: model.config.nEmbd,
    vocabSize: model.config.vocabSize,
    weightsHash: model.weightsHash,
  };
}

/** Throws unless `fp` has the fingerprint's shape; `field` names it in errors. */
export function validateFingerprint(fp: unknown, field: string): ModelFingerprint {
  if (typeof fp !== "object" || fp === null) {
    throw invalidArgument(`${field} must be an object: found ${JSON.stringify(fp)}`);
  }
  const f = fp as Record<string, unknown>;
  for (const key of ["hiddenSize", "vocabSize"]) {
    const v = f[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw invalidArgument(
        `${field}.${key} must be a positive integer: found ${JSON.stringify(v)}`,
      );
    }
  }
  if (typeof f.weightsHash !== "string" || !/^[0-9a-f]{64}$/.test(f.weightsHash)) {
    throw invalidArgument(
      `${field}.weightsHash must be 64 lowercase hex digits: found ${
        JSON.stringify(f.weightsHash)
      }`,
    );
  }
  return {
    hiddenSize: f.hiddenSize as number,
    vocabSize: f.vocabSize as number,
    weightsHash: f.weightsHash,
  };
}

/** Whether two fingerprints name the same model. */
export function sameFingerprint(a: ModelFingerprint, b: ModelFingerprint): boolean {
  return a.hiddenSize === b.hiddenSize && a.vocabSize === b.vocabSize &&
    a.weightsHash === b.weightsHash;
}

/** Throws FingerprintMismatchError naming every field that differs. */
export function checkFingerprint(
  expected: ModelFingerprint,
  found: ModelFingerprint,
  what: string,
): void {
  if (sameFingerprint(expected, found)) return;
  const diffs: string[] = [];
  if (expected.hiddenSize !== found.hiddenSize) {
    diffs.push(`hidden size ${found.hiddenSize} (model: ${expected.hiddenSize})`);
  }
  if (expected.vocabSize !== found.vocabSize) {
    diffs.push(`vocabulary ${found.vocabSize} (model: ${expected.vocabSize})`);
  }
  if (expected.weightsHash !== found.weightsHash) {
    diffs.push(
      `weights hash ${found.weightsHash.slice(0, 12)}… (model: ${
        expected.weightsHash.slice(0, 12)
      }…)`,
    );
  }
  throw new FingerprintMismatchError(
    `${what} was tuned on another base model: ${diffs.join(", ")}; refusing to use it`,
  );
}
