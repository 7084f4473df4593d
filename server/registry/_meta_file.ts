/**
 * `meta.json` of a stored version. It carries its own sha256 (`metaSha256`, over the JSON text of
 * the other fields) so that a damaged template or fingerprint is caught like a damaged table.
 * The version number is not stored: it is the directory's name, which the commit rename fixes.
 */
import { createHash } from "node:crypto";
import { SOURCES } from "./_draft.ts";
import { TaskCorruptError } from "./errors.ts";
import { validateFingerprint } from "./fingerprint.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { EncoderKind, EncoderState, ModelFingerprint, TaskSource } from "./types.ts";

export const META_FORMAT = "prompt-learning-service/task-version/1";

/**
 * Encoder kinds as meta.json spells them. Versions written before NeMo's encoders existed say
 * "mlp" and mean PEFT's three-layer MLP, so "mlp" is never written again: NeMo's MLP is stored as
 * "nemo_mlp", and a server that predates it refuses such a version as corrupt instead of loading
 * it as PEFT's MLP.
 */
const STORED_KIND: Record<EncoderKind, string> = {
  tpmlp: "tpmlp",
  mlp: "nemo_mlp",
  lstm: "lstm",
  peft_mlp: "peft_mlp",
  embedding: "embedding",
};
const KIND_OF_STORED: Record<string, EncoderKind> = {
  ...Object.fromEntries(Object.entries(STORED_KIND).map(([k, s]) => [s, k as EncoderKind])),
  mlp: "peft_mlp", // the old spelling
};

export interface MetaFile {
  format: typeof META_FORMAT;
  /** Unique per stored version: tells a cached version from a new one after delete + put. */
  uid: string;
  name: string;
  template: TaskTemplate;
  totalVirtualTokens: number;
  hiddenSize: number;
  fingerprint: ModelFingerprint;
  metrics: Record<string, number>;
  createdAt: string;
  source: TaskSource;
  checksum: string;
  /**
   * Encoder kind, config and tensor names (the tensors are in `encoder.safetensors`). The kind is
   * spelt as STORED_KIND on disk; encodeMeta and decodeMeta translate.
   */
  encoder:
    | { kind: EncoderState["kind"]; config: Record<string, unknown>; tensors: string[] }
    | null;
  /**
   * The request id the version was put with and its request's digest (`PutOptions`); absent
   * when it had none (and in versions written before ids existed, which older servers still read:
   * the fields are only present when set, and metaSha256 covers them like the rest).
   */
  requestId?: string;
  requestDigest?: string;
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

export function encodeMeta(meta: MetaFile): Uint8Array {
  const onDisk = meta.encoder
    ? { ...meta, encoder: { ...meta.encoder, kind: STORED_KIND[meta.encoder.kind] } }
    : meta;
  const body = JSON.stringify(onDisk, null, 2);
  const withSum = { ...onDisk, metaSha256: sha256(body) };
  return new TextEncoder().encode(JSON.stringify(withSum, null, 2) + "\n");
}

/** Parses and checks a meta.json; `file` names it in errors (all TaskCorruptError). */
export function decodeMeta(bytes: Uint8Array, file: string, expectedName: string): MetaFile {
  try {
    return decode(bytes, file, expectedName);
  } catch (e) {
    if (!(e instanceof TaskCorruptError)) throw e;
    throw new TaskCorruptError(`${e.message}; refusing to use it`, { cause: e.cause });
  }
}

function decode(bytes: Uint8Array, file: string, expectedName: string): MetaFile {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new TaskCorruptError(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new TaskCorruptError(`${file}: expected a JSON object`);
  }
  const { metaSha256, ...rest } = raw;
  const computed = sha256(JSON.stringify(rest, null, 2));
  if (metaSha256 !== computed) {
    throw new TaskCorruptError(
      `${file}: metadata fails its checksum (metaSha256 ${JSON.stringify(metaSha256)}, ` +
        `computed ${computed})`,
    );
  }
  const m = rest as unknown as MetaFile;
  const bad = (field: string, found: unknown) =>
    new TaskCorruptError(`${file}: ${field} is invalid: found ${JSON.stringify(found)}`);
  if (m.format !== META_FORMAT) {
    throw new TaskCorruptError(
      `${file}: format must be ${JSON.stringify(META_FORMAT)}: found ${JSON.stringify(m.format)}`,
    );
  }
  if (m.name !== expectedName) {
    throw new TaskCorruptError(
      `${file}: name must be ${JSON.stringify(expectedName)} (its directory): found ${
        JSON.stringify(m.name)
      }`,
    );
  }
  if (typeof m.uid !== "string") throw bad("uid", m.uid);
  if (!Number.isSafeInteger(m.totalVirtualTokens) || m.totalVirtualTokens < 1) {
    throw bad("totalVirtualTokens", m.totalVirtualTokens);
  }
  if (!Number.isSafeInteger(m.hiddenSize) || m.hiddenSize < 1) {
    throw bad("hiddenSize", m.hiddenSize);
  }
  try {
    validateFingerprint(m.fingerprint, "fingerprint");
  } catch (e) {
    throw new TaskCorruptError(`${file}: ${(e as Error).message}`, { cause: e });
  }
  if (typeof m.template !== "object" || m.template === null) throw bad("template", m.template);
  if (typeof m.metrics !== "object" || m.metrics === null) throw bad("metrics", m.metrics);
  if (typeof m.createdAt !== "string") throw bad("createdAt", m.createdAt);
  if (!SOURCES.includes(m.source)) throw bad("source", m.source);
  if (typeof m.checksum !== "string" || !/^[0-9a-f]{64}$/.test(m.checksum)) {
    throw bad("checksum", m.checksum);
  }
  if (m.requestId !== undefined && typeof m.requestId !== "string") {
    throw bad("requestId", m.requestId);
  }
  if (m.requestDigest !== undefined && typeof m.requestDigest !== "string") {
    throw bad("requestDigest", m.requestDigest);
  }
  if (m.encoder !== null) {
    const e = m.encoder;
    if (
      typeof e !== "object" ||
      !Object.hasOwn(KIND_OF_STORED, e.kind) ||
      !Array.isArray(e.tensors) || typeof e.config !== "object" || e.config === null
    ) {
      throw bad("encoder", e);
    }
    return { ...m, encoder: { ...e, kind: KIND_OF_STORED[e.kind] } };
  }
  return m;
}
