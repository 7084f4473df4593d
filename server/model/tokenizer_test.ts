import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { byteToUnicode } from "./byte_level.ts";
import {
  checkTokenizerMatchesModel,
  loadTokenizer,
  type Tokenizer,
  tokenizerFromFiles,
  tokenizerFromJson,
} from "./tokenizer.ts";

const MODEL_DIR = new URL("../../models/tiny-gpt2", import.meta.url).pathname;
const FIXTURES = new URL("../../test/fixtures/tokenizer/", import.meta.url).pathname;
const SPLITS = new URL("../../data/splits/", import.meta.url).pathname;

const gpt2 = await loadTokenizer(MODEL_DIR);

/** A toy vocabulary: the 256 byte tokens, a few merges, and <|endoftext|>. */
function toyVocab(extra: string[]): Record<string, number> {
  const v: Record<string, number> = {};
  for (const t of [...byteToUnicode(), ...extra, "<|endoftext|>"]) v[t] = Object.keys(v).length;
  return v;
}

Deno.test("encode() reproduces the reference ids of the golden sequences", async () => {
  const golden = JSON.parse(await Deno.readTextFile(FIXTURES + "golden_ids.json"));
  for (const s of golden.sequences as { name: string; text: string; ids: number[] }[]) {
    assertEquals(gpt2.encode(s.text), s.ids, s.name);
    assertEquals(gpt2.decode(s.ids), s.text, s.name);
  }
});

Deno.test("encode() reproduces PEFT's input ids of the reference test sentences", async () => {
  const ref = JSON.parse(await Deno.readTextFile(FIXTURES + "reference_outputs.json"));
  assertEquals(ref.length, 8);
  for (const r of ref as { sentence: string; input_ids: number[] }[]) {
    // PEFT's template was ` {sentence} sentiment: {label}`; the prompt part keeps the leading space.
    assertEquals(gpt2.encode(` ${r.sentence} sentiment:`), r.input_ids, r.sentence);
  }
});

Deno.test("encode() reproduces the GPT-2 ids of every sentiment_train prompt and answer", async () => {
  const tokens = (await Deno.readTextFile(FIXTURES + "sentiment_train_tokens.jsonl"))
    .trim().split("\n").map((l) => JSON.parse(l) as { prompt_ids: number[]; answer_ids: number[] });
  const records = (await Deno.readTextFile(SPLITS + "sentiment_train.jsonl"))
    .trim().split("\n").map((l) => JSON.parse(l) as { sentence: string; label: string });
  assertEquals(tokens.length, 1811);
  assertEquals(records.length, tokens.length);
  for (let i = 0; i < records.length; i++) {
    const { sentence, label } = records[i];
    assertEquals(gpt2.encode(` ${sentence} sentiment:`), tokens[i].prompt_ids, `line ${i + 1}`);
    assertEquals([...gpt2.encode(` ${label}`), gpt2.eosId], tokens[i].answer_ids, `line ${i + 1}`);
  }
});

Deno.test("encode() splits contractions, digits, punctuation and whitespace runs as GPT-2 does", () => {
  // The pre-tokeniser decides these: "\s+(?!\S)" leaves the last space to the next word, so
  // "\n\n" before a letter is two tokens but one ("ĊĊ", id 628) at the end.
  const cases: [string, string[]][] = [
    ["I'm here", ["I", "'m", "Ġhere"]],
    ["hello  world", ["hello", "Ġ", "Ġworld"]],
    ["a\n\nb", ["a", "Ċ", "Ċ", "b"]],
    ["a\n\n", ["a", "ĊĊ"]],
    ["x 42!!", ["x", "Ġ42", "!!"]],
  ];
  for (const [text, toks] of cases) {
    assertEquals(gpt2.encode(text), toks.map((t) => gpt2.tokenToId(t)), text);
  }
});

Deno.test("encode() and decode() round-trip multi-byte and unusual text", () => {
  const texts = [
    "Café déjà vu — “quotes” 😀 日本語 Ελληνικά",
    "\t tabs\r\nand CRLF\u00a0nbsp",
    "a".repeat(5000),
    "",
    "<|endoftext|>",
  ];
  for (const t of texts) assertEquals(gpt2.decode(gpt2.encode(t)), t);
});

