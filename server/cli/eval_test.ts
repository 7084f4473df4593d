/**
 * SQuAD evaluation against every gold answer: matching prepared records to the raw questions,
 * scoring, and parity with the official `evaluate-v2.0.py` run on the predictions eval writes.
 */
import { runCli } from "../../test/support/cli.ts";
import { assert, assertEquals, assertStringIncludes, assertThrows } from "../../test/assert.ts";
import { requireTool } from "../../test/support/required_tool.ts";
import { ServiceError } from "../errors.ts";
import { parseSquad, type SquadQuestion } from "../prompts/raw_sources.ts";
import { normalizeSquadAnswer } from "../training/metrics.ts";
import { DEFAULT_SQUAD_GOLD } from "./eval.ts";
import {
  matchSquadGolds,
  type SquadGold,
  squadGoldsFor,
  squadLines,
} from "../evaluation/squad_golds.ts";
import { scoreEval } from "../evaluation/score_answers.ts";

const root = new URL("../../", import.meta.url).pathname;
const SPLITS = `${root}data/splits`;
const SCORER = `${root}data/raw/squad_v2/evaluate-v2.0.py`;
const RAW_TEXT = await Deno.readTextFile(DEFAULT_SQUAD_GOLD);
const RAW = parseSquad(RAW_TEXT, DEFAULT_SQUAD_GOLD);

function q(id: string, context: string, question: string, answers: string[]): SquadQuestion {
  return { id, title: "T", context, question, answers };
}

/** A raw file in small: the kinds of duplicate (context, question) the dev file has. */
const QUESTIONS = [
  q("a1", "c", "who?", ["Murray", "Matthew Murray"]),
  q("a2", "c", "who?", []), // same context and question, unanswerable (as "Who designed Salamanca?")
  q("b1", "c", "what?", ["the Treaties", "Treaties"]),
  q("b2", "c", "what?", ["Treaties establishing"]), // both answerable, other first answer
  q("g1", "d", "when?", []),
  q("g2", "d", "when?", []), // identical golds: told apart by order only
  q("u", "d", "where?", ["here", "there"]),
];

Deno.test("matchSquadGolds() tells duplicate context+question apart by the answer, then by order", () => {
  const lines = [
    { line: 1, context: "c", question: "who?", answer: "unanswerable" },
    { line: 2, context: "c", question: "who?", answer: "Murray" },
    { line: 3, context: "c", question: "what?", answer: "Treaties establishing" },
    { line: 5, context: "d", question: "when?", answer: "unanswerable" },
    { line: 6, context: "c", question: "what?", answer: "the Treaties" },
    { line: 7, context: "d", question: "when?", answer: "unanswerable" },
    { line: 8, context: "d", question: "where?" }, // no answer: unique question, fine
  ];
  assertEquals(matchSquadGolds(lines, QUESTIONS, "f.jsonl", "raw.json"), [
    { id: "a2", answers: [] },
    { id: "a1", answers: ["Murray", "Matthew Murray"] },
    { id: "b2", answers: ["Treaties establishing"] },
    { id: "g1", answers: [] },
    { id: "b1", answers: ["the Treaties", "Treaties"] },
    { id: "g2", answers: [] },
    { id: "u", answers: ["here", "there"] },
  ]);
});

Deno.test("matchSquadGolds() refuses a line it cannot place, naming file, line and field", () => {
  const refuse = (
    line: Record<string, string>,
    message: string,
    before: Record<string, string>[] = [],
  ) => {
    const all = [...before, line].map((l, i) => ({ line: i + 3, ...l })) as {
      line: number;
      context: string;
      question: string;
      answer?: string;
    }[];
    const e = assertThrows(() => matchSquadGolds(all, QUESTIONS, "f.jsonl", "raw.json"));
    assert(e instanceof ServiceError && e.kind === "invalid_argument", String(e));
    assert((e as Error).message.includes(message), (e as Error).message);
  };
  refuse(
    { context: "c", question: "why?", answer: "x" },
    'f.jsonl:3: fields "context" and "question": no question of raw.json has this context and question',
  );
  refuse(
    { context: "c", question: "who?", answer: "Matthew Murray" },
    'f.jsonl:3: field "answer" is not the answer of this question in raw.json',
  );
  refuse(
    { context: "c", question: "who?" },
    'f.jsonl:3: field "answer" is needed: 2 questions of raw.json with different gold answers',
  );
  refuse(
    { context: "d", question: "where?", answer: "here" },
    'f.jsonl:4: fields "context", "question" and "answer": 2 lines so far match one question of raw.json',
    [{ context: "d", question: "where?", answer: "here" }],
  );
});

