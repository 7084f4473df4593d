import { ServiceError } from "../errors.ts";
import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import {
  sharedPrefixIds,
  type TaskTemplate,
  tokenizeExample,
  type TokenizeResult,
  validateTemplate,
} from "./template.ts";

const MODEL_DIR = new URL("../../models/tiny-gpt2", import.meta.url).pathname;
const FIXTURES = new URL("../../test/fixtures/tokenizer/", import.meta.url).pathname;
const SPLITS = new URL("../../data/splits/", import.meta.url).pathname;
const tok = await loadTokenizer(MODEL_DIR);
const V = tok.vocabSize;

const SENTIMENT = {
  taskname: "sentiment",
  prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  prompt_template_fields: ["sentence", "label"],
  total_virtual_tokens: 10,
  virtual_token_splits: [10],
};

function ok(r: TokenizeResult) {
  if (!r.ok) throw new Error(`expected an example, got a drop: ${r.reason} (${r.length})`);
  return r.example;
}
const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

Deno.test("validateTemplate() fills NeMo's defaults", () => {
  const t = validateTemplate(SENTIMENT, "cfg");
  assertEquals(t, {
    ...SENTIMENT,
    truncate_field: null,
    answer_field: "label",
    answer_only_loss: false, // NeMo's default: the loss covers every token but the virtual ones
    add_bos: false,
    add_eos: true,
    max_seq_length: 1024,
    min_seq_length: 1,
  });
});

Deno.test("validateTemplate() keeps explicit settings and accepts NeMo's 'None' truncate_field", () => {
  const t = validateTemplate({
    taskname: "squad.v2-x_1",
    prompt_template:
      "<|VIRTUAL_PROMPT_0|> Context: {context}\n\nQuestion: {question}\n\nAnswer:{answer}",
    prompt_template_fields: ["context", "question", "answer"],
    total_virtual_tokens: 3,
    virtual_token_splits: [3],
    truncate_field: "context",
    answer_field: "answer",
    answer_only_loss: false,
    add_bos: true,
    add_eos: false,
    max_seq_length: 512,
    min_seq_length: 4,
  }, "cfg");
  assertEquals(
    [t.truncate_field, t.answer_only_loss, t.add_bos, t.add_eos, t.max_seq_length],
    ["context", false, true, false, 512],
  );
  assertEquals(
    validateTemplate({ ...SENTIMENT, truncate_field: "None" }, "c").truncate_field,
    null,
  );
});

