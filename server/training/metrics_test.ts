import { assert, assertAlmostEquals, assertEquals, assertThrows } from "../../test/assert.ts";
import {
  classificationAccuracy,
  cleanAnswer,
  defaultMetricKind,
  exactMatch,
  type IntentSlots,
  matchingSlots,
  MetricAccumulator,
  normalizeSquadAnswer,
  parseIntentSlots,
  squadExact,
  squadF1,
} from "./metrics.ts";

const FIXTURES = new URL("../../test/fixtures/metrics/", import.meta.url);

interface SquadCase {
  id: string;
  pred: string;
  gold: string | string[];
  normalized_pred: string;
  exact: number;
  f1: number;
}

/** Cases scored by the official evaluate-v2.0.py (see test/fixtures/metrics/README.md). */
const squadFixture: { cases: SquadCase[]; normalize: [string, string][] } = JSON.parse(
  await Deno.readTextFile(new URL("squad_cases.json", FIXTURES)),
);
const squadCases = squadFixture.cases;
/** The official scorer's own output on the same cases (0-100 scale). */
const squadEval: { exact: number; f1: number; total: number } = JSON.parse(
  await Deno.readTextFile(new URL("squad_eval.json", FIXTURES)),
);
const intentRecords: { utterance: string; label: string }[] = (await Deno.readTextFile(
  new URL("intent_and_slot_val_head.jsonl", FIXTURES),
)).trim().split("\n").map((l) => JSON.parse(l));

function render(p: IntentSlots): string {
  const slots = p.slots.length === 0
    ? "None"
    : p.slots.map((s) => `${s.type}(${s.value})`).join(", ");
  return `\nIntent: ${p.intent}\nSlots: ${slots}`;
}

Deno.test("exactMatch() ignores surrounding whitespace and trailing <|endoftext|> markers", () => {
  assert(exactMatch(" positive<|endoftext|>", "positive"));
  assert(exactMatch("positive <|endoftext|>\n<|endoftext|>", " positive\n"));
  assert(exactMatch("\nIntent: x\nSlots: None", "Intent: x\nSlots: None<|endoftext|>"));
  assert(!exactMatch("Positive", "positive"), "case matters");
  assert(!exactMatch("positive.", "positive"));
  assert(!exactMatch("<|endoftext|>positive", "positive"), "only a trailing marker is cut");
  assertEquals(cleanAnswer("  a b<|endoftext|> "), "a b");
});

Deno.test("exactMatch() accepts any of several gold answers", () => {
  assert(exactMatch("Broncos", ["Denver Broncos", "Broncos"]));
  assert(!exactMatch("Broncos", []));
});

Deno.test("classificationAccuracy() is the fraction of exact matches", () => {
  assertEquals(
    classificationAccuracy(["positive", "neutral<|endoftext|>", "negative"], [
      "positive",
      "neutral",
      "positive",
    ]),
    2 / 3,
  );
  assertEquals(classificationAccuracy([], []), 0);
  assertThrows(
    () => classificationAccuracy(["a"], []),
    RangeError,
    "preds and golds differ in length: 1 != 0",
  );
});

Deno.test("defaultMetricKind() picks squad for squad*, intent_slot for intent*, else exact_match", () => {
  assertEquals(defaultMetricKind("squad"), "squad");
  assertEquals(defaultMetricKind("squad_v2"), "squad");
  assertEquals(defaultMetricKind("intent_and_slot"), "intent_slot");
  assertEquals(defaultMetricKind("sentiment"), "exact_match");
  assertEquals(defaultMetricKind("my_squad"), "exact_match");
});

Deno.test("normalizeSquadAnswer() matches the official scorer's normalize_answer on every case", () => {
  for (const c of squadCases) {
    const pred = cleanAnswer(c.pred);
    // The fixture's prediction had our "unanswerable" mapped to "" before normalising.
    const expected = c.normalized_pred;
    const got = normalizeSquadAnswer(pred);
    if (expected === "" && got === "unanswerable") continue;
    assertEquals(got, expected, `${c.id} ${JSON.stringify(c.pred)}`);
  }
});

Deno.test("normalizeSquadAnswer() matches normalize_answer on random strings of awkward characters", () => {
  assertEquals(squadFixture.normalize.length, 300);
  for (const [text, expected] of squadFixture.normalize) {
    assertEquals(normalizeSquadAnswer(text), expected, JSON.stringify(text));
  }
});

Deno.test("normalizeSquadAnswer() follows Python's Unicode word boundaries and whitespace", () => {
  assertEquals(normalizeSquadAnswer("éa"), "éa", "a letter before 'a' joins it to the word");
  assertEquals(normalizeSquadAnswer("a\u00e9 the_end"), "aé theend");
  assertEquals(normalizeSquadAnswer("foo\u00a0bar\x1cbaz\x85qux"), "foo bar baz qux");
  assertEquals(normalizeSquadAnswer("foo\ufeffbar"), "foo\ufeffbar", "BOM is not whitespace");
  assertEquals(normalizeSquadAnswer("\u201cThe End\u201d"), "\u201c end\u201d");
  assertEquals(normalizeSquadAnswer("A an THE"), "");
});