Deno.test("encode() treats a literal <|endoftext|> in text as plain characters", () => {
  const ids = gpt2.encode("a<|endoftext|>b");
  assert(!ids.includes(gpt2.eosId), `EOS must not be injected by text: ${ids}`);
});

Deno.test("encode() of a long word without merges is fast (no quadratic blow-up)", () => {
  const start = performance.now();
  const ids = gpt2.encode("z".repeat(100_000) + "q".repeat(1));
  assert(ids.length > 0 && ids.length < 100_001);
  assertEquals(gpt2.decode(ids), "z".repeat(100_000) + "q");
  assert(performance.now() - start < 5000, `took ${performance.now() - start} ms`);
});

Deno.test("decode() rejects ids outside the vocabulary, naming the id and position", () => {
  assertThrows(() => gpt2.decode([464, 50257]), RangeError, "id 50257 at position 1");
  assertThrows(() => gpt2.decode([-1]), RangeError, "id -1 at position 0");
  assertThrows(() => gpt2.decode([1.5]), RangeError, "id 1.5");
});

Deno.test("decode() of a cut multi-byte character gives U+FFFD", () => {
  const ids = gpt2.encode("😀");
  assert(ids.length > 1);
  assertEquals(gpt2.decode(ids.slice(0, 1)), "\ufffd");
});

Deno.test("loadTokenizer() reports vocabSize 50257 and <|endoftext|> as both EOS and BOS", () => {
  assertEquals(gpt2.vocabSize, 50257);
  assertEquals(gpt2.eosId, 50256);
  assertEquals(gpt2.bosId, 50256);
  assertEquals(gpt2.tokenToId("Ġpositive"), 3967);
  assertEquals(gpt2.tokenToId("no such token"), undefined);
});

Deno.test("merges apply by rank, lowest first, leftmost on ties", () => {
  const vocab = toyVocab(["ab", "bc", "abc", "aa", "aaa"]);
  const tok = tokenizerFromFiles(
    JSON.stringify(vocab),
    "#version: 0.2\nb c\na b\nab c\na a\naa a\n",
  );
  // "b c" outranks "a b", and "ab c" then cannot form.
  assertEquals(tok.encode("abc"), [vocab["a"], vocab["bc"]]);
  assertEquals(tok.encode("ab"), [vocab["ab"]]);
  // "aaaa": a a merges pairwise from the left: aa aa (no "aa aa" merge).
  assertEquals(tok.encode("aaaa"), [vocab["aa"], vocab["aa"]]);
  assertEquals(tok.encode("aaa"), [vocab["aaa"]]);
});

Deno.test("tokenizer.json (HF fast format) loads with string or pair merges", async () => {
  const vocab = toyVocab(["ab", "bc"]);
  delete vocab["<|endoftext|>"];
  const base = {
    model: { type: "BPE", vocab, merges: ["b c", ["a", "b"]] },
    added_tokens: [{ id: 258, content: "<|endoftext|>", special: true }],
  };
  const tok = tokenizerFromJson(JSON.stringify(base));
  assertEquals(tok.encode("abc"), [vocab["a"], vocab["bc"]]);
  assertEquals(tok.eosId, 258);
  assertEquals(tok.vocabSize, 259);
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(base));
    // The end of sequence comes from the checkpoint's config (hf_tokenizer.ts).
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ eos_token_id: 258 }));
    // vocab.json next to it is ignored: tokenizer.json wins.
    await Deno.writeTextFile(`${dir}/vocab.json`, "not json");
    const loaded = await loadTokenizer(dir);
    assertEquals(loaded.encode("ab"), [vocab["ab"]]);
    assertEquals(loaded.file, `${dir}/tokenizer.json`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizer.json with a non-BPE model or bad merges is rejected", () => {
  const vocab = toyVocab([]);
  assertThrows(
    () => tokenizerFromJson(JSON.stringify({ model: { type: "WordPiece", vocab } }), "t.json"),
    RangeError,
    't.json: model.type must be "BPE": found "WordPiece"',
  );
  assertThrows(
    () =>
      tokenizerFromJson(JSON.stringify({ model: { type: "BPE", vocab, merges: ["a b c"] } }), "t"),
    SyntaxError,
    "t: model.merges[0]",
  );
  assertThrows(
    () => tokenizerFromJson("[1]", "t.json"),
    TypeError,
    "t.json: expected a JSON object",
  );
});