Deno.test("validateTemplate() rejects each bad template with a message naming task and field", () => {
  const cases: [Record<string, unknown>, typeof ServiceError, string][] = [
    [
      { ...SENTIMENT, virtual_token_splits: [9] },
      ServiceError,
      'cfg: task "sentiment": virtual_token_splits must sum to total_virtual_tokens (10): current sum is 9',
    ],
    [
      {
        ...SENTIMENT,
        prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence}<|VIRTUAL_PROMPT_1|> s: {label}",
      },
      ServiceError,
      "more <|VIRTUAL_PROMPT_n|> markers than virtual_token_splits has entries (1)",
    ],
    [
      { ...SENTIMENT, virtual_token_splits: [5, 5] },
      ServiceError,
      "has 1 <|VIRTUAL_PROMPT_n|> markers but virtual_token_splits has 2 entries",
    ],
    [
      {
        ...SENTIMENT,
        prompt_template: "<|VIRTUAL_PROMPT_1|> {sentence}<|VIRTUAL_PROMPT_0|> s: {label}",
        virtual_token_splits: [5, 5],
      },
      ServiceError,
      "numbered 0, 1, ... in order: expected <|VIRTUAL_PROMPT_0|>, found <|VIRTUAL_PROMPT_1|>",
    ],
    [
      { ...SENTIMENT, prompt_template: "<|VIRTUAL_PROMPT_00|> {sentence} s: {label}" },
      ServiceError,
      "expected <|VIRTUAL_PROMPT_0|>, found <|VIRTUAL_PROMPT_00|>",
    ],
    [
      {
        ...SENTIMENT,
        prompt_template: "<|VIRTUAL_PROMPT_0|> <|VIRTUAL_PROMPT|> {sentence} {label}",
      },
      ServiceError,
      "malformed virtual prompt marker",
    ],
    [
      { ...SENTIMENT, prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} {topic} s: {label}" },
      ServiceError,
      "prompt_template uses {topic}, which is not in prompt_template_fields (sentence, label)",
    ],
    [
      { ...SENTIMENT, prompt_template_fields: ["sentence", "topic", "label"] },
      ServiceError,
      'prompt_template_fields lists "topic" but prompt_template has no {topic} placeholder',
    ],
    [
      { ...SENTIMENT, prompt_template_fields: ["sentence", "sentence", "label"] },
      ServiceError,
      'lists "sentence" more than once',
    ],
    [
      { ...SENTIMENT, prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} {sentence} s: {label}" },
      ServiceError,
      "uses {sentence} more than once",
    ],
    [
      {
        ...SENTIMENT,
        prompt_template: "<|VIRTUAL_PROMPT_0|> {topic} {sentence} s: {label}",
        prompt_template_fields: ["sentence", "topic", "label"],
      },
      ServiceError,
      "in template order: expected [topic, sentence, label], found [sentence, topic, label]",
    ],
    [
      { ...SENTIMENT, answer_field: "sentence" },
      ServiceError,
      'the answer field "{sentence}" must be the last placeholder: found "{label}" after it',
    ],
    [
      { ...SENTIMENT, prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}." },
      ServiceError,
      'only whitespace or <|endoftext|> may follow the answer field "{label}": found "."',
    ],
    [
      { ...SENTIMENT, answer_field: "topic" },
      ServiceError,
      'answer_field must be one of prompt_template_fields (sentence, label): found "topic"',
    ],
    [
      { ...SENTIMENT, truncate_field: "label" },
      ServiceError,
      "truncate_field cannot be the answer",
    ],
    [
      { ...SENTIMENT, truncate_field: "ctx" },
      ServiceError,
      "truncate_field must be null or one of",
    ],
    [{ ...SENTIMENT, taskname: "../etc" }, ServiceError, "taskname must match"],
    [{ ...SENTIMENT, taskname: "a/b" }, ServiceError, 'found "a/b"'],
    [{ ...SENTIMENT, taskname: "x".repeat(65) }, ServiceError, "taskname must match"],
    [{ ...SENTIMENT, taskname: 7 }, ServiceError, "found 7"],
    [
      { ...SENTIMENT, total_virtual_tokens: "10" },
      ServiceError,
      'total_virtual_tokens must be a positive integer: found "10"',
    ],
    [
      { ...SENTIMENT, total_virtual_tokens: 0, virtual_token_splits: [0] },
      ServiceError,
      "total_virtual_tokens must be a positive integer: found 0",
    ],
    [
      { ...SENTIMENT, virtual_token_splits: [10.5] },
      ServiceError,
      "virtual_token_splits must be a non-empty list of positive integers: found [10.5]",
    ],
    [{ ...SENTIMENT, virtual_token_splits: [] }, ServiceError, "found []"],
    [
      { ...SENTIMENT, prompt_template: "" },
      ServiceError,
      "prompt_template must be a non-empty string",
    ],
    [
      { ...SENTIMENT, prompt_template_fields: "sentence" },
      ServiceError,
      "prompt_template_fields must be a non-empty list",
    ],
    [
      { ...SENTIMENT, prompt_template_fields: ["sentence", "la bel"] },
      ServiceError,
      'entry "la bel" is not a field name',
    ],
    [{ ...SENTIMENT, add_eos: "yes" }, ServiceError, 'add_eos must be true or false: found "yes"'],
    [
      { ...SENTIMENT, max_seq_length: -1 },
      ServiceError,
      "max_seq_length must be a positive integer: found -1",
    ],
    [
      { ...SENTIMENT, min_seq_length: 8, max_seq_length: 4 },
      ServiceError,
      "min_seq_length (8) must not exceed max_seq_length (4)",
    ],
    [{ ...SENTIMENT, virtual_tokens: 3 }, ServiceError, 'unknown field "virtual_tokens"'],
    [
      {
        ...SENTIMENT,
        prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} s: {label}<|endoftext|>",
        add_eos: false,
      },
      ServiceError,
      "ends in <|endoftext|> but add_eos is false",
    ],
  ];
  for (const [raw, cls, msg] of cases) {
    const e = assertThrows(() => validateTemplate(raw, "cfg"), cls, msg);
    if (!e.message.includes("taskname must match")) {
      assert(e.message.startsWith(`cfg: task "${raw.taskname}": `), e.message);
    }
  }
  assertThrows(
    () => validateTemplate(null, "cfg"),
    ServiceError,
    "cfg: a task template must be an object: found null",
  );
  assertThrows(() => validateTemplate([SENTIMENT], "cfg"), ServiceError, "must be an object");
});

