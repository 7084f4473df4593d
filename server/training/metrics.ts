/**
 * Validation metrics per task, computed from a generated answer text and the reference record.
 *
 * - `exact_match` (every task): the prediction equals the gold answer after trimming whitespace
 *   and trailing `<|endoftext|>` markers from both. Classification accuracy is this metric.
 * - `squad`: SQuAD 2.0 EM and F1 with exactly the normalisation of the official
 *   `evaluate-v2.0.py` (lower case, drop ASCII punctuation, drop the articles a/an/the as whole
 *   words, split on Python's whitespace). Our splits spell the no-answer as "unanswerable": a gold
 *   answer or a prediction whose normalised form is "unanswerable" is the scorer's empty answer.
 *   Scores are on a 0-1 scale (the official scorer prints 100 times these).
 * - `intent_slot`: labels `"\nIntent: alarm_set\nSlots: time(seven am), date(tomorrow)"` (or
 *   `Slots: None`) parsed into an intent and a multiset of (slot type, value) pairs; intent
 *   accuracy, and slot precision/recall/F1 micro-averaged over the pairs of the whole dataset.
 *
 * Parity with the official SQuAD scorer is checked in `metrics_test.ts` against its own output
 * (`test/fixtures/metrics/`).
 */

/** Which metric set a task gets. */
export type MetricKind = "exact_match" | "squad" | "intent_slot";

export const METRIC_KINDS: readonly MetricKind[] = ["exact_match", "squad", "intent_slot"];

/** squad* -> "squad", intent* -> "intent_slot", anything else -> "exact_match". */
export function defaultMetricKind(taskname: string): MetricKind {
  if (taskname.startsWith("squad")) return "squad";
  if (taskname.startsWith("intent")) return "intent_slot";
  return "exact_match";
}

const EOT = "<|endoftext|>";

/** Trims whitespace and any trailing `<|endoftext|>` markers (the generator's stop token). */
export function cleanAnswer(text: string): string {
  let t = text.trim();
  while (t.endsWith(EOT)) t = t.slice(0, -EOT.length).trim();
  return t;
}

/** True when the prediction equals the gold answer (or one of them) after `cleanAnswer`. */
export function exactMatch(pred: string, gold: string | readonly string[]): boolean {
  const p = cleanAnswer(pred);
  return toList(gold).some((g) => cleanAnswer(g) === p);
}

/** Fraction of exact matches over paired predictions and golds; 0 for no pairs. */
export function classificationAccuracy(
  preds: readonly string[],
  golds: readonly (string | readonly string[])[],
): number {
  if (preds.length !== golds.length) {
    throw new RangeError(
      `Cannot score classification as preds and golds differ in length: ${preds.length} != ${golds.length}`,
    );
  }
  if (preds.length === 0) return 0;
  let hits = 0;
  for (let i = 0; i < preds.length; i++) if (exactMatch(preds[i], golds[i])) hits++;
  return hits / preds.length;
}

// ---------------------------------------------------------------------------------------------
// SQuAD 2.0

/** Python's `string.punctuation`. */
const PUNCTUATION = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
/**
 * `re.sub(r'\b(a|an|the)\b', ' ', text)` as Python 3 runs it: `\w` there is Unicode
 * ([\p{L}\p{N}_] — checked equal over every code point of Python 3.11's Unicode 14), while JS `\b`
 * is ASCII-only, hence the explicit lookarounds.
 */
const ARTICLES = /(?<![\p{L}\p{N}_])(?:a|an|the)(?![\p{L}\p{N}_])/gu;
/**
 * Python's `str.split()` separators (`str.isspace`): Unicode White_Space plus the control
 * characters \x1c-\x1f (checked equal over every code point). JS `\s` lacks those and \x85, and
 * adds \ufeff, which Python keeps inside a token.
 */
// deno-lint-ignore no-control-regex
const PY_WHITESPACE = /[\p{White_Space}\x1c-\x1f]+/u;

/** The official scorer's `normalize_answer`. */
export function normalizeSquadAnswer(s: string): string {
  let t = "";
  for (const ch of s.toLowerCase()) if (!PUNCTUATION.has(ch)) t += ch;
  return pySplit(t.replace(ARTICLES, " ")).join(" ");
}

function pySplit(s: string): string[] {
  return s.split(PY_WHITESPACE).filter((w) => w.length > 0);
}

/** The spelling of the no-answer in our SQuAD splits. */
export const SQUAD_NO_ANSWER = "unanswerable";

/**
 * A generated answer as the official scorer reads it: `cleanAnswer`ed, and "" (the scorer's
 * no-answer) when it normalises to "unanswerable". What `deno task eval --predictions-out` writes.
 */
