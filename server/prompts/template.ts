/**
 * NeMo-style task templates: validation (`validateTemplate`) and turning one record into token ids
 * (`tokenizeExample`). A template such as
 * `<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}` is cut at its markers and placeholders;
 * each literal piece and each field value is tokenised on its own, so a field can be truncated
 * by tokens and a field value can never merge with, or pose as, template text.
 */
import { invalidArgument } from "../errors.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { TaskTemplate } from "./template_types.ts";

export type { TaskTemplate };

/** One example ready for the model. */
export interface TokenizedExample {
  taskname: string;
  /** Token ids; virtual token k of the task is `vocabSize + k`. */
  ids: Int32Array;
  /** Index of the first answer token in `ids`; `ids.length` when there is no answer (inference). */
  answerStart: number;
  /** Whether the truncate_field was cut to fit max_seq_length. */
  truncated: boolean;
  /**
   * The template's answer_only_loss: the loss covers the answer only, or (false, NeMo's default)
   * every token but the virtual ones.
   */
  answerOnlyLoss: boolean;
}

export type DropReason = "too long" | "too short";

export type TokenizeResult =
  | { ok: true; example: TokenizedExample }
  | { ok: false; reason: DropReason; /** length in tokens that caused the drop */ length: number };

export interface TokenizeOptions {
  /** Stop before the answer: ids hold the prompt only, and the answer field may be absent. */
  forInference?: boolean;
}

const TASKNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Whether `v` has the shape of a task name (what a template's taskname must match). */
export function isTasknameShaped(v: string): boolean {
  return TASKNAME.test(v);
}
const FIELD_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PIECE = /<\|VIRTUAL_PROMPT_(\d+)\|>|\{([A-Za-z_][A-Za-z0-9_]*)\}/g;
const TAIL = /^\s*(<\|endoftext\|>)?\s*$/;
const KNOWN_KEYS = new Set([
  "taskname",
  "prompt_template",
  "prompt_template_fields",
  "total_virtual_tokens",
  "virtual_token_splits",
  "truncate_field",
  "answer_field",
  "answer_only_loss",
  "add_bos",
  "add_eos",
  "max_seq_length",
  "min_seq_length",
]);

/** A template cut into pieces, up to (not including) the answer placeholder. */
type Piece =
  | { kind: "text"; text: string }
  | { kind: "virtual"; first: number; count: number }
  | { kind: "field"; name: string; leadingSpace: boolean };

interface ParsedTemplate {
  prompt: Piece[];
  /** The single space before the answer placeholder goes with the answer (GPT-2 tokens carry it). */
  answerLeadingSpace: boolean;
  /** The template has a literal <|endoftext|> after the answer. */
  literalEos: boolean;
}

const show = (v: unknown) => (v === undefined ? "nothing" : JSON.stringify(v));

/**
 * Validates a raw task template (as read from YAML/JSON) and fills NeMo's defaults:
 * answer_only_loss false (NeMo's), add_bos false, add_eos true, max_seq_length 1024, min_seq_length 1,
 * truncate_field null, answer_field the last of prompt_template_fields.
 * `where` prefixes every message (e.g. `train.yaml: model.task_templates[0]`).
 */
export function validateTemplate(raw: unknown, where: string): TaskTemplate {
  const at = where ? `${where}: ` : "";
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw invalidArgument(`${at}a task template must be an object: found ${show(raw)}`);
  }
  const r = raw as Record<string, unknown>;
  const taskname = r.taskname;
  if (typeof taskname !== "string" || !TASKNAME.test(taskname)) {
    throw invalidArgument(
      `${at}taskname must match ${TASKNAME.source} (letters, digits, "_", ".", "-"; ` +
        `at most 64; no leading "." or "-"): found ${show(taskname)}`,
    );
  }
  const task = `${at}task "${taskname}"`;
  for (const key of Object.keys(r)) {
    if (!KNOWN_KEYS.has(key)) {
      throw invalidArgument(
        `${task}: unknown field "${key}": expected one of ${[...KNOWN_KEYS].join(", ")}`,
      );
    }
  }

  const posInt = (key: string, fallback?: number): number => {
    const v = r[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      throw invalidArgument(`${task}: ${key} must be a positive integer: found ${show(r[key])}`);
    }
    return v;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = r[key] ?? fallback;
    if (typeof v !== "boolean") {
      throw invalidArgument(`${task}: ${key} must be true or false: found ${show(r[key])}`);
    }
    return v;
  };

  const template = r.prompt_template;
  if (typeof template !== "string" || template.length === 0) {
    throw invalidArgument(
      `${task}: prompt_template must be a non-empty string: found ${show(template)}`,
    );
  }
  // Absent: the placeholders in order of appearance, as NeMo derives them.
  const fields = r.prompt_template_fields ??
    [...new Set([...template.matchAll(PIECE)].flatMap((m) => (m[2] ? [m[2]] : [])))];
  if (
    !Array.isArray(fields) || fields.length === 0 || !fields.every((f) => typeof f === "string")
  ) {
    throw invalidArgument(
      `${task}: prompt_template_fields must be a non-empty list of field names: found ${
        show(fields)
      }`,
    );
  }
  for (const f of fields as string[]) {
    if (!FIELD_NAME.test(f)) {
      throw invalidArgument(
        `${task}: prompt_template_fields entry ${
          show(f)
        } is not a field name (${FIELD_NAME.source})`,
      );
    }
    if ((fields as string[]).indexOf(f) !== (fields as string[]).lastIndexOf(f)) {
      throw invalidArgument(`${task}: prompt_template_fields lists "${f}" more than once`);
    }
    if (f === "taskname") {
      throw invalidArgument(`${task}: "taskname" cannot be a template field: it names the task`);
    }
  }
  const total = posInt("total_virtual_tokens");
  const splits = r.virtual_token_splits;
  if (
    !Array.isArray(splits) || splits.length === 0 ||
    !splits.every((s) => typeof s === "number" && Number.isInteger(s) && s >= 1)
  ) {
    throw invalidArgument(
      `${task}: virtual_token_splits must be a non-empty list of positive integers: found ${
        show(splits)
      }`,
    );
  }
  const sum = (splits as number[]).reduce((a, b) => a + b, 0);
  if (sum !== total) {
    throw invalidArgument(
      `${task}: virtual_token_splits must sum to total_virtual_tokens (${total}): current sum is ${sum}`,
    );
  }

  const answerField = r.answer_field ?? fields[fields.length - 1];
  if (typeof answerField !== "string" || !(fields as string[]).includes(answerField)) {
    throw invalidArgument(
      `${task}: answer_field must be one of prompt_template_fields (${
        (fields as string[]).join(", ")
      }): found ${show(r.answer_field)}`,
    );
  }
  // YAML written for NeMo sometimes says "None" where it means null.
  const rawTruncate = r.truncate_field === "None" ? null : r.truncate_field ?? null;
  if (rawTruncate !== null) {
    if (typeof rawTruncate !== "string" || !(fields as string[]).includes(rawTruncate)) {
      throw invalidArgument(
        `${task}: truncate_field must be null or one of prompt_template_fields (${
          (fields as string[]).join(", ")
        }): found ${show(rawTruncate)}`,
      );
    }
    if (rawTruncate === answerField) {
      throw invalidArgument(
        `${task}: truncate_field cannot be the answer field "${answerField}": cutting the answer ` +
          `would train on a wrong target`,
      );
    }
  }

  const out: TaskTemplate = {
    taskname,
    prompt_template: template,
    prompt_template_fields: [...(fields as string[])],
    total_virtual_tokens: total,
    virtual_token_splits: [...(splits as number[])],
    truncate_field: rawTruncate as string | null,
    answer_field: answerField,
    // NeMo's default: the loss covers every token but the virtual ones.
    answer_only_loss: bool("answer_only_loss", false),
    add_bos: bool("add_bos", false),
    add_eos: bool("add_eos", true),
    max_seq_length: posInt("max_seq_length", 1024),
    min_seq_length: posInt("min_seq_length", 1),
  };
  if (out.min_seq_length > out.max_seq_length) {
    throw invalidArgument(
      `${task}: min_seq_length (${out.min_seq_length}) must not exceed max_seq_length ` +
        `(${out.max_seq_length})`,
    );
  }
  const parsed = parseTemplate(out, task);
  if (parsed.literalEos && r.add_eos === false) {
    throw invalidArgument(
      `${task}: prompt_template ends in <|endoftext|> but add_eos is false: drop one of them`,
    );
  }
  if (parsed.literalEos) out.add_eos = true;
  return out;
}

