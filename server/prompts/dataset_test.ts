import { ServiceError } from "../errors.ts";
import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { BadLinesError, loadDataset } from "./dataset.ts";
import { type TaskTemplate, validateTemplate } from "./template.ts";

const MODEL_DIR = new URL("../../models/tiny-gpt2", import.meta.url).pathname;
const SPLITS = new URL("../../data/splits/", import.meta.url).pathname;
const tok = await loadTokenizer(MODEL_DIR);

const templates = new Map<string, TaskTemplate>([
  [
    "sentiment",
    validateTemplate({
      taskname: "sentiment",
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      prompt_template_fields: ["sentence", "label"],
      total_virtual_tokens: 10,
      virtual_token_splits: [10],
    }, "test"),
  ],
  [
    "intent_and_slot",
    validateTemplate({
      taskname: "intent_and_slot",
      prompt_template: "<|VIRTUAL_PROMPT_0|> {utterance}{label}",
      prompt_template_fields: ["utterance", "label"],
      total_virtual_tokens: 20,
      virtual_token_splits: [20],
      max_seq_length: 60,
    }, "test"),
  ],
]);

async function withFile(text: string | Uint8Array, fn: (path: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/x.jsonl`;
  try {
    if (typeof text === "string") await Deno.writeTextFile(path, text);
    else await Deno.writeFile(path, text);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const good = (s: string, label = "neutral") =>
  JSON.stringify({ taskname: "sentiment", sentence: s, label });

Deno.test("loadDataset() reads the shipped splits of both tasks", async () => {
  const s = await loadDataset(SPLITS + "sentiment_val.jsonl", templates, tok);
  assertEquals(s.examples.length, 227);
  assertEquals(s.records.length, 227);
  assertEquals(s.skipped, []);
  assertEquals(s.dropped, { tooLong: 0, tooShort: 0 });
  const first = JSON.parse(
    (await Deno.readTextFile(SPLITS + "sentiment_val.jsonl")).split("\n")[0],
  );
  assertEquals(s.records[0], first);
  assertEquals(
    tok.decode(s.examples[0].ids.subarray(s.examples[0].answerStart)),
    ` ${first.label}<|endoftext|>`,
  );
  const i = await loadDataset(SPLITS + "intent_and_slot_test.jsonl", templates, tok);
  // max_seq_length 60 with no truncate_field drops the long ones, and says how many.
  assertEquals(i.examples.length + i.dropped.tooLong, 1085);
  assert(i.dropped.tooLong > 0 && i.examples.length > 1000, JSON.stringify(i.dropped));
  assert(i.examples.every((e) => e.ids.length <= 60 && e.taskname === "intent_and_slot"));
});

Deno.test("loadDataset() mixes tasks, ignores blank lines and CRLF, keeps records parallel", async () => {
  const text = [
    good("Profit rose ."),
    "",
    "   ",
    JSON.stringify({
      taskname: "intent_and_slot",
      utterance: "wake me up",
      label: "\nIntent: alarm_set\nSlots: None",
    }) + "\r",
    good("Sales fell .", "negative"),
    "",
  ].join("\n");
  await withFile(text, async (path) => {
    const d = await loadDataset(path, templates, tok);
    assertEquals(d.examples.map((e) => e.taskname), ["sentiment", "intent_and_slot", "sentiment"]);
    assertEquals(d.records.map((r) => r.taskname), ["sentiment", "intent_and_slot", "sentiment"]);
    assertEquals(d.records[2].sentence, "Sales fell .");
    assertEquals(d.examples[1].ids.slice(0, 20).every((id) => id >= tok.vocabSize), true);
  });
});

Deno.test("loadDataset() refuses a file with bad lines, listing each as file:line: reason", async () => {
  const lines = [
    good("ok ."), // 1
    "{not json", // 2
    "[1, 2]", // 3
    JSON.stringify({ sentence: "x", label: "y" }), // 4
    JSON.stringify({ taskname: "weather", sentence: "x" }), // 5
    JSON.stringify({ taskname: "sentiment", sentence: "x" }), // 6
    JSON.stringify({ taskname: "sentiment", sentence: "x", label: 3 }), // 7
    JSON.stringify({ taskname: 5 }), // 8
    "", // 9
    "null", // 10
  ];
  const refuse = { refuseMissingFields: true };
  await withFile(lines.join("\n"), async (path) => {
    const err = await assertRejects(
      loadDataset(path, templates, tok, refuse),
      BadLinesError,
      `${path}:2: not valid JSON`,
    );
    const e = err as BadLinesError;
    assertEquals(e.total, 8);
    assertEquals(e.lines.map((b) => b.line), [2, 3, 4, 5, 6, 7, 8, 10]);
    const msg = e.message.split("\n");
    assertEquals(msg.slice(1, 9), [
      `${path}:3: expected a JSON object: found an array`,
      `${path}:4: field "taskname" is missing`,
      `${path}:5: unknown task "weather": expected one of "sentiment", "intent_and_slot"`,
      `${path}:6: field "label" of task "sentiment" is missing`,
      // Types, never values: a message does not echo file contents.
      `${path}:7: field "label" of task "sentiment" must be a string: found number`,
      `${path}:8: field "taskname" must be a string: found number`,
      `${path}:10: expected a JSON object: found null`,
      "(8 bad lines in all; set skipBadLines to skip them instead)",
    ]);
    assert(e instanceof ServiceError);
  });
});

Deno.test("loadDataset() with skipBadLines keeps the good lines and lists the skipped ones", async () => {
  const text = [good("a ."), "oops", good("b ."), JSON.stringify({ taskname: "sentiment" })].join(
    "\n",
  );
  await withFile(text, async (path) => {
    const d = await loadDataset(path, templates, tok, {
      skipBadLines: true,
      refuseMissingFields: true,
    });
    assertEquals(d.records.map((r) => r.sentence), ["a .", "b ."]);
    assertEquals(d.skipped.map((s) => [s.file, s.line]), [[path, 2], [path, 4]]);
    assertEquals(d.skipped[1].reason, 'field "sentence" of task "sentiment" is missing');
  });
});

Deno.test("loadDataset() lists at most 20 bad lines and counts the rest", async () => {
  const text = Array.from({ length: 25 }, (_, i) => `bad ${i}`).join("\n");
  await withFile(text, async (path) => {
    const e = await assertRejects(
      loadDataset(path, templates, tok),
      BadLinesError,
      "... and 5 more",
    );
    assertEquals((e as BadLinesError).lines.length, 20);
    assertEquals((e as BadLinesError).total, 25);
    assert(e.message.includes(`${path}:20:`) && !e.message.includes(`${path}:21:`));
  });
});

Deno.test("loadDataset() reports one bad line alone, with no summary", async () => {
  await withFile(
    good("a .") + "\n" + JSON.stringify({ taskname: "sentiment", label: "x" }),
    async (path) => {
      const e = await assertRejects(
        loadDataset(path, templates, tok, { refuseMissingFields: true }),
        BadLinesError,
        "",
      );
      assertEquals(e.message, `${path}:2: field "sentence" of task "sentiment" is missing`);
    },
  );
});

Deno.test("loadDataset() names invalid UTF-8 lines and skips a leading BOM", async () => {
  const enc = new TextEncoder();
  const bytes = new Uint8Array([
    0xef,
    0xbb,
    0xbf,
    ...enc.encode(good("bom .") + "\n"),
    ...enc.encode('{"taskname":"sentiment","sentence":"'),
    0xff,
    ...enc.encode('","label":"x"}\n'),
  ]);
  await withFile(bytes, async (path) => {
    await assertRejects(
      loadDataset(path, templates, tok),
      BadLinesError,
      `${path}:2: not valid UTF-8`,
    );
    const d = await loadDataset(path, templates, tok, { skipBadLines: true });
    assertEquals(d.records.map((r) => r.sentence), ["bom ."]);
  });
});

Deno.test("loadDataset() counts examples dropped by the length rules", async () => {
  const long = "word ".repeat(50);
  const text = [
    JSON.stringify({ taskname: "intent_and_slot", utterance: long, label: "x" }),
    JSON.stringify({ taskname: "intent_and_slot", utterance: "hi", label: "x" }),
  ].join("\n");
  await withFile(text, async (path) => {
    const d = await loadDataset(path, templates, tok);
    assertEquals(d.dropped, { tooLong: 1, tooShort: 0 });
    assertEquals(d.records.map((r) => r.utterance), ["hi"]);
  });
  const short = new Map([[
    "s",
    validateTemplate({
      taskname: "s",
      prompt_template: "<|VIRTUAL_PROMPT_0|>{a}",
      prompt_template_fields: ["a"],
      total_virtual_tokens: 1,
      virtual_token_splits: [1],
      min_seq_length: 5,
    }, "t"),
  ]]);
  const d = await loadDataset({ records: [{ taskname: "s", a: "x" }] }, short, tok);
  assertEquals(d.dropped, { tooLong: 0, tooShort: 1 });
});

Deno.test("loadDataset() takes inline records (objects or JSON texts) named in messages", async () => {
  const d = await loadDataset(
    { records: [{ taskname: "sentiment", sentence: "a .", label: "x", id: 7 }, good("b ."), ""] },
    templates,
    tok,
  );
  // Non-string extra fields are not template fields: kept out of records, not an error.
  assertEquals(d.records, [
    { taskname: "sentiment", sentence: "a .", label: "x" },
    { taskname: "sentiment", sentence: "b .", label: "neutral" },
  ]);
  await assertRejects(
    loadDataset(
      { name: "request.records", records: [good("a ."), { taskname: "sentiment" }] },
      templates,
      tok,
      { refuseMissingFields: true },
    ),
    BadLinesError,
    'request.records:2: field "sentence" of task "sentiment" is missing',
  );
  await assertRejects(
    loadDataset({ records: [7] }, templates, tok),
    BadLinesError,
    "<inline>:1: expected a JSON object: found number",
  );
});

Deno.test("loadDataset() for inference accepts records without the answer field", async () => {
  const records = [{ taskname: "sentiment", sentence: "a ." }];
  const d = await loadDataset({ records }, templates, tok, { forInference: true });
  assertEquals(d.examples[0].answerStart, d.examples[0].ids.length);
  assertEquals(tok.decode(d.examples[0].ids.subarray(10)), " a . sentiment:");
  await assertRejects(
    loadDataset({ records }, templates, tok, { refuseMissingFields: true }),
    BadLinesError,
    'field "label"',
  );
  await assertRejects(
    loadDataset({ records: [{ ...records[0], label: 1 }] }, templates, tok, { forInference: true }),
    BadLinesError,
    'field "label" of task "sentiment" must be a string',
  );
});

Deno.test("loadDataset() does not read inherited properties as fields", async () => {
  const t = new Map([[
    "p",
    validateTemplate({
      taskname: "p",
      prompt_template: "<|VIRTUAL_PROMPT_0|>{constructor}",
      prompt_template_fields: ["constructor"],
      total_virtual_tokens: 1,
      virtual_token_splits: [1],
    }, "t"),
  ]]);
  await assertRejects(
    loadDataset({ records: [{ taskname: "p" }] }, t, tok, { refuseMissingFields: true }),
    BadLinesError,
    'field "constructor" of task "p" is missing',
  );
  const d = await loadDataset({ records: [{ taskname: "p" }] }, t, tok);
  assertEquals(d.records, [{ taskname: "p", constructor: "" }]);
});

Deno.test('NeMo parity: a record without a template field gets "" for it, and is listed', async () => {
  // NeMo gpt_prompt_learning_dataset.py v1.20.0:243-255 (_insert_text_in_template): "If some
  // fields from the template aren't present ... just remove that field from the template, leaving
  // the space blank". Before, such a record was a bad line.
  const text = [
    JSON.stringify({ taskname: "sentiment", label: "positive" }),
    good("fine ."),
    JSON.stringify({ taskname: "sentiment", sentence: "", label: "positive" }),
    JSON.stringify({ taskname: "intent_and_slot" }),
  ].join("\n");
  await withFile(text, async (path) => {
    const d = await loadDataset(path, templates, tok);
    assertEquals(d.examples.length, 4);
    assertEquals(d.records[0], { taskname: "sentiment", label: "positive", sentence: "" });
    // The same example as the record that gives sentence as "".
    assertEquals(d.examples[0], d.examples[2]);
    assertEquals(d.filled, [
      {
        file: path,
        line: 1,
        reason: 'field "sentence" of task "sentiment" missing: filled with ""',
      },
      {
        file: path,
        line: 4,
        reason: 'field "utterance", "label" of task "intent_and_slot" missing: filled with ""',
      },
    ]);
    assertEquals(d.skipped, []);
  });
  // NeMo reads the answer again to start the loss (_find_answer_start, :299-303), so with
  // answer_only_loss a training record without its answer cannot train there: refused here.
  const answerOnly = new Map([[
    "a",
    validateTemplate({
      taskname: "a",
      prompt_template: "<|VIRTUAL_PROMPT_0|> {q} answer: {ans}",
      prompt_template_fields: ["q", "ans"],
      total_virtual_tokens: 2,
      virtual_token_splits: [2],
      answer_only_loss: true,
    }, "t"),
  ]]);
  await assertRejects(
    loadDataset({ records: [{ taskname: "a", q: "x" }] }, answerOnly, tok),
    BadLinesError,
    '<inline>:1: field "ans" of task "a" is missing: a training record needs its answer when ' +
      "answer_only_loss is true",
  );
  const q = await loadDataset({ records: [{ taskname: "a", ans: "y" }] }, answerOnly, tok);
  assertEquals(q.records[0].q, "");
});

Deno.test("loadDataset() names a missing file", async () => {
  await assertRejects(
    loadDataset("/nonexistent/x.jsonl", templates, tok),
    ServiceError,
    "/nonexistent/x.jsonl: dataset file not found",
  );
});