Deno.test("squadGoldsFor() maps the records a load kept back to their lines", () => {
  const text = "\ufeff" + [
    '{"taskname":"squad","context":"c","question":"who?","answer":"Murray"}',
    "",
    '{"taskname":"squad","context":"d","question":"when?","answer":"unanswerable"}\r',
    '{"taskname":"squad","context":"d","question":"when?","answer":"unanswerable"}',
    '{"taskname":"squad","context":"d","question":"where?","answer":"here"}',
  ].join("\n") + "\n";
  assertEquals(squadLines(text, "answer", "f.jsonl").map((l) => l.line), [1, 3, 4, 5]);
  // As if the first line had been dropped as too long.
  const kept = [
    { taskname: "squad", context: "d", question: "when?", answer: "unanswerable" },
    { taskname: "squad", context: "d", question: "when?", answer: "unanswerable" },
    { taskname: "squad", context: "d", question: "where?", answer: "here" },
  ];
  assertEquals(
    squadGoldsFor(kept, text, "answer", QUESTIONS, "f.jsonl", "raw.json").map((g) => g.id),
    ["g1", "g2", "u"],
  );
  const noContext = '{"taskname":"squad","context":"c","question":"who?","answer":"Murray"}\n\n' +
    '{"taskname":"squad","passage":"c","question":"who?","answer":"Murray"}\n';
  assertThrows(
    () => squadGoldsFor([], noContext, "answer", QUESTIONS, "f.jsonl", "raw.json"),
    ServiceError,
    'f.jsonl:3: field "context" must be a string',
  );
});

/** Golds of every record of a prepared squad split, through eval's own path. */
async function splitGolds(split: string) {
  const file = `${SPLITS}/squad_${split}.jsonl`;
  const text = await Deno.readTextFile(file);
  const records = text.split("\n").filter((l) => l !== "").map((l) =>
    JSON.parse(l) as Record<string, string>
  );
  return { records, golds: squadGoldsFor(records, text, "answer", RAW.questions, file, "raw") };
}

Deno.test("every record of the three squad splits finds its own raw question: all 11,873, each once", async () => {
  const ids: string[] = [];
  for (const split of ["train", "val", "test"]) {
    const { records, golds } = await splitGolds(split);
    records.forEach((r, i) => {
      const g = golds[i];
      assertEquals(r.answer, g.answers[0] ?? "unanswerable");
      ids.push(g.id);
    });
  }
  assertEquals(ids.length, RAW.questions.length);
  assertEquals(new Set(ids).size, RAW.questions.length);
  // The count: answerable val questions with more than one distinct (normalised) answer.
  const { golds } = await splitGolds("val");
  const answerable = golds.filter((g) => g.answers.length > 0);
  assertEquals(answerable.length, 442);
  assertEquals(
    answerable.filter((g) => new Set(g.answers.map(normalizeSquadAnswer)).size > 1).length,
    262,
  );
});

Deno.test("scoreEval() takes the best gold answer, not the first", () => {
  const records = [{ taskname: "squad", context: "c", question: "what?", answer: "the Treaties" }];
  const golds: SquadGold[] = [{ id: "b1", answers: ["the Treaties", "Treaties establishing"] }];
  const texts = ["Treaties establishing<|endoftext|>"];
  const all = scoreEval("squad", "answer", "squad", records, texts, golds);
  assertEquals(all.metrics.squad_em, 1);
  assertEquals(all.metrics.squad_f1, 1);
  assertEquals(all.metrics.exact_match, 1);
  assertEquals(all.predictions, { b1: "Treaties establishing" });
  const first = scoreEval("squad", "answer", "squad", records, texts);
  assertEquals([first.metrics.squad_em, first.metrics.squad_f1], [0, 2 / 3]);
  assertEquals(first.predictions, undefined);
  // The scorer's no-answer is "": an "unanswerable" prediction is written so.
  const none = scoreEval("squad", "answer", "squad", records, [" Unanswerable."], [{
    id: "a2",
    answers: [],
  }]);
  assertEquals(none.predictions, { a2: "" });
  assertEquals(none.metrics.squad_em, 1);
});