export function squadPrediction(pred: string): string {
  const p = cleanAnswer(pred);
  return normalizeSquadAnswer(p) === SQUAD_NO_ANSWER ? "" : p;
}

/** The scorer's gold list: no-answer and empty-after-normalisation golds dropped, else `[""]`. */
function squadGolds(gold: string | readonly string[]): string[] {
  const golds = toList(gold).filter((g) => {
    const n = normalizeSquadAnswer(g);
    return n !== "" && n !== SQUAD_NO_ANSWER;
  });
  return golds.length > 0 ? golds : [""];
}

function tokenF1(goldToks: readonly string[], predToks: readonly string[]): number {
  if (goldToks.length === 0 || predToks.length === 0) {
    return goldToks.length === predToks.length ? 1 : 0;
  }
  const counts = new Map<string, number>();
  for (const t of goldToks) counts.set(t, (counts.get(t) ?? 0) + 1);
  let same = 0;
  for (const t of predToks) {
    const c = counts.get(t) ?? 0;
    if (c > 0) {
      same++;
      counts.set(t, c - 1);
    }
  }
  if (same === 0) return 0;
  const precision = same / predToks.length;
  const recall = same / goldToks.length;
  return (2 * precision * recall) / (precision + recall);
}

/** SQuAD 2.0 exact match (0 or 1), the max over the gold answers. */
export function squadExact(pred: string, gold: string | readonly string[]): number {
  const p = normalizeSquadAnswer(squadPrediction(pred));
  return squadGolds(gold).some((g) => normalizeSquadAnswer(g) === p) ? 1 : 0;
}

