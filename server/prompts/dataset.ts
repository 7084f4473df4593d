/**
 * Prompt-learning datasets: JSONL where each record carries `taskname` and its template's fields.
 * Bad lines stop the load with every problem listed as `file:line: reason`, unless the caller
 * asks to skip them; then they are counted and listed, never silently lost. A record without one
 * of its template's fields gets "" for it, as NeMo's does, and is listed too (or, asked, refused).
 */
import { invalidArgument, ServiceError } from "../errors.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { createYielder } from "../util/event_loop.ts";
import {
  isTasknameShaped,
  type TaskTemplate,
  type TokenizedExample,
  tokenizeExample,
} from "./template.ts";

/** A JSONL file path, or records given inline (objects, or JSON texts one per record). */
export type DatasetSource = string | InlineRecords;

export interface InlineRecords {
  /** Names the source in messages; default "<inline>". Line k is records[k - 1]. */
  name?: string;
  records: readonly unknown[];
}

export interface LoadDatasetOptions {
  /** Skip and list bad lines instead of refusing the whole dataset. Default false. */
  skipBadLines?: boolean;
  /** Tokenise prompts only; the answer field may then be absent. Default false. */
  forInference?: boolean;
  /**
   * A record without one of its template's fields is a bad line. Default false: the field is ""
   * (NeMo gpt_prompt_learning_dataset.py v1.20.0:243-255) and the record is listed in `filled`.
   */
  refuseMissingFields?: boolean;
  /**
   * How a file source is named in messages. Default: its path. A service names it as the caller
   * wrote it, so no server path reaches the caller.
   */
  displayName?: string;
}

export interface BadLine {
  file: string;
  /** 1-based line (or record) number. */
  line: number;
  reason: string;
}

export interface Dataset {
  examples: TokenizedExample[];
  /** The string fields of each record (taskname included), parallel to `examples`. */
  records: Record<string, string>[];
  skipped: BadLine[];
  /** Records that lacked a template field, filled with "" (one entry per record). */
  filled: BadLine[];
  /** Examples the templates' max/min_seq_length removed. */
  dropped: { tooLong: number; tooShort: number };
  /** The same, per task name. */
  droppedByTask: Record<string, number>;
}

/** How many bad lines one error message spells out. */
const MAX_LISTED = 20;

/** A dataset with bad lines, refused; `lines` holds up to 20 of them, `total` counts all. */
export class BadLinesError extends ServiceError {
  readonly lines: BadLine[];
  readonly total: number;
  constructor(lines: BadLine[], total: number) {
    const listed = lines.map((b) => `${b.file}:${b.line}: ${b.reason}`);
    const more = total > lines.length ? `\n... and ${total - lines.length} more` : "";
    const summary = total === 1
      ? ""
      : `\n(${total} bad lines in all; set skipBadLines to skip them instead)`;
    super("invalid_argument", listed.join("\n") + more + summary);
    this.name = "BadLinesError";
    this.lines = lines;
    this.total = total;
  }
}

type LineResult =
  | { ok: true; record: Record<string, unknown>; template: TaskTemplate; missing: string[] }
  | { ok: false; reason: string };

const typeName = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v);

function checkRecord(
  raw: unknown,
  templates: ReadonlyMap<string, TaskTemplate>,
  forInference: boolean,
  refuseMissing: boolean,
): LineResult {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return { ok: false, reason: `expected a JSON object: found ${typeName(raw)}` };
  }
  const record = raw as Record<string, unknown>;
  const name = record.taskname;
  if (name === undefined) return { ok: false, reason: `field "taskname" is missing` };
  if (typeof name !== "string") {
    return {
      ok: false,
      reason: `field "taskname" must be a string: found ${typeName(name)}`,
    };
  }
  const template = templates.get(name);
  if (!template) {
    return {
      ok: false,
      // The value is quoted only when it could be a task name: a message never echoes file contents.
      reason: `unknown task${
        isTasknameShaped(name) ? ` ${JSON.stringify(name)}` : ""
      }: expected one of ${
        [...templates.keys()].map((k) => JSON.stringify(k)).join(", ") || "(no tasks)"
      }`,
    };
  }
  const missing: string[] = [];
  for (const field of template.prompt_template_fields) {
    const v = Object.hasOwn(record, field) ? record[field] : undefined;
    if (v === undefined) {
      if (forInference && field === template.answer_field) continue;
      // NeMo fills a missing field with "" (:250-253), but reads the answer again to find where
      // the loss starts (_find_answer_start, :303), so a training record without its answer fails
      // there with answer_only_loss.
      if (field === template.answer_field && template.answer_only_loss) {
        return {
          ok: false,
          reason: `field "${field}" of task "${name}" is missing: a training record needs its ` +
            `answer when answer_only_loss is true`,
        };
      }
      if (refuseMissing) {
        return { ok: false, reason: `field "${field}" of task "${name}" is missing` };
      }
      missing.push(field);
      continue;
    }
    if (typeof v !== "string") {
      return {
        ok: false,
        reason: `field "${field}" of task "${name}" must be a string: found ${typeName(v)}`,
      };
    }
  }
  return { ok: true, record, template, missing };
}