Deno.test("validateTemplate() accepts a literal <|endoftext|> after the answer as add_eos", () => {
  const t = validateTemplate(
    { ...SENTIMENT, prompt_template: SENTIMENT.prompt_template + "<|endoftext|>\n" },
    "cfg",
  );
  assertEquals(t.add_eos, true);
  const e = ok(tokenizeExample(t, { sentence: "Up .", label: "positive" }, tok));
  assertEquals(e.ids[e.ids.length - 1], tok.eosId);
  assertEquals(e.ids.filter((id) => id === tok.eosId).length, 1);
});

Deno.test("tokenizeExample() matches the golden soft-prompt layout [v0..v4, input, v5..v9, mid, label]", async () => {
  const golden = JSON.parse(await Deno.readTextFile(FIXTURES + "golden_ids.json")).soft_prompt;
  // Decoded, the golden ids read "Finnish steel maker ... quarter .", " sentiment:" and
  // " positive<|endoftext|>". The leading space of " positive" comes from the template's space
  // before {label}: the reference README writes "sentiment:{label}", but its label ids are those
  // of " positive" (3967), not "positive" (24561), so the template that yields them is this one.
  const t = validateTemplate({
    taskname: "sentiment",
    prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}<|VIRTUAL_PROMPT_1|> sentiment: {label}",
    prompt_template_fields: ["sentence", "label"],
    total_virtual_tokens: 10,
    virtual_token_splits: [5, 5],
  }, "golden");
  const record = {
    sentence: "Finnish steel maker Rautaruukki said profits rose sharply in the quarter .",
    label: "positive",
  };
  const e = ok(tokenizeExample(t, record, tok));
  const expected = [
    ...range(V, 5),
    ...golden["pt.input_ids"],
    ...range(V + 5, 5),
    ...golden["pt.mid_ids"],
    ...golden["pt.label_ids"],
  ];
  assertEquals(Array.from(e.ids), expected);
  assertEquals(e.answerStart, expected.length - 2);
  assertEquals(e.truncated, false);
  assertEquals(e.taskname, "sentiment");
  // Without the space, the answer is the other token: the space is not invented.
  const noSpace = validateTemplate(
    { ...t, prompt_template: t.prompt_template.replace(": {label}", ":{label}") },
    "golden",
  );
  const e2 = ok(tokenizeExample(noSpace, record, tok));
  assertEquals(Array.from(e2.ids.subarray(e2.answerStart)), [tok.tokenToId("positive"), tok.eosId]);
});

Deno.test("tokenizeExample() reproduces the PEFT token ids of all of sentiment_train", async () => {
  const t = validateTemplate(SENTIMENT, "cfg");
  const tokens = (await Deno.readTextFile(FIXTURES + "sentiment_train_tokens.jsonl"))
    .trim().split("\n").map((l) => JSON.parse(l) as { prompt_ids: number[]; answer_ids: number[] });
  const records = (await Deno.readTextFile(SPLITS + "sentiment_train.jsonl"))
    .trim().split("\n").map((l) => JSON.parse(l) as Record<string, string>);
  assertEquals(records.length, tokens.length);
  for (let i = 0; i < records.length; i++) {
    const e = ok(tokenizeExample(t, records[i], tok));
    const want = [...range(V, 10), ...tokens[i].prompt_ids, ...tokens[i].answer_ids];
    if (e.ids.length !== want.length || e.ids.some((id, k) => id !== want[k])) {
      assertEquals(Array.from(e.ids), want, `line ${i + 1}`);
    }
    assertEquals(e.answerStart, 10 + tokens[i].prompt_ids.length, `line ${i + 1}`);
  }
});

Deno.test("tokenizeExample() for inference stops before the answer and needs no answer field", () => {
  const t = validateTemplate(SENTIMENT, "cfg");
  const train = ok(tokenizeExample(t, { sentence: "Sales fell .", label: "negative" }, tok));
  const infer = ok(tokenizeExample(t, { sentence: "Sales fell ." }, tok, { forInference: true }));
  assertEquals(Array.from(infer.ids), Array.from(train.ids.subarray(0, train.answerStart)));
  assertEquals(infer.answerStart, infer.ids.length);
  assertEquals(tok.decode(infer.ids.subarray(10)), " Sales fell . sentiment:");
});

Deno.test("tokenizeExample() numbers virtual tokens across markers and honours add_bos/add_eos", () => {
  const t = validateTemplate({
    taskname: "qa",
    prompt_template: "<|VIRTUAL_PROMPT_0|>Q: {q}<|VIRTUAL_PROMPT_1|>{a}",
    prompt_template_fields: ["q", "a"],
    total_virtual_tokens: 5,
    virtual_token_splits: [2, 3],
    add_bos: true,
    add_eos: false,
  }, "cfg");
  const e = ok(tokenizeExample(t, { q: "why", a: " because" }, tok));
  assertEquals(Array.from(e.ids), [
    tok.bosId,
    V,
    V + 1,
    ...tok.encode("Q:"),
    ...tok.encode(" why"),
    V + 2,
    V + 3,
    V + 4,
    ...tok.encode(" because"),
  ]);
  assertEquals(e.answerStart, e.ids.length - tok.encode(" because").length);
});