/** Cuts a template into pieces; `task` prefixes errors. Checks markers and placeholders. */
function parseTemplate(t: TaskTemplate, task: string): ParsedTemplate {
  const s = t.prompt_template;
  const prompt: Piece[] = [];
  const seenFields: string[] = [];
  let markers = 0;
  let nextVirtual = 0;
  let last = 0;
  let answerAt = -1;
  let answerEnd = -1;
  let pendingText = "";
  const flushText = (text: string) => {
    pendingText += text;
  };
  const emitText = () => {
    if (pendingText !== "") prompt.push({ kind: "text", text: pendingText });
    pendingText = "";
  };
  /** Moves a single space that precedes a placeholder from the literal text to the value. */
  const takeLeadingSpace = (): boolean => {
    if (!pendingText.endsWith(" ")) return false;
    pendingText = pendingText.slice(0, -1);
    return true;
  };

  for (const m of s.matchAll(PIECE)) {
    const idx = m.index;
    if (answerAt >= 0) {
      throw invalidArgument(
        `${task}: the answer field "{${t.answer_field}}" must be the last placeholder: ` +
          `found ${show(m[0])} after it`,
      );
    }
    flushText(s.slice(last, idx));
    last = idx + m[0].length;
    if (m[1] !== undefined) {
      const n = Number(m[1]);
      if (n !== markers || m[1] !== String(n)) {
        throw invalidArgument(
          `${task}: virtual prompt markers must be numbered 0, 1, ... in order: ` +
            `expected <|VIRTUAL_PROMPT_${markers}|>, found ${m[0]}`,
        );
      }
      if (markers >= t.virtual_token_splits.length) {
        throw invalidArgument(
          `${task}: prompt_template has more <|VIRTUAL_PROMPT_n|> markers than ` +
            `virtual_token_splits has entries (${t.virtual_token_splits.length})`,
        );
      }
      emitText();
      const count = t.virtual_token_splits[markers];
      prompt.push({ kind: "virtual", first: nextVirtual, count });
      nextVirtual += count;
      markers++;
      continue;
    }
    const name = m[2];
    if (!t.prompt_template_fields.includes(name)) {
      throw invalidArgument(
        `${task}: prompt_template uses {${name}}, which is not in prompt_template_fields (${
          t.prompt_template_fields.join(", ")
        })`,
      );
    }
    if (seenFields.includes(name)) {
      throw invalidArgument(`${task}: prompt_template uses {${name}} more than once`);
    }
    seenFields.push(name);
    if (name === t.answer_field) {
      answerAt = idx;
      answerEnd = last;
      continue;
    }
    const leadingSpace = takeLeadingSpace();
    emitText();
    prompt.push({ kind: "field", name, leadingSpace });
  }
  if (/VIRTUAL_PROMPT/.test(s.replace(/<\|VIRTUAL_PROMPT_\d+\|>/g, ""))) {
    throw invalidArgument(
      `${task}: prompt_template has a malformed virtual prompt marker: ` +
        `expected the form <|VIRTUAL_PROMPT_0|>`,
    );
  }
  if (markers !== t.virtual_token_splits.length) {
    throw invalidArgument(
      `${task}: prompt_template has ${markers} <|VIRTUAL_PROMPT_n|> markers but ` +
        `virtual_token_splits has ${t.virtual_token_splits.length} entries: they must match`,
    );
  }
  const missing = t.prompt_template_fields.filter((f) => !seenFields.includes(f));
  if (missing.length > 0) {
    throw invalidArgument(
      `${task}: prompt_template_fields lists ${
        missing.map((f) => `"${f}"`).join(", ")
      } but prompt_template has no {${missing[0]}} placeholder`,
    );
  }
  if (seenFields.join("\0") !== t.prompt_template_fields.join("\0")) {
    throw invalidArgument(
      `${task}: prompt_template_fields must list the fields in template order: expected [${
        seenFields.join(", ")
      }], found [${t.prompt_template_fields.join(", ")}]`,
    );
  }
  if (answerAt < 0) {
    // Unreachable when answer_field is listed, but kept for a clear message if it changes.
    throw invalidArgument(`${task}: prompt_template has no {${t.answer_field}} placeholder`);
  }
  const tail = s.slice(answerEnd);
  const tailMatch = TAIL.exec(tail);
  if (!tailMatch) {
    throw invalidArgument(
      `${task}: only whitespace or <|endoftext|> may follow the answer field ` +
        `"{${t.answer_field}}": found ${show(tail)}`,
    );
  }
  const answerLeadingSpace = takeLeadingSpace();
  emitText();
  return { prompt, answerLeadingSpace, literalEos: tailMatch[1] !== undefined };
}

