/**
 * Converters from the raw source files (see data/README.md) to task records per split.
 * Each is a pure function of the file's content; errors name the file and line.
 */
import { bucketOf, emptySplits, type SplitRecords, splitTitles } from "./split_rule.ts";

const SENTIMENT_LABELS = ["positive", "neutral", "negative"];

/** ISO-8859-1 decoding by code point; TextDecoder("latin1") would apply windows-1252 instead. */
function decodeLatin1(bytes: Uint8Array): string {
  let out = "";
  const CHUNK = 8192;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    out += String.fromCharCode(...bytes.subarray(i, i + CHUNK));
  }
  return out;
}

/**
 * Financial PhraseBank `Sentences_AllAgree.txt` (Latin-1, `sentence@label` per line) to
 * `{taskname: "sentiment", sentence, label}`, in file order, every line kept.
 */
export function sentimentSplits(bytes: Uint8Array, file: string): SplitRecords {
  const out = emptySplits();
  const lines = decodeLatin1(bytes).split("\n");
  lines.forEach((raw, i) => {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line.trim() === "") return;
    const at = line.lastIndexOf("@");
    if (at < 0) {
      throw new SyntaxError(`${file}:${i + 1}: expected "sentence@label": found no "@"`);
    }
    const sentence = line.slice(0, at).trim();
    const label = line.slice(at + 1).trim();
    if (!SENTIMENT_LABELS.includes(label)) {
      throw new RangeError(
        `${file}:${i + 1}: label must be one of ${SENTIMENT_LABELS.join(", ")}: found ${
          JSON.stringify(label)
        }`,
      );
    }
    out[bucketOf(sentence)].push({ taskname: "sentiment", sentence, label });
  });
  return out;
}

/** Parses one `;`-separated CSV line with optional `"` quoting (`""` inside quotes is `"`). */
function parseCsvLine(line: string, where: string): string[] {
  const cells: string[] = [];
  let i = 0;
  for (;;) {
    let cell = "";
    if (line[i] === '"') {
      i++;
      for (;;) {
        const q = line.indexOf('"', i);
        if (q < 0) throw new SyntaxError(`${where}: unterminated quoted field`);
        cell += line.slice(i, q);
        if (line[q + 1] === '"') {
          cell += '"';
          i = q + 2;
        } else {
          i = q + 1;
          break;
        }
      }
      if (i < line.length && line[i] !== ";") {
        throw new SyntaxError(`${where}: text after a closing quote at column ${i + 1}`);
      }
    } else {
      const end = line.indexOf(";", i);
      cell = line.slice(i, end < 0 ? line.length : end);
      i = end < 0 ? line.length : end;
    }
    cells.push(cell);
    if (i >= line.length) return cells;
    i++; // the ";"
  }
}

const SLOT = /\[(\S+) : ([^\]]+)\]/g;
const CSV_COLUMNS = ["scenario", "intent", "answer_annotation", "answer_from_anno"];

/**
 * The HWU64 CSV to `{taskname: "intent_and_slot", utterance, label}`: the utterance is
 * answer_from_anno lower-cased; the first row of each utterance wins (later duplicates dropped);
 * the label is `"\nIntent: <scenario>_<intent>\nSlots: type(value), ..."` with the slots of
 * answer_annotation (`[type : value]`) in order, values lower-cased, or `"Slots: None"`.
 */
export function intentAndSlotSplits(text: string, file: string): SplitRecords {
  const out = emptySplits();
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  const header = parseCsvLine(lines[0] ?? "", `${file}:1`);
  const col: Record<string, number> = {};
  for (const name of CSV_COLUMNS) {
    col[name] = header.indexOf(name);
    if (col[name] < 0) {
      throw new RangeError(
        `${file}:1: header lacks column "${name}": found ${JSON.stringify(header.join(";"))}`,
      );
    }
  }
  const seen = new Set<string>();
  for (let i = 1; i < lines.length; i++) {
    if (lines[i] === "") continue;
    const where = `${file}:${i + 1}`;
    const cells = parseCsvLine(lines[i], where);
    if (cells.length !== header.length) {
      throw new RangeError(
        `${where}: expected ${header.length} columns as in the header: found ${cells.length}`,
      );
    }
    const utterance = cells[col.answer_from_anno].toLowerCase();
    if (seen.has(utterance)) continue;
    seen.add(utterance);
    const slots = [...cells[col.answer_annotation].matchAll(SLOT)]
      .map((m) => `${m[1]}(${m[2].toLowerCase()})`);
    const label = `\nIntent: ${cells[col.scenario]}_${cells[col.intent]}\nSlots: ${
      slots.length > 0 ? slots.join(", ") : "None"
    }`;
    out[bucketOf(utterance)].push({ taskname: "intent_and_slot", utterance, label });
  }
  return out;
}