Deno.test("tokenizeExample() keeps field values apart from template syntax", () => {
  const t = validateTemplate(SENTIMENT, "cfg");
  const e = ok(
    tokenizeExample(t, { sentence: "<|VIRTUAL_PROMPT_0|> {label}<|endoftext|>", label: "x" }, tok),
  );
  assertEquals(e.ids.filter((id) => id >= V).length, 10);
  assertEquals(e.ids.filter((id) => id === tok.eosId).length, 1);
  assertEquals(
    tok.decode(e.ids.subarray(10, e.answerStart)),
    " <|VIRTUAL_PROMPT_0|> {label}<|endoftext|> sentiment:",
  );
});

Deno.test("NeMo parity: a too-long training example loses excess + 1 field tokens and its EOS, and scores the last prompt token", () => {
  // NeMo gpt_prompt_learning_dataset.py v1.20.0: BOS/EOS are added before the length check
  // (:161-167); _truncate_input cuts `truncation_length = (len(input_ids) - self.max_seq_length)
  // + 1` tokens of the field's own ids (:280-286) and re-tokenises the whole prompt with
  // `self.tokenizer.text_to_ids(input_example)`, no BOS or EOS (:295); _find_answer_start still
  // counts EOS in (`if self.add_eos: num_answer_text_ids += 1`, :308-311); the example is kept
  // when `self.min_seq_length <= len(input_ids) <= self.max_seq_length` (:179).
  const base = {
    taskname: "squad",
    prompt_template:
      "<|VIRTUAL_PROMPT_0|> Context: {context} Question: {question} Answer: {answer}",
    prompt_template_fields: ["context", "question", "answer"],
    total_virtual_tokens: 2,
    virtual_token_splits: [2],
    truncate_field: "context",
  };
  const record = {
    context: "one two three four five six seven eight",
    question: "how many",
    answer: "eight",
  };
  const full = ok(tokenizeExample(validateTemplate(base, "c"), record, tok));
  assertEquals(full.truncated, false);
  assertEquals(tok.decode(full.ids.subarray(full.answerStart)), " eight<|endoftext|>");
  // Three tokens too many: four of the context's eight go, and so does EOS.
  const max = full.ids.length - 3;
  const cut = ok(
    tokenizeExample(validateTemplate({ ...base, max_seq_length: max }, "c"), record, tok),
  );
  assertEquals(cut.truncated, true);
  assertEquals(
    tok.decode(cut.ids.subarray(2)),
    " Context: one two three four Question: how many Answer: eight",
  );
  assertEquals(cut.ids.length, full.ids.length - 4 - 1);
  // The answer start is one token early: ":" of "Answer:" is scored, and no EOS.
  assertEquals(tok.decode(cut.ids.subarray(cut.answerStart)), ": eight");
  // Before: exactly the excess went, EOS stayed, and the answer start was " eight".
  // Needing the whole field: it goes whole, and the example stays when it then fits.
  const contextLen = tok.encode(record.context).length;
  const empty = ok(tokenizeExample(
    validateTemplate({ ...base, max_seq_length: full.ids.length - contextLen }, "c"),
    record,
    tok,
  ));
  assertEquals(tok.decode(empty.ids.subarray(2)), " Context:  Question: how many Answer: eight");
  // Still too long without its whole field: dropped.
  const r = tokenizeExample(
    validateTemplate({ ...base, max_seq_length: 8 }, "c"),
    record,
    tok,
  );
  assertEquals(r.ok, false);
  // With add_bos, the cut example has no BOS either.
  const bos = ok(tokenizeExample(
    validateTemplate({ ...base, add_bos: true, max_seq_length: max + 1 }, "c"),
    record,
    tok,
  ));
  assertEquals(bos.ids[0], V);
});