function fieldValue(
  record: Readonly<Record<string, string>>,
  name: string,
  taskname: string,
): string {
  const v = Object.hasOwn(record, name) ? record[name] : undefined;
  if (typeof v !== "string") {
    throw invalidArgument(
      `task "${taskname}": field "${name}" must be a string: found ${show(v)}`,
    );
  }
  return v;
}

/** The ids of `value` as the answer field: with the space before the placeholder, if any. */
function answerText(parsed: ParsedTemplate, value: string, tokenizer: Tokenizer): number[] {
  return tokenizer.encode(parsed.answerLeadingSpace ? " " + value : value);
}

/**
 * The task-relative ids every prompt of `template` starts with: BOS (add_bos), then the virtual
 * tokens and fixed text before the first field, chunk by chunk as tokenizeExample() makes them
 * (the space before that field goes with the field). Serving computes these rows once per task
 * version. Empty when the template starts with a field.
 */
export function sharedPrefixIds(template: TaskTemplate, tokenizer: Tokenizer): number[] {
  const parsed = parseTemplate(template, `task "${template.taskname}"`);
  const ids: number[] = template.add_bos ? [tokenizer.bosId] : [];
  for (const p of parsed.prompt) {
    if (p.kind === "text") ids.push(...tokenizer.encode(p.text));
    else if (p.kind === "virtual") {
      for (let k = 0; k < p.count; k++) ids.push(tokenizer.vocabSize + p.first + k);
    } else break;
  }
  return ids;
}

/**
 * The ids `answer` takes as the task's answer after its prompt, as training scores it: the space
 * before the answer placeholder with it, and EOS after when the template adds one. Scoring ranks
 * candidate answers by these ids.
 */
export function answerIds(template: TaskTemplate, answer: string, tokenizer: Tokenizer): number[] {
  const ids = answerText(parseTemplate(template, `task "${template.taskname}"`), answer, tokenizer);
  return template.add_eos ? [...ids, tokenizer.eosId] : ids;
}

/**
 * Tokenises one record with its task's template. A single space just before a placeholder is
 * tokenised with that field's value, because GPT-2 tokens carry their leading space: so
 * ` {sentence} sentiment: {label}` gives the ids of ` <sentence> sentiment:` as one string, and
 * the answer is `tokenize(" " + label)` (+ EOS). Lengths count every id (BOS, virtual tokens,
 * answer, EOS); shorter than min_seq_length: dropped. Too long:
 * - a training example is cut as NeMo cuts it (gpt_prompt_learning_dataset.py v1.20.0:161-179,
 *   :270-297, :299-311): the truncate_field loses (excess + 1) of its own tokens from its end,
 *   the whole prompt is tokenised again without BOS and EOS, and the answer start is still counted
 *   back from the end as if EOS were there, so the last prompt token is scored and no EOS is; an
 *   example still too long (or without a truncate_field) is dropped;
 * - an inference prompt (forInference) loses exactly the excess from the truncate_field's end,
 *   keeping at least one token, and keeps BOS: the prompt a request sent, as close as it fits.
 */
