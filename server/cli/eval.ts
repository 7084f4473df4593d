/**
 * `deno task eval --task NAME --data FILE.jsonl`: generates each record's answer with the task's
 * stored prompt (greedy, KV cache) and reports the task's metrics as JSON. `--min KEY=VALUE`
 * turns a metric into a pass/fail check (exit 1 below it): accuracy checks live here, not in the
 * default test run.
 *
 * SQuAD (the task's metric is "squad"): a prepared record carries one gold answer (the first), but
 * the official scorer takes the best over all of them, so eval reads every gold answer from the raw
 * SQuAD v2.0 file (`--squad-gold FILE`, default `data/raw/squad_v2/dev-v2.0...json`; `none` scores
 * against the record's answer alone). `--predictions-out FILE` writes `{question id: answer}` as
 * the official `evaluate-v2.0.py` reads it (no-answer = ""), whose `exact`/`f1` then equal our
 * `squad_em`/`squad_f1` times 100.
 */
import { openRuntime } from "../bootstrap.ts";
import { flag, parseArgs, runCommand } from "./args.ts";
import { invalidArgument } from "../errors.ts";
import { generate } from "../model/generate.ts";
import { loadTrainingConfig, samplingOf } from "../training/config.ts";
import { loadDataset } from "../prompts/dataset.ts";
import {
  parseSquad,
  SQUAD_UNANSWERABLE,
  type SquadQuestion,
  squadRecordAnswer,
} from "../prompts/raw_sources.ts";
import { embedWithPrompt } from "../training/batch.ts";
import {
  defaultMetricKind,
  MetricAccumulator,
  type MetricKind,
  squadPrediction,
} from "../training/metrics.ts";

const USAGE =
  `usage: deno task eval --task NAME --data FILE.jsonl [--version N] [--limit N] [--max-new N]
       [--metric exact_match|squad|intent_slot] [--min METRIC=VALUE] [--model DIR] [--registry DIR] [--backend B]
       [--squad-gold RAW_SQUAD.json|none] [--predictions-out FILE.json]
       [--config TRAIN.yaml (its model.inference decides the decoding; default greedy)] [--outputs-out FILE.jsonl]`;

/** The raw SQuAD v2.0 file the squad splits were prepared from (data/README.md). */
export const DEFAULT_SQUAD_GOLD = new URL(
  "../../data/raw/squad_v2/dev-v2.0.reconstructed_from_explorer.json",
  import.meta.url,
).pathname;

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

export interface EvalScore {
  metrics: Record<string, number>;
  /** `{question id: answer}` as the official scorer reads it; only with SQuAD golds. */
  predictions?: Record<string, string>;
}

/**
 * Scores generated answers (`texts[i]` for `records[i]`) as eval reports them. With `golds`
 * (SQuAD), each record is scored against all its gold answers (an unanswerable question's one
 * gold is "unanswerable") and the predictions come back keyed by question id.
 */