Deno.test("tokenizeExample() for inference cuts exactly the excess from the truncate_field, keeping BOS and a token", () => {
  const base = {
    taskname: "squad",
    prompt_template:
      "<|VIRTUAL_PROMPT_0|> Context: {context} Question: {question} Answer: {answer}",
    prompt_template_fields: ["context", "question", "answer"],
    total_virtual_tokens: 2,
    virtual_token_splits: [2],
    truncate_field: "context",
  };
  const record = { context: "one two three four five six seven eight", question: "how many" };
  const full = ok(
    tokenizeExample(validateTemplate(base, "c"), record, tok, { forInference: true }),
  );
  const cut = ok(tokenizeExample(
    validateTemplate({ ...base, max_seq_length: full.ids.length - 3 }, "c"),
    record,
    tok,
    { forInference: true },
  ));
  assertEquals(
    tok.decode(cut.ids.subarray(2)),
    " Context: one two three four five Question: how many Answer:",
  );
  assertEquals(cut.answerStart, cut.ids.length);
  const contextLen = tok.encode(" " + record.context).length;
  assertEquals(
    tokenizeExample(
      validateTemplate({ ...base, max_seq_length: full.ids.length - contextLen }, "c"),
      record,
      tok,
      { forInference: true },
    ),
    { ok: false, reason: "too long", length: full.ids.length },
  );
});

Deno.test("tokenizeExample() drops too-long examples without a truncate_field and too-short ones", () => {
  const rec = { sentence: "Profit rose .", label: "positive" };
  const t = validateTemplate(SENTIMENT, "c");
  const n = ok(tokenizeExample(t, rec, tok)).ids.length;
  assertEquals(
    ok(tokenizeExample(validateTemplate({ ...SENTIMENT, max_seq_length: n }, "c"), rec, tok)).ids
      .length,
    n,
  );
  assertEquals(
    tokenizeExample(validateTemplate({ ...SENTIMENT, max_seq_length: n - 1 }, "c"), rec, tok),
    { ok: false, reason: "too long", length: n },
  );
  assertEquals(
    ok(tokenizeExample(validateTemplate({ ...SENTIMENT, min_seq_length: n }, "c"), rec, tok)).ids
      .length,
    n,
  );
  assertEquals(
    tokenizeExample(validateTemplate({ ...SENTIMENT, min_seq_length: n + 1 }, "c"), rec, tok),
    { ok: false, reason: "too short", length: n },
  );
});

Deno.test("tokenizeExample() throws naming the task and field when a value is missing or not a string", () => {
  const t: TaskTemplate = validateTemplate(SENTIMENT, "c");
  assertThrows(
    () => tokenizeExample(t, { label: "x" }, tok),
    ServiceError,
    'task "sentiment": field "sentence" must be a string: found nothing',
  );
  assertThrows(
    () => tokenizeExample(t, { sentence: "x" }, tok),
    ServiceError,
    'field "label" must be a string',
  );
  const bad = { sentence: 3 } as unknown as Record<string, string>;
  assertThrows(() => tokenizeExample(t, bad, tok, { forInference: true }), ServiceError, "found 3");
});

Deno.test("validateTemplate() derives prompt_template_fields from the placeholders when absent", () => {
  const { prompt_template_fields: _omit, ...rest } = SENTIMENT;
  const t = validateTemplate(rest, "cfg");
  assertEquals(t.prompt_template_fields, ["sentence", "label"]);
  assertEquals(t.answer_field, "label");
});

Deno.test("sharedPrefixIds(): the virtual tokens and fixed text before the first field, as every prompt starts", () => {
  const t = validateTemplate({
    taskname: "intent_and_slot",
    prompt_template:
      "<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> {utterance}{label}",
    prompt_template_fields: ["utterance", "label"],
    total_virtual_tokens: 10,
    virtual_token_splits: [5, 5],
    answer_field: "label",
  }, "test");
  const V = tok.vocabSize;
  const prefix = sharedPrefixIds(t, tok);
  // The space before {utterance} goes with the field, so it is not part of the prefix.
  assertEquals(prefix, [
    ...[0, 1, 2, 3, 4].map((k) => V + k),
    ...tok.encode(" Predict intent and slot "),
    ...[5, 6, 7, 8, 9].map((k) => V + k),
  ]);
  for (const utterance of ["wake me up at seven", "x"]) {
    const r = tokenizeExample(t, { utterance }, tok, { forInference: true });
    assert(r.ok);
    assertEquals(Array.from(r.example.ids.subarray(0, prefix.length)), prefix);
  }
  // A template that starts with a field shares nothing; BOS is shared when the template adds it.
  const plain = validateTemplate({
    taskname: "p",
    prompt_template: "{q} <|VIRTUAL_PROMPT_0|>{a}",
    prompt_template_fields: ["q", "a"],
    total_virtual_tokens: 1,
    virtual_token_splits: [1],
  }, "test");
  assertEquals(sharedPrefixIds(plain, tok), []);
  assertEquals(sharedPrefixIds({ ...plain, add_bos: true }, tok), [tok.bosId]);
});