/** A small deterministic PRNG (mulberry32), so the predictions are the same on every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Predictions of every kind the scorer tells apart, as a model's raw output would look. */
function mixedPredictions(golds: readonly SquadGold[], seed: number): string[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)];
  return golds.map((g, i) => {
    const gold = g.answers.length > 0 ? pick(g.answers) : "";
    const words = gold.split(" ");
    switch (Math.floor(r() * 8)) {
      case 0: // any gold answer, not only the first
        return gold === "" ? "unanswerable" : gold;
      case 1: // the same, as generated: case, punctuation, an article, the stop token
        return `The ${gold.toUpperCase()}.<|endoftext|>`;
      case 2: // part of it
        return words.slice(0, Math.max(1, words.length - 1)).join(" ");
      case 3: // it, and more
        return `${gold} and ${pick(golds[(i + 7) % golds.length].answers) ?? "more"}`;
      case 4:
        return " unanswerable<|endoftext|>";
      case 5:
        return "";
      case 6: // another question's answer
        return pick(golds[(i * 31 + 5) % golds.length].answers) ?? "unanswerable";
      default: // the first gold answer, as the record carries it
        return g.answers[0] ?? "Unanswerable";
    }
  });
}

interface ScorerOutput {
  exact: number;
  f1: number;
  total: number;
}