function parseLine(text: string): { ok: true; value: unknown } | { ok: false; reason: string } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (e) {
    // The parser's own message quotes the text; the position is enough to find the problem.
    const at = /position (\d+)/.exec((e as Error).message);
    return { ok: false, reason: `not valid JSON${at ? ` (at column ${Number(at[1]) + 1})` : ""}` };
  }
}

/** Splits JSONL bytes into numbered lines; invalid UTF-8 becomes a per-line problem. */
function* jsonlLines(
  bytes: Uint8Array,
): Generator<{ line: number; text?: string; reason?: string }> {
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });
  let start = 0;
  let line = 0;
  while (start <= bytes.length) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    line++;
    let chunk = bytes.subarray(start, end);
    if (chunk.length > 0 && chunk[chunk.length - 1] === 0x0d) chunk = chunk.subarray(0, -1);
    try {
      yield { line, text: decoder.decode(chunk) };
    } catch {
      yield { line, reason: "not valid UTF-8" };
    }
    start = end + 1;
  }
}

/**
 * Loads and tokenises a dataset. Every record's `taskname` must name a template in `templates`,
 * and every field of that template must be a string. Blank lines are ignored.
 * Throws BadLinesError (listing up to 20 `file:line: reason`) unless `skipBadLines`.
 */
export async function loadDataset(
  source: DatasetSource,
  templates: ReadonlyMap<string, TaskTemplate>,
  tokenizer: Tokenizer,
  opts: LoadDatasetOptions = {},
): Promise<Dataset> {
  const forInference = opts.forInference ?? false;
  const out: Dataset = {
    examples: [],
    records: [],
    skipped: [],
    filled: [],
    dropped: { tooLong: 0, tooShort: 0 },
    droppedByTask: {},
  };
  const bad: BadLine[] = [];
  let badTotal = 0;
  const yieldNow = createYielder();

  const take = (
    file: string,
    line: number,
    parsed: { ok: true; value: unknown } | { ok: false; reason: string },
  ) => {
    const checked: LineResult = parsed.ok
      ? checkRecord(parsed.value, templates, forInference, opts.refuseMissingFields ?? false)
      : parsed;
    if (!checked.ok) {
      badTotal++;
      const entry = { file, line, reason: checked.reason };
      if (opts.skipBadLines) out.skipped.push(entry);
      else if (bad.length < MAX_LISTED) bad.push(entry);
      return;
    }
    // Errors were ruled out above; only the length rules can still refuse an example.
    const strings = stringFields(checked.record);
    if (checked.missing.length > 0) {
      for (const f of checked.missing) strings[f] = "";
      const fields = checked.missing.map((f) => `"${f}"`).join(", ");
      const task = checked.template.taskname;
      out.filled.push({
        file,
        line,
        reason: `field ${fields} of task "${task}" missing: filled with ""`,
      });
    }
    const result = tokenizeExample(checked.template, strings, tokenizer, { forInference });
    if (!result.ok) {
      if (result.reason === "too long") out.dropped.tooLong++;
      else out.dropped.tooShort++;
      const task = checked.template.taskname;
      out.droppedByTask[task] = (out.droppedByTask[task] ?? 0) + 1;
      return;
    }
    out.examples.push(result.example);
    out.records.push(strings);
  };

  if (typeof source === "string") {
    const file = opts.displayName ?? source;
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(source);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw invalidArgument(`${file}: dataset file not found`);
      }
      if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.IsADirectory) {
        throw invalidArgument(`${file}: dataset file cannot be read`);
      }
      throw e;
    }
    for (const l of jsonlLines(bytes)) {
      await yieldNow();
      const { line, text } = l;
      if (text === undefined) {
        take(file, line, { ok: false, reason: l.reason ?? "unreadable line" });
        continue;
      }
      const body = line === 1 && text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
      if (body.trim() === "") continue;
      take(file, line, parseLine(body));
    }
  } else {
    const name = source.name ?? "<inline>";
    for (const [i, r] of source.records.entries()) {
      await yieldNow();
      if (typeof r === "string") {
        if (r.trim() === "") continue;
        take(name, i + 1, parseLine(r));
      } else {
        take(name, i + 1, { ok: true, value: r });
      }
    }
  }
  if (!opts.skipBadLines && badTotal > 0) throw new BadLinesError(bad, badTotal);
  return out;
}

function stringFields(record: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(record)) if (typeof v === "string") out[k] = v;
  return out;
}