export function scoreEval(
  task: string,
  answerField: string,
  metric: MetricKind,
  records: readonly Record<string, string>[],
  texts: readonly string[],
  golds?: readonly SquadGold[],
): EvalScore {
  const acc = new MetricAccumulator({ [task]: { answerField, metric } });
  const predictions: Record<string, string> = {};
  texts.forEach((text, i) => {
    if (golds === undefined) {
      acc.add(task, text, records[i]);
      return;
    }
    const g = golds[i];
    const answers = g.answers.length > 0 ? g.answers : [SQUAD_UNANSWERABLE];
    acc.add(task, text, { ...records[i], [answerField]: answers });
    if (Object.hasOwn(predictions, g.id)) {
      throw invalidArgument(
        `record ${i + 1}: question ${g.id} of the raw file is another record's too`,
      );
    }
    predictions[g.id] = squadPrediction(text);
  });
  return { metrics: acc.result()[task], ...(golds ? { predictions } : {}) };
}

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv, [
    "task",
    "data",
    "version",
    "limit",
    "max-new",
    "metric",
    "min",
    "model",
    "registry",
    "backend",
    "batch",
    "squad-gold",
    "predictions-out",
    "config",
    "outputs-out",
  ], ["help"]);
  if (args.flags.has("help")) {
    console.log(USAGE);
    return 0;
  }
  const task = flag(args, "task"), data = flag(args, "data");
  if (!task || !data) throw new RangeError(`--task and --data are required\n${USAGE}`);
  const metric = (flag(args, "metric") ?? defaultMetricKind(task)) as MetricKind;
  const goldFlag = flag(args, "squad-gold");
  const predictionsOut = flag(args, "predictions-out");
  if (metric !== "squad" && (goldFlag !== undefined || predictionsOut !== undefined)) {
    throw new RangeError(
      `--squad-gold and --predictions-out apply to the squad metric only: task "${task}" is scored with ${metric}`,
    );
  }
  const goldFile = metric === "squad" && goldFlag !== "none"
    ? (goldFlag ?? DEFAULT_SQUAD_GOLD)
    : undefined;
  if (predictionsOut !== undefined && goldFile === undefined) {
    throw new RangeError(
      "--predictions-out needs the question ids of the raw SQuAD file: drop --squad-gold none",
    );
  }
  const rt = await openRuntime({
    modelDir: flag(args, "model", "MODEL_DIR"),
    registryDir: flag(args, "registry", "REGISTRY_DIR"),
    backend: flag(args, "backend", "BACKEND"),
  });
  const version = flag(args, "version");
  const tv = await rt.store.get(task, version ? Number(version) : undefined);
  const templates = new Map([[task, tv.template]]);
  const ds = await loadDataset(data, templates, rt.tokenizer, { forInference: true });
  const limit = Number(flag(args, "limit") ?? ds.examples.length);
  const examples = ds.examples.slice(0, limit);
  // Golds first: a record the raw file lacks fails before any generation.
  const records = ds.records.slice(0, examples.length);
  let golds: SquadGold[] | undefined;
  if (goldFile !== undefined) {
    const { questions } = parseSquad(await Deno.readTextFile(goldFile), goldFile);
    golds = squadGoldsFor(
      records,
      await Deno.readTextFile(data),
      tv.template.answer_field,
      questions,
      data,
      goldFile,
    );
  }
  // A training configuration's model.inference decides how answers are generated (greedy
  // without one); --max-new and --batch win over its tokens_to_generate and batch_size.
  const configFile = flag(args, "config");
  const trainConfig = configFile ? (await loadTrainingConfig(configFile)).config : undefined;
  const inference = trainConfig?.model.inference;
  const started = performance.now();
  const prompts = examples.map((e) => embedWithPrompt(rt.engine, e.ids, tv.table, task));
  const maxNew = flag(args, "max-new");
  const outs = await generate(rt.engine, prompts, {
    maxNewTokens: Number(maxNew ?? inference?.tokens_to_generate ?? 32),
    eosId: rt.tokenizer.eosId,
    batchSize: Number(flag(args, "batch") ?? inference?.batch_size ?? 32),
    sampling: inference ? samplingOf(inference, trainConfig!.model.seed) : undefined,
    promptIds: examples.map((e) => e.ids),
    decode: (ids) => rt.tokenizer.decode(ids),
  });
  const texts = outs.map((o) =>
    o.text ?? rt.tokenizer.decode(o.ids.filter((t) => t !== rt.tokenizer.eosId))
  );
  const outputsOut = flag(args, "outputs-out");
  if (outputsOut !== undefined) {
    // One line per example: its answer, token ids and (compute_logprob) their log-probabilities.
    const lines = outs.map((o, i) =>
      JSON.stringify({ example: i + 1, text: texts[i], token_ids: o.ids, logprobs: o.logprobs })
    );
    await Deno.writeTextFile(outputsOut, lines.join("\n") + "\n");
  }
  const { metrics, predictions } = scoreEval(
    task,
    tv.template.answer_field,
    metric,
    records,
    texts,
    golds,
  );
  if (predictionsOut !== undefined) {
    await Deno.writeTextFile(predictionsOut, JSON.stringify(predictions, null, 1) + "\n");
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    JSON.stringify({
      task,
      version: tv.version,
      data,
      examples: examples.length,
      dropped: ds.dropped,
      squad_gold: goldFile ?? null,
      ...(predictionsOut !== undefined ? { predictions_out: predictionsOut } : {}),
      seconds: Math.round(seconds * 10) / 10,
      metrics,
    }),
  );
  const min = flag(args, "min");
  if (min) {
    const [key, value] = min.split("=");
    if (!(key in metrics)) {
      throw new RangeError(
        `--min: metric "${key}" is not among ${Object.keys(metrics).join(", ")}`,
      );
    }
    if (metrics[key] < Number(value)) {
      console.error(`eval: ${task} ${key} ${metrics[key].toFixed(4)} is below ${value}`);
      return 1;
    }
  }
  return 0;
}

if (import.meta.main) await runCommand("eval", main);