Deno.test("malformed vocab.json errors name the file and line", () => {
  assertThrows(
    () => tokenizerFromFiles('{\n"a": 0,\n"b": 1,,\n}', "", "v.json"),
    SyntaxError,
    "v.json:3: not valid JSON",
  );
  assertThrows(
    () => tokenizerFromFiles('{\n"a": 0,\n"b": "one"\n}', "", "v.json"),
    RangeError,
    'v.json:3: id of token "b" must be a non-negative integer: found "one"',
  );
  assertThrows(
    () => tokenizerFromFiles('{\n"a": 0,\n"b": 0\n}', "", "v.json"),
    RangeError,
    'v.json:3: tokens "a" and "b" share id 0',
  );
  assertThrows(() => tokenizerFromFiles("[]", "", "v.json"), TypeError, "v.json: the file must be");
  const noEos = toyVocab([]);
  delete noEos["<|endoftext|>"];
  assertThrows(
    () => tokenizerFromFiles(JSON.stringify(noEos), "", "v.json"),
    RangeError,
    'v.json: the vocabulary has no "<|endoftext|>" token',
  );
  const noByte = toyVocab([]);
  delete noByte["Ġ"];
  assertThrows(
    () => tokenizerFromFiles(JSON.stringify(noByte), "", "v.json"),
    RangeError,
    'lacks the single-byte token "Ġ"',
  );
});

Deno.test("malformed merges.txt errors name the file and line", () => {
  const vocab = JSON.stringify(toyVocab(["ab"]));
  assertThrows(
    () => tokenizerFromFiles(vocab, "#version: 0.2\na b\nab\n", "v.json", "m.txt"),
    SyntaxError,
    'm.txt:3: expected two tokens separated by one space: found "ab"',
  );
  assertThrows(
    () => tokenizerFromFiles(vocab, "#version: 0.2\na b\nb c\n", "v.json", "m.txt"),
    RangeError,
    'm.txt:3: merge "b c" uses "bc", which is not in the vocabulary',
  );
  assertThrows(
    () => tokenizerFromFiles(vocab, "a  b\n", "v.json", "m.txt"),
    SyntaxError,
    "m.txt:1:",
  );
});

Deno.test("loadTokenizer() names the missing file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify(toyVocab([])));
    const err = await loadTokenizer(dir).then(() => undefined, (e: Error) => e);
    assert(err instanceof Deno.errors.NotFound);
    assert(err.message.startsWith(`${dir}/merges.txt: not found`), err.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkTokenizerMatchesModel() throws naming both sizes and the files", () => {
  checkTokenizerMatchesModel(gpt2, 50257, MODEL_DIR);
  assertThrows(
    () => checkTokenizerMatchesModel(gpt2, 50304, "/m"),
    RangeError,
    `/m/config.json: vocab_size is 50304 but the tokenizer ${MODEL_DIR}/vocab.json has 50257 tokens`,
  );
});

Deno.test("encode() of 2,000 SQuAD-sized contexts takes well under a few seconds", async () => {
  const lines = (await Deno.readTextFile(SPLITS + "squad_val.jsonl")).trim().split("\n");
  const contexts = lines.map((l) => (JSON.parse(l) as { context: string }).context);
  const fresh: Tokenizer = await loadTokenizer(MODEL_DIR);
  const start = performance.now();
  let n = 0;
  for (let i = 0; i < 2000; i++) n += fresh.encode(contexts[i % contexts.length] + ` ${i}`).length;
  const ms = performance.now() - start;
  assert(n > 100_000);
  assert(ms < 4000, `2000 contexts took ${ms.toFixed(0)} ms`);
});