interface SquadQa {
  id: string;
  question: string;
  answers: { text: string }[];
}

function need(v: unknown, type: "string" | "array", where: string): void {
  const ok = type === "array" ? Array.isArray(v) : typeof v === "string";
  if (!ok) throw new TypeError(`${where} must be ${type === "array" ? "an array" : "a string"}`);
}

/** One question of a SQuAD v2.0 file, with every gold answer text (none: unanswerable). */
export interface SquadQuestion {
  id: string;
  title: string;
  context: string;
  question: string;
  /** The gold answers' texts in file order, repeats kept; empty for an unanswerable question. */
  answers: string[];
}

/** The spelling of SQuAD's no-answer in the prepared records. */
export const SQUAD_UNANSWERABLE = "unanswerable";

/** The prepared record's `answer` of a question: its first gold answer, or "unanswerable". */
export function squadRecordAnswer(q: Pick<SquadQuestion, "answers">): string {
  return q.answers.length > 0 ? q.answers[0] : SQUAD_UNANSWERABLE;
}

/**
 * Every question of a SQuAD v2.0 JSON file in file order, checked for shape (errors name the
 * file and the JSON path), with the article titles in file order.
 */
export function parseSquad(
  text: string,
  file: string,
): { titles: string[]; questions: SquadQuestion[] } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const data = (raw as { data?: unknown })?.data;
  need(data, "array", `${file}: "data"`);
  const articles = data as { title: string; paragraphs: { context: string; qas: SquadQa[] }[] }[];
  articles.forEach((a, i) => {
    need(a?.title, "string", `${file}: data[${i}].title`);
    need(a.paragraphs, "array", `${file}: data[${i}].paragraphs`);
  });
  const questions: SquadQuestion[] = [];
  articles.forEach((a, i) => {
    a.paragraphs.forEach((p, j) => {
      const at = `${file}: data[${i}].paragraphs[${j}]`;
      need(p?.context, "string", `${at}.context`);
      need(p.qas, "array", `${at}.qas`);
      p.qas.forEach((q, k) => {
        need(q?.id, "string", `${at}.qas[${k}].id`);
        need(q.question, "string", `${at}.qas[${k}].question`);
        need(q.answers, "array", `${at}.qas[${k}].answers`);
        q.answers.forEach((ans, m) =>
          need(ans?.text, "string", `${at}.qas[${k}].answers[${m}].text`)
        );
        questions.push({
          id: q.id,
          title: a.title,
          context: p.context,
          question: q.question,
          answers: q.answers.map((ans) => ans.text),
        });
      });
    });
  });
  return { titles: articles.map((a) => a.title), questions };
}

/**
 * SQuAD v2.0 JSON to `{taskname: "squad", context, question, answer}`, exactly the keys NeMo's
 * GPTPromptLearningDataset accepts for the template `{context} ... {question} ... {answer}` (it
 * asserts every key but taskname is a template field): the answer is the first gold answer's
 * text, or "unanswerable"; articles keep file order within a split. Evaluation gets the other gold
 * answers from the same file (server/evaluation/squad_golds.ts).
 */
export function squadSplits(text: string, file: string): SplitRecords {
  const { titles, questions } = parseSquad(text, file);
  if (new Set(titles).size !== titles.length) {
    throw new RangeError(`${file}: article titles must be unique (the split is by title)`);
  }
  const splitOf = splitTitles(titles);
  const out = emptySplits();
  for (const q of questions) {
    out[splitOf.get(q.title)!].push({
      taskname: "squad",
      context: q.context,
      question: q.question,
      answer: squadRecordAnswer(q),
    });
  }
  return out;
}
