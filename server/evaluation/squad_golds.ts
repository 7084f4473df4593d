/**
 * SQuAD scoring against every gold answer: a prepared record carries one (the first), but the
 * official scorer takes the best over all of them, so they are read again from the raw SQuAD v2.0
 * file and matched to the data file's records.
 */
import { invalidArgument } from "../errors.ts";
import {
  SQUAD_UNANSWERABLE,
  type SquadQuestion,
  squadRecordAnswer,
} from "../prompts/raw_sources.ts";

/** A record's question in the raw SQuAD file: its id and every gold answer (none: unanswerable). */
export interface SquadGold {
  id: string;
  answers: string[];
}

/** One line of a data file as far as SQuAD matching needs it. */
export interface SquadLine {
  /** 1-based line number in the data file. */
  line: number;
  context: string;
  question: string;
  /** The record's answer field; absent for an inference-only record. */
  answer?: string;
}

const ctxKey = (context: string, question: string) => JSON.stringify([context, question]);
const lineKey = (l: Omit<SquadLine, "line">) =>
  JSON.stringify([l.context, l.question, l.answer ?? null]);

/**
 * Finds each data line's question in the raw SQuAD file (`questions`, from `parseSquad`).
 *
 * A prepared record has no id (NeMo's format), so it is matched by context and question, and then
 * by its answer: 7 (context, question) pairs of the raw dev file belong to two questions each
 * (different ids; in 4 of them one is answerable and the other not, so a union of their golds
 * would score differently from the official scorer, which scores each id on its own). The
 * record's answer (the first gold answer, or "unanswerable") tells all but one pair apart; that
 * one (two unanswerable questions) has identical golds. Among questions that are still alike, the
 * k-th line with the same context, question and answer is the k-th such question in file order:
 * deterministic, and exactly the raw question for every line of a prepared split. A line with
 * no such question, or more lines alike than questions, is refused naming the file, line and field;
 * so is a line without an answer whose context and question belong to questions with different
 * golds.
 */
export function matchSquadGolds(
  lines: readonly SquadLine[],
  questions: readonly SquadQuestion[],
  dataFile: string,
  goldFile: string,
): SquadGold[] {
  const byCtx = new Map<string, SquadQuestion[]>();
  for (const q of questions) {
    const k = ctxKey(q.context, q.question);
    const list = byCtx.get(k);
    if (list) list.push(q);
    else byCtx.set(k, [q]);
  }
  const used = new Map<string, number>();
  return lines.map((l) => {
    const at = `${dataFile}:${l.line}`;
    const all = byCtx.get(ctxKey(l.context, l.question));
    if (all === undefined) {
      throw invalidArgument(
        `${at}: fields "context" and "question": no question of ${goldFile} has this context and question`,
      );
    }
    let candidates = all;
    if (l.answer !== undefined) {
      candidates = all.filter((q) => squadRecordAnswer(q) === l.answer);
      if (candidates.length === 0) {
        throw invalidArgument(
          `${at}: field "answer" is not the answer of this question in ${goldFile} ` +
            `(its first gold answer, or "${SQUAD_UNANSWERABLE}" when it has none)`,
        );
      }
    } else if (new Set(candidates.map((q) => JSON.stringify(q.answers))).size > 1) {
      throw invalidArgument(
        `${at}: field "answer" is needed: ${candidates.length} questions of ${goldFile} ` +
          `with different gold answers have this context and question`,
      );
    }
    const k = lineKey(l);
    const n = used.get(k) ?? 0;
    if (n >= candidates.length) {
      throw invalidArgument(
        `${at}: fields "context", "question" and "answer": ${n + 1} lines so far match ` +
          `${
            candidates.length === 1 ? "one question" : `${candidates.length} questions`
          } of ${goldFile}`,
      );
    }
    used.set(k, n + 1);
    const q = candidates[n];
    return { id: q.id, answers: q.answers };
  });
}

/**
 * The data file's non-blank lines as SQuAD lines (the file is one loadDataset accepted); a line
 * without a string context or question is refused naming the file, line and field.
 */
export function squadLines(text: string, answerField: string, dataFile: string): SquadLine[] {
  const out: SquadLine[] = [];
  text.split("\n").forEach((raw, i) => {
    let body = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (i === 0 && body.charCodeAt(0) === 0xfeff) body = body.slice(1);
    if (body.trim() === "") return;
    const r = JSON.parse(body) as Record<string, unknown>;
    for (const field of ["context", "question"]) {
      if (typeof r[field] !== "string") {
        throw invalidArgument(
          `${dataFile}:${i + 1}: field "${field}" must be a string: SQuAD golds are matched by ` +
            `context and question (--squad-gold none scores against the ${answerField} alone)`,
        );
      }
    }
    const answer = r[answerField];
    out.push({
      line: i + 1,
      context: r.context as string,
      question: r.question as string,
      ...(typeof answer === "string" ? { answer } : {}),
    });
  });
  return out;
}

/**
 * Each record's gold answers from the raw SQuAD file: `records` are the records loadDataset kept
 * from `dataText` (in file order, possibly fewer: over-long ones are dropped, and records alike in
 * context, question and answer are dropped alike, so the k-th kept one is the k-th in the file).
 */
export function squadGoldsFor(
  records: readonly Record<string, string>[],
  dataText: string,
  answerField: string,
  questions: readonly SquadQuestion[],
  dataFile: string,
  goldFile: string,
): SquadGold[] {
  const lines = squadLines(dataText, answerField, dataFile);
  const golds = matchSquadGolds(lines, questions, dataFile, goldFile);
  const queues = new Map<string, SquadGold[]>();
  lines.forEach((l, i) => {
    const k = lineKey(l);
    const q = queues.get(k);
    if (q) q.push(golds[i]);
    else queues.set(k, [golds[i]]);
  });
  return records.map((r) => {
    const answer = r[answerField];
    const g = queues.get(lineKey({ context: r.context, question: r.question, answer }))?.shift();
    if (g === undefined) throw new Error(`eval: a kept record is not among ${dataFile}'s lines`);
    return g;
  });
}