Deno.test("squadExact() and squadF1() reproduce the official scorer question by question", () => {
  assert(squadCases.length >= 40);
  for (const c of squadCases) {
    const what = `${c.id} pred=${JSON.stringify(c.pred)} gold=${JSON.stringify(c.gold)}`;
    assertEquals(squadExact(c.pred, c.gold), c.exact, `${what} exact`);
    assertAlmostEquals(squadF1(c.pred, c.gold), c.f1, 1e-12, `${what} f1`);
  }
});

Deno.test("squad metrics treat 'unanswerable' as the no-answer on both sides", () => {
  assertEquals(squadExact("Unanswerable.", "unanswerable"), 1);
  assertEquals(squadF1("", "unanswerable"), 1);
  assertEquals(squadF1("unanswerable foo", "unanswerable"), 0, "any other answer scores 0");
  assertEquals(squadF1("unanswerable", "Denver Broncos"), 0);
  assertEquals(squadF1("", ["the", "a"]), 1, "golds empty after normalising are the no-answer");
});

Deno.test("MetricAccumulator reproduces the official scorer's aggregate SQuAD EM and F1", () => {
  const acc = new MetricAccumulator({ squad: { answerField: "answer" } });
  for (const c of squadCases) acc.add("squad", c.pred, { answer: c.gold, id: c.id });
  const r = acc.result().squad;
  assertEquals(r.count, squadEval.total);
  assertAlmostEquals(r.squad_em * 100, squadEval.exact, 1e-9);
  assertAlmostEquals(r.squad_f1 * 100, squadEval.f1, 1e-9);
  const plain = squadCases.filter((c) => exactMatch(c.pred, c.gold)).length;
  assertEquals(r.exact_match, plain / squadCases.length);
  assertEquals(Object.keys(r).sort(), ["count", "exact_match", "squad_em", "squad_f1"]);
});

Deno.test("parseIntentSlots() reads every real label back into the same text", () => {
  assert(intentRecords.length === 40);
  for (const r of intentRecords) {
    const p = parseIntentSlots(r.label);
    assert(p.intent !== null, r.label);
    assertEquals(render(p), r.label);
  }
  assertEquals(
    parseIntentSlots("\nIntent: alarm_set\nSlots: time(seven am), date(tomorrow)"),
    {
      intent: "alarm_set",
      slots: [{ type: "time", value: "seven am" }, { type: "date", value: "tomorrow" }],
    },
  );
});

Deno.test("parseIntentSlots() reads what it can from malformed or truncated text", () => {
  assertEquals(parseIntentSlots(""), { intent: null, slots: [] });
  assertEquals(parseIntentSlots("Intent:\nSlots:"), { intent: null, slots: [] });
  assertEquals(parseIntentSlots("garbage ( ) ,,"), { intent: null, slots: [] });
  assertEquals(parseIntentSlots("\nIntent: alarm_set\nSlots: time(seven am), date(tom"), {
    intent: "alarm_set",
    slots: [{ type: "time", value: "seven am" }, { type: "date", value: "tom" }],
  });
  assertEquals(parseIntentSlots("\nIntent: alarm_set\nSlots: time(seven am), date("), {
    intent: "alarm_set",
    slots: [{ type: "time", value: "seven am" }],
  });
  assertEquals(parseIntentSlots("Intent:  play_music  Slots: artist( the  beatles )"), {
    intent: "play_music",
    slots: [{ type: "artist", value: "the beatles" }],
  });
  assertEquals(
    parseIntentSlots("\nIntent: x\nSlots: None<|endoftext|>\nIntent: y\nSlots: a(b)"),
    { intent: "x", slots: [] },
    "only the first label counts",
  );
  assertEquals(parseIntentSlots("\nSlots: date(today)"), {
    intent: null,
    slots: [{ type: "date", value: "today" }],
  });
});

Deno.test("parseIntentSlots() never throws on any prefix of a label", () => {
  for (const r of intentRecords.slice(0, 10)) {
    for (let n = 0; n <= r.label.length; n++) {
      const p = parseIntentSlots(r.label.slice(0, n));
      assert(p.intent === null || r.label.includes(p.intent));
    }
  }
});

Deno.test("matchingSlots() counts shared (type, value) pairs as a multiset", () => {
  const t = (type: string, value: string) => ({ type, value });
  assertEquals(
    matchingSlots([t("date", "today"), t("date", "today"), t("time", "x")], [
      t("date", "today"),
      t("time", "y"),
    ]),
    1,
  );
  assertEquals(matchingSlots([t("date", "today")], [t("time", "today")]), 0);
});