export function tokenizeExample(
  template: TaskTemplate,
  record: Readonly<Record<string, string>>,
  tokenizer: Tokenizer,
  opts: TokenizeOptions = {},
): TokenizeResult {
  const t = template;
  const parsed = parseTemplate(t, `task "${t.taskname}"`);
  /** The prompt's chunks of ids with `values` for the fields; which chunk is the truncate_field. */
  const promptChunks = (values: Readonly<Record<string, string>>, bos: boolean) => {
    const chunks: number[][] = [];
    let truncateChunk = -1;
    if (bos) chunks.push([tokenizer.bosId]);
    for (const p of parsed.prompt) {
      if (p.kind === "text") chunks.push(tokenizer.encode(p.text));
      else if (p.kind === "virtual") {
        const ids = new Array<number>(p.count);
        for (let k = 0; k < p.count; k++) ids[k] = tokenizer.vocabSize + p.first + k;
        chunks.push(ids);
      } else {
        const value = fieldValue(values, p.name, t.taskname);
        if (p.name === t.truncate_field) truncateChunk = chunks.length;
        chunks.push(tokenizer.encode(p.leadingSpace ? " " + value : value));
      }
    }
    return { chunks, truncateChunk };
  };
  const example = (
    chunks: number[][],
    answer: number[],
    answerStart: number,
    truncated: boolean,
  ) => {
    const ids = new Int32Array([...chunks.flat(), ...answer]);
    return {
      ok: true as const,
      example: {
        taskname: t.taskname,
        ids,
        answerStart,
        truncated,
        answerOnlyLoss: t.answer_only_loss,
      },
    };
  };
  let { chunks, truncateChunk } = promptChunks(record, t.add_bos);
  let answer: number[] = [];
  if (!opts.forInference) {
    const value = fieldValue(record, t.answer_field, t.taskname);
    answer = answerText(parsed, value, tokenizer);
  }
  const eos = !opts.forInference && t.add_eos ? 1 : 0;
  const promptLength = chunks.reduce((n, c) => n + c.length, 0);
  const length = promptLength + answer.length + eos;
  const fits = (n: number): TokenizeResult | null =>
    n > t.max_seq_length
      ? { ok: false, reason: "too long", length: n }
      : n < t.min_seq_length
      ? { ok: false, reason: "too short", length: n }
      : null;
  if (length <= t.max_seq_length) {
    const refused = fits(length);
    if (refused) return refused;
    const withEos = eos ? [...answer, tokenizer.eosId] : answer;
    return example(chunks, withEos, promptLength, false);
  }
  const excess = length - t.max_seq_length;
  if (opts.forInference) {
    const field = truncateChunk >= 0 ? chunks[truncateChunk] : undefined;
    if (!field || field.length - excess < 1) return { ok: false, reason: "too long", length };
    chunks[truncateChunk] = field.slice(0, field.length - excess);
    const n = length - excess;
    return fits(n) ?? example(chunks, answer, n, true);
  }
  // NeMo's training truncation: the field's own tokens (no leading space), excess + 1 of them off
  // its end, decoded, and the prompt tokenised again without BOS and EOS.
  if (t.truncate_field === null || !Object.hasOwn(record, t.truncate_field)) {
    return { ok: false, reason: "too long", length };
  }
  const fieldIds = tokenizer.encode(fieldValue(record, t.truncate_field, t.taskname));
  const cut = Math.min(excess + 1, fieldIds.length);
  const shortened = tokenizer.decode(fieldIds.slice(0, fieldIds.length - cut));
  ({ chunks, truncateChunk } = promptChunks({ ...record, [t.truncate_field]: shortened }, false));
  const n = chunks.reduce((k, c) => k + c.length, 0) + answer.length;
  // NeMo's _find_answer_start counts EOS in whenever add_eos, present or not.
  return fits(n) ?? example(chunks, answer, n - answer.length - (t.add_eos ? 1 : 0), true);
}