/** Runs the official scorer: null when python3 or numpy is missing. */
async function officialScore(dataFile: string, predsFile: string): Promise<ScorerOutput> {
  const outFile = await Deno.makeTempFile({ suffix: ".json" });
  try {
    const run = await new Deno.Command("python3", {
      args: [SCORER, dataFile, predsFile, "-o", outFile],
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(run.code, 0, new TextDecoder().decode(run.stderr));
    return JSON.parse(await Deno.readTextFile(outFile));
  } finally {
    await Deno.remove(outFile);
  }
}

async function pythonMissing(): Promise<string | null> {
  try {
    const out = await new Deno.Command("python3", {
      args: ["-c", "import numpy"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.code === 0 ? null : "python3 cannot import numpy, which evaluate-v2.0.py needs";
  } catch {
    return "python3 is not installed (the official SQuAD scorer runs on it)";
  }
}

const scorer = requireTool(await pythonMissing(), "server/cli/eval_test.ts");

Deno.test({
  name:
    "eval's squad_em/squad_f1 equal the official evaluate-v2.0.py on the predictions it writes (all 11,873 questions)",
  ignore: scorer.ignore,
  async fn() {
    scorer.check();
    const records: Record<string, string>[] = [];
    const golds: SquadGold[] = [];
    for (const split of ["train", "val", "test"]) {
      const s = await splitGolds(split);
      records.push(...s.records);
      golds.push(...s.golds);
    }
    const texts = mixedPredictions(golds, 20261129);
    const ours = scoreEval("squad", "answer", "squad", records, texts, golds);
    const predsFile = await Deno.makeTempFile({ suffix: ".json" });
    try {
      await Deno.writeTextFile(predsFile, JSON.stringify(ours.predictions));
      const official = await officialScore(DEFAULT_SQUAD_GOLD, predsFile);
      assertEquals(official.total, RAW.questions.length);
      assertEquals(ours.metrics.count, RAW.questions.length);
      const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9;
      assert(
        close(ours.metrics.squad_em, official.exact / 100),
        `EM ${ours.metrics.squad_em} != ${official.exact / 100}`,
      );
      assert(
        close(ours.metrics.squad_f1, official.f1 / 100),
        `F1 ${ours.metrics.squad_f1} != ${official.f1 / 100}`,
      );
      // Not a vacuous match: the mix scores in between, and the first gold alone scores less.
      assert(official.exact > 20 && official.exact < 80, `exact ${official.exact}`);
      const firstOnly = scoreEval("squad", "answer", "squad", records, texts);
      assert(firstOnly.metrics.squad_em < ours.metrics.squad_em - 0.01);
      assert(firstOnly.metrics.squad_f1 < ours.metrics.squad_f1 - 0.01);
    } finally {
      await Deno.remove(predsFile);
    }
  },
});

const SQUAD_CONFIG = `
name: squad_eval_test
trainer: { max_steps: 2, max_epochs: 1, val_check_interval: 2 }
model:
  virtual_prompt_style: prompt-tuning
  new_tasks: [squad]
  task_templates:
    - taskname: squad
      prompt_template: "<|VIRTUAL_PROMPT_0|> {context} Question: {question} Answer: {answer}"
      total_virtual_tokens: 4
      virtual_token_splits: [4]
      truncate_field: context
      answer_only_loss: true
      max_seq_length: 512
  prompt_tuning: { new_prompt_init_methods: [text], new_prompt_init_text: ["Answer the question:"] }
  data: { train_ds: [train.jsonl], validation_ds: [val.jsonl] }
  global_batch_size: 2
  micro_batch_size: 2
  optim: { name: adamw, lr: 0.03 }
  inference: { tokens_to_generate: 6 }
`;

Deno.test({
  name:
    "deno task eval --predictions-out writes what evaluate-v2.0.py scores to the squad_em/squad_f1 eval reports",
  ignore: scorer.ignore,
  async fn() {
    scorer.check();
    const dir = await Deno.makeTempDir();
    try {
      const lines = (f: string, n: number) =>
        Deno.readTextFileSync(`${SPLITS}/${f}`).split("\n").slice(0, n).join("\n") + "\n";
      await Deno.writeTextFile(`${dir}/train.jsonl`, lines("squad_train.jsonl", 4));
      await Deno.writeTextFile(`${dir}/val.jsonl`, lines("squad_val.jsonl", 2));
      await Deno.writeTextFile(`${dir}/test.jsonl`, lines("squad_test.jsonl", 30));
      await Deno.writeTextFile(`${dir}/run.yaml`, SQUAD_CONFIG);
      const t = await runCli("train.ts", [
        "--config",
        "run.yaml",
        "--registry",
        "reg",
        "--runs",
        "runs",
        "--data-dir",
        ".",
      ], dir);
      assertEquals(t.code, 0, t.stderr);
      const e = await runCli("eval.ts", [
        "--task",
        "squad",
        "--data",
        "test.jsonl",
        "--registry",
        "reg",
        "--max-new",
        "6",
        "--predictions-out",
        "preds.json",
      ], dir);
      assertEquals(e.code, 0, e.stderr);
      const report = JSON.parse(e.stdout.trim().split("\n").at(-1)!);
      assertEquals(report.squad_gold, DEFAULT_SQUAD_GOLD);
      assertEquals(report.metrics.count, 30);
      const preds: Record<string, string> = JSON.parse(
        await Deno.readTextFile(`${dir}/preds.json`),
      );
      const { golds } = await splitGolds("test");
      assertEquals(Object.keys(preds), golds.slice(0, 30).map((g) => g.id));
      // The scorer wants a prediction for every question of its file: give it just these 30.
      const raw = JSON.parse(RAW_TEXT) as {
        data: { paragraphs: { qas: { id: string }[] }[] }[];
      };
      for (const a of raw.data) {
        for (const p of a.paragraphs) p.qas = p.qas.filter((qa) => Object.hasOwn(preds, qa.id));
      }
      await Deno.writeTextFile(`${dir}/gold.json`, JSON.stringify(raw));
      const official = await officialScore(`${dir}/gold.json`, `${dir}/preds.json`);
      assertEquals(official.total, 30);
      assert(Math.abs(report.metrics.squad_em - official.exact / 100) <= 1e-9);
      assert(Math.abs(report.metrics.squad_f1 - official.f1 / 100) <= 1e-9);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("deno task eval refuses --squad-gold and --predictions-out where they cannot apply", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const other = await runCli("eval.ts", [
      "--task",
      "sentiment",
      "--data",
      "x.jsonl",
      "--predictions-out",
      "p.json",
    ], dir);
    assertEquals(other.code, 1);
    assertStringIncludes(other.stderr, "apply to the squad metric only");
    const none = await runCli("eval.ts", [
      "--task",
      "squad",
      "--data",
      "x.jsonl",
      "--squad-gold",
      "none",
      "--predictions-out",
      "p.json",
    ], dir);
    assertEquals(none.code, 1);
    assertStringIncludes(none.stderr, "--predictions-out needs the question ids");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
