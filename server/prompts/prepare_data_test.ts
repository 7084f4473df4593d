import { assert, assertEquals, assertRejects, assertThrows } from "../../test/assert.ts";
import { compareSplits, prepareSplits, RAW_FILES, writeSplits } from "./prepare_data.ts";
import { intentAndSlotSplits, parseSquad, sentimentSplits, squadSplits } from "./raw_sources.ts";
import { validateTemplate } from "./template.ts";
import * as YAML from "yaml";
import { bucketOf, splitTitles, toJsonl } from "./split_rule.ts";

const RAW = new URL("../../data/raw", import.meta.url).pathname;
const SPLITS = new URL("../../data/splits", import.meta.url).pathname;
const EXAMPLES = new URL("../../examples", import.meta.url).pathname;
const enc = new TextEncoder();

Deno.test("prepareSplits() reproduces every shipped split file byte for byte", async () => {
  const files = await prepareSplits(RAW);
  assertEquals(files.map((f) => [f.name, f.records]), [
    ["sentiment_train.jsonl", 1811],
    ["sentiment_val.jsonl", 227],
    ["sentiment_test.jsonl", 226],
    ["intent_and_slot_train.jsonl", 8817],
    ["intent_and_slot_val.jsonl", 1131],
    ["intent_and_slot_test.jsonl", 1085],
    ["squad_train.jsonl", 10192],
    ["squad_val.jsonl", 847],
    ["squad_test.jsonl", 834],
  ]);
  const out = await Deno.makeTempDir();
  try {
    await writeSplits(files, `${out}/nested/dir`);
    for (const f of files) {
      const made = await Deno.readFile(`${out}/nested/dir/${f.name}`);
      const shipped = await Deno.readFile(`${SPLITS}/${f.name}`);
      assert(
        made.length === shipped.length && made.every((b, i) => b === shipped[i]),
        `${f.name} differs from data/splits`,
      );
    }
    assertEquals(await compareSplits(files, `${out}/nested/dir`), []);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("compareSplits() names the file and first differing line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const files = [
      { name: "a.jsonl", records: 2, text: '{"x":"1"}\n{"x":"2"}\n' },
      { name: "b.jsonl", records: 0, text: "" },
    ];
    await Deno.writeTextFile(`${dir}/a.jsonl`, '{"x":"1"}\n{"x":"3"}\n');
    assertEquals(await compareSplits(files, dir), [
      `${dir}/a.jsonl:2: differs (have 2 lines, prepared 2): have "{\\"x\\":\\"3\\"}", prepared "{\\"x\\":\\"2\\"}"`,
      `${dir}/b.jsonl: missing`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bucketOf() uses byte 0 of sha256 mod 10: 0 test, 1 val, else train", () => {
  // Python: hashlib.sha256(s.encode()).digest()[0] % 10
  assertEquals(bucketOf("wake me up at seven am tomorrow"), "test"); // 0
  assertEquals(bucketOf("y"), "val"); // 1
  assertEquals(bucketOf("abc"), "train"); // 6
  assertEquals(bucketOf("a"), "train"); // 2
});

Deno.test("splitTitles() ranks titles by hex sha256: 3 test, 3 val, the rest train", () => {
  // Python order by hexdigest: French_and_Indian_War, Private_school, Prime_number,
  // 1973_oil_crisis, Amazon_rainforest, Warsaw, Normans.
  const s = splitTitles([
    "Normans",
    "Warsaw",
    "Private_school",
    "Prime_number",
    "1973_oil_crisis",
    "French_and_Indian_War",
    "Amazon_rainforest",
  ]);
  assertEquals(Object.fromEntries(s), {
    Normans: "train",
    Warsaw: "val",
    Private_school: "test",
    Prime_number: "test",
    "1973_oil_crisis": "val",
    French_and_Indian_War: "test",
    Amazon_rainforest: "val",
  });
});

Deno.test("toJsonl() writes what Python's json.dumps(ensure_ascii=False, compact) writes", () => {
  // Python: json.dumps({'a': 'q"\\ \n\t\x01\x7f é \u2028 😀'}, ensure_ascii=False, separators=(',', ':'))
  const line = toJsonl([{ a: 'q"\\ \n\t\x01\x7f é \u2028 😀' }]);
  assertEquals(line, '{"a":"q\\"\\\\ \\n\\t\\u0001\x7f é \u2028 😀"}\n');
  assertEquals(toJsonl([]), "");
});

Deno.test("sentimentSplits() decodes Latin-1 (not windows-1252) and keeps file order", () => {
  const bytes = new Uint8Array([
    ...enc.encode("Caf"),
    0xe9,
    0x96,
    ...enc.encode(" up@positive\n"),
    ...enc.encode("a@b@neutral\r\n"),
    ...enc.encode("\n"),
    ...enc.encode("y@negative"),
  ]);
  const s = sentimentSplits(bytes, "f.txt");
  assertEquals(s.val, [{ taskname: "sentiment", sentence: "y", label: "negative" }]);
  // 0x96 is U+0096 in ISO-8859-1 ("\u2013" in windows-1252).
  const all = [...s.train, ...s.test].map((r) => r.sentence).sort();
  assertEquals(all, ["Caf\u00e9\u0096 up", "a@b"]);
});

Deno.test("sentimentSplits() names the file and line of a malformed line", () => {
  assertThrows(
    () => sentimentSplits(enc.encode("ok@neutral\nno label\n"), "f.txt"),
    SyntaxError,
    'f.txt:2: expected "sentence@label": found no "@"',
  );
  assertThrows(
    () => sentimentSplits(enc.encode("x@good\n"), "f.txt"),
    RangeError,
    'f.txt:1: label must be one of positive, neutral, negative: found "good"',
  );
});

const CSV_HEADER =
  "fold;answerid;scenario;intent;answer_annotation;answer_from_anno;answer_from_user";

Deno.test("intentAndSlotSplits() lower-cases, keeps the first of duplicates and formats slots", () => {
  const csv = [
    CSV_HEADER,
    "1;1;alarm;set;wake me up at [time : Seven AM] [date : tomorrow];wake me up at Seven AM tomorrow;x",
    "2;2;alarm;set;WAKE me up at seven am tomorrow;WAKE me up at seven am tomorrow;dup, dropped",
    '3;3;audio;volume_up;"say ""louder"" [x : a;b]";"say ""louder"" a;b";y',
    "",
  ].join("\n");
  const s = intentAndSlotSplits(csv, "n.csv");
  const all = [...s.train, ...s.val, ...s.test];
  assertEquals(all.length, 2);
  assertEquals(s.test, [{
    taskname: "intent_and_slot",
    utterance: "wake me up at seven am tomorrow",
    label: "\nIntent: alarm_set\nSlots: time(seven am), date(tomorrow)",
  }]);
  assertEquals(all.find((r) => r.utterance.startsWith("say")), {
    taskname: "intent_and_slot",
    utterance: 'say "louder" a;b',
    label: "\nIntent: audio_volume_up\nSlots: x(a;b)",
  });
  const none = intentAndSlotSplits(
    `${CSV_HEADER}\n1;1;alarm;query;alarm settings;alarm settings;z`,
    "n",
  );
  assertEquals(
    [...none.train, ...none.val, ...none.test][0].label,
    "\nIntent: alarm_query\nSlots: None",
  );
});

Deno.test("intentAndSlotSplits() names the file and line of a malformed CSV", () => {
  assertThrows(
    () => intentAndSlotSplits("fold;scenario;intent\n", "n.csv"),
    RangeError,
    'n.csv:1: header lacks column "answer_annotation"',
  );
  assertThrows(
    () => intentAndSlotSplits(`${CSV_HEADER}\n1;2;3\n`, "n.csv"),
    RangeError,
    "n.csv:2: expected 7 columns as in the header: found 3",
  );
  assertThrows(
    () => intentAndSlotSplits(`${CSV_HEADER}\n1;"open\n`, "n.csv"),
    SyntaxError,
    "n.csv:2: unterminated quoted field",
  );
  assertThrows(
    () => intentAndSlotSplits(`${CSV_HEADER}\n1;"a"b;3\n`, "n.csv"),
    SyntaxError,
    "n.csv:2: text after a closing quote",
  );
});

Deno.test("squadSplits() takes the first answer, marks unanswerable and keeps article order", () => {
  const titles = [
    "Normans",
    "Warsaw",
    "Private_school",
    "Prime_number",
    "1973_oil_crisis",
    "French_and_Indian_War",
    "Amazon_rainforest",
  ];
  const data = {
    data: titles.map((title, i) => ({
      title,
      paragraphs: [{
        context: `ctx ${i}`,
        qas: [
          {
            id: `q${i}a`,
            question: "Q?",
            answers: [{ text: "first", answer_start: 0 }, { text: "second" }],
            is_impossible: false,
          },
          { id: `q${i}b`, question: "Q2?", answers: [], is_impossible: true },
        ],
      }],
    })),
  };
  const s = squadSplits(JSON.stringify(data), "d.json");
  assertEquals(s.train.map((r) => [r.context, r.question]), [["ctx 0", "Q?"], ["ctx 0", "Q2?"]]);
  assertEquals(s.val.map((r) => r.context), [
    "ctx 1",
    "ctx 1",
    "ctx 4",
    "ctx 4",
    "ctx 6",
    "ctx 6",
  ]);
  assertEquals(s.test[0], {
    taskname: "squad",
    context: "ctx 2",
    question: "Q?",
    answer: "first",
  });
  assertEquals(s.test[1].answer, "unanswerable");
  // NeMo's dataset asserts every key but taskname is a template field: no id, no title.
  assertEquals(Object.keys(s.test[0]), ["taskname", "context", "question", "answer"]);
});

Deno.test("parseSquad() keeps every gold answer of every question, in file order", () => {
  const data = {
    data: [{
      title: "T",
      paragraphs: [{
        context: "c",
        qas: [
          { id: "1", question: "q1", answers: [{ text: "a" }, { text: "b" }, { text: "a" }] },
          { id: "2", question: "q2", answers: [] },
        ],
      }],
    }],
  };
  assertEquals(parseSquad(JSON.stringify(data), "d.json"), {
    titles: ["T"],
    questions: [
      { id: "1", title: "T", context: "c", question: "q1", answers: ["a", "b", "a"] },
      { id: "2", title: "T", context: "c", question: "q2", answers: [] },
    ],
  });
  data.data[0].paragraphs[0].qas[0].answers[2] = { text: 7 } as unknown as { text: string };
  assertThrows(
    () => parseSquad(JSON.stringify(data), "d.json"),
    TypeError,
    "d.json: data[0].paragraphs[0].qas[0].answers[2].text must be a string",
  );
});

/** Each task's template fields, from the example configs (the templates a user trains with). */
async function exampleTemplateFields(): Promise<Map<string, string[]>> {
  const fields = new Map<string, string[]>();
  for (const entry of Deno.readDirSync(EXAMPLES)) {
    if (!entry.name.endsWith(".yaml")) continue;
    const doc = YAML.parse(await Deno.readTextFile(`${EXAMPLES}/${entry.name}`)) as {
      model: { task_templates: unknown[] };
    };
    doc.model.task_templates.forEach((raw, i) => {
      const t = validateTemplate(raw, `${entry.name}: model.task_templates[${i}]`);
      const have = fields.get(t.taskname);
      assert(
        have === undefined || JSON.stringify(have) === JSON.stringify(t.prompt_template_fields),
        `${entry.name}: task "${t.taskname}" has other fields than in another example`,
      );
      fields.set(t.taskname, t.prompt_template_fields);
    });
  }
  return fields;
}

Deno.test("every prepared record carries exactly taskname and its template's fields (NeMo's dataset accepts no other key)", async () => {
  const fields = await exampleTemplateFields();
  assertEquals([...fields.keys()].sort(), ["intent_and_slot", "sentiment", "squad"]);
  for (const f of await prepareSplits(RAW)) {
    const lines = f.text.split("\n").filter((l) => l !== "");
    assertEquals(lines.length, f.records);
    lines.forEach((line, i) => {
      const record = JSON.parse(line) as Record<string, unknown>;
      const want = fields.get(record.taskname as string);
      assert(want !== undefined, `${f.name}:${i + 1}: unknown taskname ${record.taskname}`);
      const keys = Object.keys(record).filter((k) => k !== "taskname").sort();
      assertEquals(keys, [...want].sort(), `${f.name}:${i + 1}: keys`);
    });
  }
});

Deno.test("squadSplits() names the file and path of a malformed SQuAD file", () => {
  assertThrows(() => squadSplits("{", "d.json"), SyntaxError, "d.json: not valid JSON");
  assertThrows(() => squadSplits("{}", "d.json"), TypeError, 'd.json: "data" must be an array');
  const bad = {
    data: [{
      title: "T",
      paragraphs: [{ context: "c", qas: [{ id: "1", question: 5, answers: [] }] }],
    }],
  };
  assertThrows(
    () => squadSplits(JSON.stringify(bad), "d.json"),
    TypeError,
    "d.json: data[0].paragraphs[0].qas[0].question must be a string",
  );
  const dup = { data: [{ title: "T", paragraphs: [] }, { title: "T", paragraphs: [] }] };
  assertThrows(
    () => squadSplits(JSON.stringify(dup), "d.json"),
    RangeError,
    "titles must be unique",
  );
});

Deno.test("prepareSplits() names a missing raw file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(
      prepareSplits(dir, ["squad"]),
      Deno.errors.NotFound,
      `${dir}/${RAW_FILES.squad}: raw file of task "squad" not found`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