/** SQuAD 2.0 token F1 in [0, 1], the max over the gold answers. */
export function squadF1(pred: string, gold: string | readonly string[]): number {
  const predToks = pySplit(normalizeSquadAnswer(squadPrediction(pred)));
  let best = 0;
  for (const g of squadGolds(gold)) {
    best = Math.max(best, tokenF1(pySplit(normalizeSquadAnswer(g)), predToks));
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Intent and slots

export interface Slot {
  type: string;
  value: string;
}

export interface IntentSlots {
  /** Null when no `Intent:` with a non-empty value was found. */
  intent: string | null;
  slots: Slot[];
}

const INTENT = /Intent:[ \t]*([^\n]*)/;
const SLOTS = /Slots:[ \t]*([^\n]*)/;
/** `type(value)`; an unterminated pair is accepted only at the very end (truncated output). */
const SLOT_PAIR = /([^\s(),]+)[ \t]*\(([^()\n]*)(\)|$)/g;

/**
 * Parses an intent-and-slot label or generated text. Never throws: malformed or truncated text
 * yields what can be read (a missing intent is null; a final `type(value` cut off before its `)`
 * counts as a pair if its value is non-empty). Values are trimmed with inner whitespace collapsed;
 * `Slots: None` is no slots.
 */
export function parseIntentSlots(text: string): IntentSlots {
  const t = cleanAnswer(text);
  const im = INTENT.exec(t);
  let intent: string | null = null;
  if (im !== null) {
    const raw = im[1];
    const cut = raw.indexOf("Slots:");
    intent = squash(cut >= 0 ? raw.slice(0, cut) : raw) || null;
  }
  const slots: Slot[] = [];
  const sm = SLOTS.exec(t);
  if (sm !== null && squash(sm[1]) !== "None") {
    for (const m of sm[1].matchAll(SLOT_PAIR)) {
      const value = squash(m[2]);
      if (m[3] === "" && value === "") continue;
      slots.push({ type: m[1], value });
    }
  }
  return { intent, slots };
}

function squash(s: string): string {
  return s.trim().replace(/\s+/g, " ");
}

/** Number of (type, value) pairs shared by two multisets. */
export function matchingSlots(pred: readonly Slot[], gold: readonly Slot[]): number {
  const counts = new Map<string, number>();
  for (const s of gold) {
    const k = `${s.type}\u0000${s.value}`;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  let hits = 0;
  for (const s of pred) {
    const k = `${s.type}\u0000${s.value}`;
    const c = counts.get(k) ?? 0;
    if (c > 0) {
      hits++;
      counts.set(k, c - 1);
    }
  }
  return hits;
}

// ---------------------------------------------------------------------------------------------
// Accumulation over a validation set

export interface TaskMetricOptions {
  /** The record field holding the gold answer (the template's `answer_field`). */
  answerField: string;
  /** Which metric set to compute. Default: `defaultMetricKind(taskname)`. */
  metric?: MetricKind;
}

interface Tally {
  kind: MetricKind;
  answerField: string;
  count: number;
  exact: number;
  squadEm: number;
  squadF1: number;
  intentHits: number;
  slotHits: number;
  slotPred: number;
  slotGold: number;
}

/**
 * Accumulates per-task metrics over a validation pass.
 *
 * `result()` gives, per task that was configured: `count` and `exact_match` always;
 * `squad_em`, `squad_f1` for "squad"; `intent_accuracy`, `slot_precision`, `slot_recall`,
 * `slot_f1` for "intent_slot". All are in [0, 1]. A task with no examples reports only
 * `count: 0`. Slot precision (recall) is 1 when nothing was predicted (expected) and nothing was
 * expected (predicted), and 0 when nothing was predicted (expected) but something was expected
 * (predicted); F1 is 0 when precision + recall is 0.
 */
export class MetricAccumulator {
  readonly #tasks = new Map<string, Tally>();

  constructor(tasks: Readonly<Record<string, TaskMetricOptions>>) {
    for (const [taskname, opts] of Object.entries(tasks)) {
      if (typeof opts.answerField !== "string" || opts.answerField === "") {
        throw new TypeError(
          `Cannot score task '${taskname}' as 'answerField' must be a non-empty string: found ${
            JSON.stringify(opts.answerField)
          }`,
        );
      }
      const kind = opts.metric ?? defaultMetricKind(taskname);
      if (!METRIC_KINDS.includes(kind)) {
        throw new RangeError(
          `Cannot score task '${taskname}' as 'metric' must be one of ${
            METRIC_KINDS.join(", ")
          }: found ${JSON.stringify(kind)}`,
        );
      }
      this.#tasks.set(taskname, {
        kind,
        answerField: opts.answerField,
        count: 0,
        exact: 0,
        squadEm: 0,
        squadF1: 0,
        intentHits: 0,
        slotHits: 0,
        slotPred: 0,
        slotGold: 0,
      });
    }
  }

  /** Scores one generated answer against `record[answerField]` of its task. */
  add(taskname: string, predText: string, record: Readonly<Record<string, unknown>>): void {
    const t = this.#tasks.get(taskname);
    if (t === undefined) {
      throw new RangeError(
        `Cannot score task '${taskname}' as it was not configured: known tasks are ${
          [...this.#tasks.keys()].join(", ") || "(none)"
        }`,
      );
    }
    const gold = record[t.answerField];
    if (!isGold(gold, t.kind === "squad")) {
      throw new TypeError(
        `Cannot score task '${taskname}' as the record's '${t.answerField}' must be a string${
          t.kind === "squad" ? " or an array of strings" : ""
        }: found ${JSON.stringify(gold) ?? "undefined"}`,
      );
    }
    t.count++;
    if (exactMatch(predText, gold)) t.exact++;
    if (t.kind === "squad") {
      t.squadEm += squadExact(predText, gold);
      t.squadF1 += squadF1(predText, gold);
    } else if (t.kind === "intent_slot") {
      const p = parseIntentSlots(predText);
      const g = parseIntentSlots(gold as string);
      if (p.intent !== null && p.intent === g.intent) t.intentHits++;
      t.slotHits += matchingSlots(p.slots, g.slots);
      t.slotPred += p.slots.length;
      t.slotGold += g.slots.length;
    }
  }

  result(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const [taskname, t] of this.#tasks) {
      if (t.count === 0) {
        out[taskname] = { count: 0 };
        continue;
      }
      const m: Record<string, number> = { count: t.count, exact_match: t.exact / t.count };
      if (t.kind === "squad") {
        m.squad_em = t.squadEm / t.count;
        m.squad_f1 = t.squadF1 / t.count;
      } else if (t.kind === "intent_slot") {
        const precision = t.slotPred > 0 ? t.slotHits / t.slotPred : t.slotGold === 0 ? 1 : 0;
        const recall = t.slotGold > 0 ? t.slotHits / t.slotGold : t.slotPred === 0 ? 1 : 0;
        m.intent_accuracy = t.intentHits / t.count;
        m.slot_precision = precision;
        m.slot_recall = recall;
        m.slot_f1 = precision + recall > 0 ? (2 * precision * recall) / (precision + recall) : 0;
      }
      out[taskname] = m;
    }
    return out;
  }
}

function isGold(v: unknown, allowList: boolean): v is string | string[] {
  if (typeof v === "string") return true;
  return allowList && Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "string");
}

function toList(gold: string | readonly string[]): readonly string[] {
  return typeof gold === "string" ? [gold] : gold;
}
