/** Checks a draft before any store does work, and copies it so later caller edits cannot leak in. */
import { invalidArgument } from "../errors.ts";
import { checkFingerprint, validateFingerprint } from "./fingerprint.ts";
import {
  ENCODER_KINDS,
  type EncoderKind,
  type EncoderState,
  type ModelFingerprint,
  type TaskDraft,
  type TaskSource,
} from "./types.ts";

export const SOURCES: readonly TaskSource[] = [
  "prompt_tuning",
  "p_tuning",
  "peft_import",
  "register",
];

function positiveInt(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
    throw invalidArgument(`${field} must be a positive integer: found ${JSON.stringify(v)}`);
  }
  return v;
}

function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

function validateEncoder(e: unknown, what: string): EncoderState {
  if (typeof e !== "object" || e === null) {
    throw invalidArgument(`${what}.encoderState must be an object: found ${JSON.stringify(e)}`);
  }
  const s = e as Partial<EncoderState>;
  if (!ENCODER_KINDS.includes(s.kind as EncoderKind)) {
    throw invalidArgument(
      `${what}.encoderState.kind must be one of ${
        ENCODER_KINDS.map((k) => `"${k}"`).join(", ")
      }: found ${JSON.stringify(s.kind)}`,
    );
  }
  if (typeof s.config !== "object" || s.config === null || Array.isArray(s.config)) {
    throw invalidArgument(`${what}.encoderState.config must be an object`);
  }
  if (typeof s.tensors !== "object" || s.tensors === null) {
    throw invalidArgument(`${what}.encoderState.tensors must be an object`);
  }
  const tensors: EncoderState["tensors"] = {};
  for (const [name, t] of Object.entries(s.tensors)) {
    const field = `${what}.encoderState.tensors["${name}"]`;
    if (name.length === 0 || name === "__metadata__") {
      throw invalidArgument(
        `${what}.encoderState.tensors has an invalid name ${JSON.stringify(name)}`,
      );
    }
    if (!(t?.data instanceof Float32Array)) {
      throw invalidArgument(`${field}.data must be a Float32Array`);
    }
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw invalidArgument(
        `${field}.shape must be non-negative integers: found ${JSON.stringify(t.shape)}`,
      );
    }
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw invalidArgument(
        `${field}: shape ${
          JSON.stringify(t.shape)
        } holds ${count} values: data has ${t.data.length}`,
      );
    }
    const bad = firstNonFinite(t.data);
    if (bad >= 0) {
      throw invalidArgument(`${field}.data[${bad}] must be finite: found ${t.data[bad]}`);
    }
    tensors[name] = { shape: [...t.shape], data: t.data.slice() };
  }
  return { kind: s.kind as EncoderKind, config: structuredClone(s.config), tensors };
}

/**
 * Validates `draft` for task `name` and returns a private deep copy. When `expected` is given, a
 * draft for another base model is refused too: storing it would only defer the failure to `get()`.
 */
export function validateDraft(
  name: string,
  draft: TaskDraft,
  expected?: ModelFingerprint,
): TaskDraft & { metrics: Record<string, number> } {
  const what = `task "${name}"`;
  if (typeof draft !== "object" || draft === null) {
    throw invalidArgument(`${what}: draft must be an object: found ${JSON.stringify(draft)}`);
  }
  const total = positiveInt(draft.totalVirtualTokens, `${what}: totalVirtualTokens`);
  const hidden = positiveInt(draft.hiddenSize, `${what}: hiddenSize`);
  const fingerprint = validateFingerprint(draft.fingerprint, `${what}: fingerprint`);
  if (fingerprint.hiddenSize !== hidden) {
    throw invalidArgument(
      `${what}: hiddenSize (${hidden}) must equal fingerprint.hiddenSize (${fingerprint.hiddenSize})`,
    );
  }
  if (expected) checkFingerprint(expected, fingerprint, what);

  const t = draft.template;
  if (typeof t !== "object" || t === null) {
    throw invalidArgument(`${what}: template must be an object`);
  }
  if (t.taskname !== name) {
    throw invalidArgument(
      `${what}: template.taskname must equal the task name: found ${JSON.stringify(t.taskname)}`,
    );
  }
  if (t.total_virtual_tokens !== total) {
    throw invalidArgument(
      `${what}: template.total_virtual_tokens (${t.total_virtual_tokens}) must equal ` +
        `totalVirtualTokens (${total})`,
    );
  }
  const splits = t.virtual_token_splits;
  if (!Array.isArray(splits) || !splits.every((s) => Number.isSafeInteger(s) && s > 0)) {
    throw invalidArgument(
      `${what}: template.virtual_token_splits must be positive integers: found ${
        JSON.stringify(splits)
      }`,
    );
  }
  const sum = splits.reduce((a, b) => a + b, 0);
  if (sum !== total) {
    throw invalidArgument(
      `${what}: template.virtual_token_splits must sum to total_virtual_tokens (${total}): ` +
        `current sum is ${sum}`,
    );
  }

  if (!(draft.table instanceof Float32Array)) {
    throw invalidArgument(`${what}: table must be a Float32Array`);
  }
  if (draft.table.length !== total * hidden) {
    throw invalidArgument(
      `${what}: table must hold ${total} x ${hidden} = ${
        total * hidden
      } values: found ${draft.table.length}`,
    );
  }
  const bad = firstNonFinite(draft.table);
  if (bad >= 0) {
    throw invalidArgument(
      `${what}: table[${bad}] (virtual token ${Math.floor(bad / hidden)}) must be finite: ` +
        `found ${draft.table[bad]}`,
    );
  }

  const metrics: Record<string, number> = {};
  if (draft.metrics !== undefined) {
    if (typeof draft.metrics !== "object" || draft.metrics === null) {
      throw invalidArgument(`${what}: metrics must be an object of numbers`);
    }
    for (const [k, v] of Object.entries(draft.metrics)) {
      if (typeof v !== "number" || !Number.isFinite(v)) {
        throw invalidArgument(`${what}: metrics["${k}"] must be a finite number: found ${v}`);
      }
      metrics[k] = v;
    }
  }
  if (!SOURCES.includes(draft.source)) {
    throw invalidArgument(
      `${what}: source must be one of ${SOURCES.join(", ")}: found ${JSON.stringify(draft.source)}`,
    );
  }
  return {
    template: structuredClone(t),
    totalVirtualTokens: total,
    hiddenSize: hidden,
    table: draft.table.slice(),
    encoderState: draft.encoderState === undefined
      ? undefined
      : validateEncoder(draft.encoderState, what),
    fingerprint,
    metrics,
    source: draft.source,
  };
}

/** A deep copy of encoder state, so that stores never hand out their own arrays. */
export function copyEncoder(e: EncoderState | undefined): EncoderState | undefined {
  if (!e) return undefined;
  const tensors: EncoderState["tensors"] = {};
  for (const [k, t] of Object.entries(e.tensors)) {
    tensors[k] = { shape: [...t.shape], data: t.data.slice() };
  }
  return { kind: e.kind, config: structuredClone(e.config), tensors };
}