Deno.test("MetricAccumulator micro-averages slot precision and recall over the dataset", () => {
  const acc = new MetricAccumulator({ intent_and_slot: { answerField: "label" } });
  const gold = (intent: string, slots: string) => ({
    label: `\nIntent: ${intent}\nSlots: ${slots}`,
  });
  // 1) intent right, 2 gold slots, 1 of 2 predicted right.
  acc.add(
    "intent_and_slot",
    "\nIntent: alarm_set\nSlots: time(seven am), date(today)<|endoftext|>",
    gold("alarm_set", "time(seven am), date(tomorrow)"),
  );
  // 2) exact label.
  acc.add("intent_and_slot", "\nIntent: alarm_query\nSlots: None", gold("alarm_query", "None"));
  // 3) intent wrong, duplicate gold slot predicted three times: 2 right, 1 extra.
  acc.add(
    "intent_and_slot",
    "Intent: music\nSlots: date(today), date(today), date(today)",
    gold("calendar_query", "date(today), date(today), time(five)"),
  );
  // 4) garbage prediction.
  acc.add("intent_and_slot", "Int", gold("weather_query", "place_name(paris)"));
  const r = acc.result().intent_and_slot;
  // tp = 1 + 0 + 2 + 0 = 3; predicted = 2 + 0 + 3 + 0 = 5; gold = 2 + 0 + 3 + 1 = 6.
  assertEquals(r.count, 4);
  assertEquals(r.exact_match, 1 / 4);
  assertEquals(r.intent_accuracy, 2 / 4);
  assertAlmostEquals(r.slot_precision, 3 / 5, 1e-12);
  assertAlmostEquals(r.slot_recall, 3 / 6, 1e-12);
  assertAlmostEquals(r.slot_f1, (2 * 0.6 * 0.5) / 1.1, 1e-12);
});

Deno.test("MetricAccumulator scores slots perfect when none are expected or predicted", () => {
  const acc = new MetricAccumulator({
    none: { answerField: "label", metric: "intent_slot" },
    missed: { answerField: "label", metric: "intent_slot" },
  });
  acc.add("none", "\nIntent: a\nSlots: None", { label: "\nIntent: a\nSlots: None" });
  acc.add("missed", "\nIntent: a\nSlots: None", { label: "\nIntent: a\nSlots: date(x)" });
  const r = acc.result();
  assertEquals([r.none.slot_precision, r.none.slot_recall, r.none.slot_f1], [1, 1, 1]);
  assertEquals([r.missed.slot_precision, r.missed.slot_recall, r.missed.slot_f1], [0, 0, 0]);
  assertEquals(r.missed.intent_accuracy, 1);
});

Deno.test("MetricAccumulator keeps tasks apart and honours a per-task metric setting", () => {
  const acc = new MetricAccumulator({
    sentiment: { answerField: "label" },
    squad: { answerField: "answer", metric: "exact_match" },
    unused: { answerField: "label" },
  });
  acc.add("sentiment", "positive<|endoftext|>", { sentence: "s", label: "positive" });
  acc.add("sentiment", "neutral", { sentence: "s", label: "negative" });
  acc.add("squad", "the October, 1973", { answer: "October 1973" });
  assertEquals(acc.result(), {
    sentiment: { count: 2, exact_match: 0.5 },
    squad: { count: 1, exact_match: 0 },
    unused: { count: 0 },
  });
});

Deno.test("MetricAccumulator rejects bad settings and records, naming the task and field", () => {
  assertThrows(
    () => new MetricAccumulator({ t: { answerField: "" } }),
    TypeError,
    "task 't' as 'answerField' must be a non-empty string",
  );
  assertThrows(
    // @ts-expect-error: an unknown metric kind, as an untyped config could carry
    () => new MetricAccumulator({ t: { answerField: "label", metric: "bleu" } }),
    RangeError,
    `'metric' must be one of exact_match, squad, intent_slot: found "bleu"`,
  );
  const acc = new MetricAccumulator({
    sentiment: { answerField: "label" },
    squad: { answerField: "answer" },
  });
  assertThrows(
    () => acc.add("ner", "x", { label: "x" }),
    RangeError,
    "task 'ner' as it was not configured: known tasks are sentiment, squad",
  );
  assertThrows(
    () => acc.add("sentiment", "x", { sentence: "x" }),
    TypeError,
    "task 'sentiment' as the record's 'label' must be a string: found undefined",
  );
  assertThrows(
    () => acc.add("sentiment", "x", { label: ["x"] }),
    TypeError,
    `'label' must be a string: found ["x"]`,
  );
  assertThrows(
    () => acc.add("squad", "x", { answer: [1] }),
    TypeError,
    "'answer' must be a string or an array of strings: found [1]",
  );
  assertEquals(acc.result().sentiment, { count: 0 }, "a rejected record is not counted");
});
