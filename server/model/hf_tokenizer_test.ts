/**
 * HfTokenizer (a model's tokenizer.json run by @huggingface/tokenizers) against Hugging Face's own
 * Rust tokenizer. Small tokenizer.json files in each family's layout are written here: byte-level
 * BPE as Llama 3, Qwen2 and SmolLM2 ship it, and SentencePiece-style BPE with byte fallback as
 * Llama 2 and TinyLlama do. The expected ids were produced by the Python `tokenizers` package
 * (0.22.2, Rust) from these very files with `encode_special_tokens = True` and
 * `add_special_tokens=False`; when that package can be imported the last tests ask it again, live,
 * on the dataset texts too.
 *
 * GPT-2: a tokenizer.json equivalent to models/tiny-gpt2's vocab.json + merges.txt is compared
 * with our hand-written tokenizer on every string of data/splits/*.jsonl.
 */
import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { runWithInput } from "../../test/support/run_with_input.ts";
import { HfTokenizer, loadHfTokenizer } from "./hf_tokenizer.ts";
import { byteToUnicode } from "./byte_level.ts";
import { gpt2TokenizerJson } from "./testing/gpt2_tokenizer_json.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";
import { StopStringTracker } from "./decoding/stop_strings.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const GPT2_DIR = `${ROOT}models/tiny-gpt2`;
const SPLITS = `${ROOT}data/splits/`;

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Tokenizer files in each family's layout

/** "a b" merges applied in order give the vocabulary's multi-symbol tokens. */
function bpeVocab(base: string[], merges: string[], extra: string[] = []): Json {
  const vocab: Record<string, number> = {};
  for (const t of base) vocab[t] = Object.keys(vocab).length;
  for (const m of merges) {
    const [a, b] = m.split(" ");
    if (vocab[a] === undefined || vocab[b] === undefined) throw new Error(`bad merge ${m}`);
    if (vocab[a + b] === undefined) vocab[a + b] = Object.keys(vocab).length;
  }
  for (const t of extra) vocab[t] = Object.keys(vocab).length;
  return vocab;
}

/** Merges in GPT-2's byte alphabet ("Ġ" is a space, "Ċ" a newline, "Ã ©" is é). */
const BYTE_MERGES = [
  "Ġ t",
  "h e",
  "Ġt he",
  "i n",
  "Ġ a",
  "e r",
  "o n",
  "Ġ s",
  "r e",
  "Ġa n",
  "Ġan d",
  "in g",
  "Ġ w",
  "o r",
  "Ġw or",
  "l d",
  "Ġwor ld",
  "H e",
  "He l",
  "Hel l",
  "Hell o",
  "' s",
  "1 2",
  "Ġ Ġ",
  "Ċ Ċ",
  "c a",
  "ca f",
  "caf Ã",
  "Ã ©",
  "Ġ l",
  "Ġl in",
  "Ġlin e",
  "Ġ 3",
  "e m",
  "o j",
  "oj i",
  // A space then U+FEFF or U+0085 (first bytes EF, C2) merge only where the pre-tokenizer keeps
  // them in one piece, so these tell JavaScript's \s from Unicode White_Space.
  "Ġ ï",
  "Ġ Â",
];

function byteLevelFile(
  preTokenizer: Json,
  opts: {
    normalizer?: Json;
    specials: string[];
    plainAdded?: string[];
    ignoreMerges?: boolean;
    bos?: string;
  },
): { json: Json; vocab: Json } {
  // "Ġhello" is a token no merge reaches: only ignore_merges (Llama 3) takes it whole.
  const vocab = bpeVocab(byteToUnicode(), BYTE_MERGES, ["Ġhello"]);
  const n = Object.keys(vocab).length;
  const added = [...opts.specials, ...(opts.plainAdded ?? [])].map((content, i) => ({
    id: n + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: !opts.specials.includes(content),
    special: opts.specials.includes(content),
  }));
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false };
  const postProcessor = opts.bos === undefined ? { ...byteLevel, use_regex: true } : {
    type: "Sequence",
    processors: [{ ...byteLevel, use_regex: true }, {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: opts.bos, type_id: 0 } }, {
        Sequence: { id: "A", type_id: 0 },
      }],
      pair: [{ SpecialToken: { id: opts.bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      special_tokens: {
        [opts.bos]: {
          id: opts.bos,
          ids: [n + opts.specials.indexOf(opts.bos)],
          tokens: [opts.bos],
        },
      },
    }],
  };
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: opts.normalizer ?? null,
    pre_tokenizer: preTokenizer,
    post_processor: postProcessor,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: opts.ignoreMerges ?? false,
      vocab,
      merges: BYTE_MERGES.map((m) => m.split(" ")),
    },
  };
  return { json, vocab };
}

const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function splitThenBytes(regex: string): Json {
  return {
    type: "Sequence",
    pretokenizers: [
      { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
}

/** Llama 3: Split + ByteLevel, ignore_merges, BOS by template, several EOS ids. */
function llama3(): { json: Json; config: Json } {
  const { json, vocab } = byteLevelFile(splitThenBytes(LLAMA3_REGEX), {
    specials: ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
    ignoreMerges: true,
    bos: "<|begin_of_text|>",
  });
  const n = Object.keys(vocab).length;
  return { json, config: { bos_token_id: n, eos_token_id: [n + 1, n + 2] } };
}

/** Qwen2: NFC, Split with single digits + ByteLevel, no BOS, a non-special added token. */
function qwen2(): { json: Json; config: Json; tokenizerConfig: Json } {
  const { json, vocab } = byteLevelFile(splitThenBytes(QWEN2_REGEX), {
    normalizer: { type: "NFC" },
    specials: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    plainAdded: ["<tool_call>"],
  });
  const n = Object.keys(vocab).length;
  return {
    json,
    config: { bos_token_id: n, eos_token_id: n + 2 },
    tokenizerConfig: { bos_token: null, eos_token: "<|im_end|>" },
  };
}

/** SmolLM2: single Digits + ByteLevel with its own regex (GPT-2's). */
function smollm2(): { json: Json; config: Json } {
  const pre = {
    type: "Sequence",
    pretokenizers: [
      { type: "Digits", individual_digits: true },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    ],
  };
  const { json, vocab } = byteLevelFile(pre, {
    specials: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
  });
  const n = Object.keys(vocab).length;
  return { json, config: { bos_token_id: n, eos_token_id: n } };
}

/** Pieces of the SentencePiece-style vocabulary after <unk>, <s>, </s> and the 256 byte tokens. */
const SP_CHARS = [..."▁abcdefghijklmnopqrstuvwxyzHTIé,.'0123456789"];
const SP_MERGES = [
  "▁ t",
  "h e",
  "▁t he",
  "i n",
  "▁ a",
  "e r",
  "▁ s",
  "▁a n",
  "▁an d",
  "in g",
  "▁ w",
  "o r",
  "▁w or",
  "l d",
  "▁wor ld",
  "H e",
  "l l",
  "He ll",
  "Hell o",
  "▁ ▁",
  "c a",
  "ca f",
  "caf é",
];

/** Llama 2 / TinyLlama: Prepend + Replace normalizer, BPE with byte fallback, BOS by template. */
function llama2(): { json: Json; config: Json } {
  const bytes = Array.from(
    { length: 256 },
    (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
  );
  const vocab = bpeVocab(["<unk>", "<s>", "</s>", ...bytes, ...SP_CHARS], SP_MERGES);
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "▁" },
        { type: "Replace", pattern: { String: " " }, content: "▁" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: SP_MERGES,
    },
  };
  return { json, config: { bos_token_id: 1, eos_token_id: 2 } };
}

interface Fixture {
  json: Json;
  config?: Json;
  tokenizerConfig?: Json;
}

export const FIXTURES: Record<string, () => Fixture> = { llama3, qwen2, smollm2, llama2 };

function build(f: Fixture): HfTokenizer {
  return new HfTokenizer({
    tokenizerJson: JSON.stringify(f.json),
    config: f.config,
    tokenizerConfig: f.tokenizerConfig,
  });
}

async function writeDir(f: Fixture): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "hf_tokenizer_test_" });
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(f.json));
  if (f.config) await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(f.config));
  if (f.tokenizerConfig) {
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(f.tokenizerConfig));
  }
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Expected ids from the Rust tokenizer

/** Unicode, emoji, runs of spaces, newlines, special tokens spelt out, digits, odd whitespace. */
export const EDGE_TEXTS = [
  "Hello world",
  " the  and   the\tworld  ",
  "line one\nline two\r\n\n\nend\n",
  "café naïve — “quotes” 日本語 e\u0301",
  "emoji 😀👍🏽 and 👨‍👩‍👧",
  "<|endoftext|> <s></s> <|begin_of_text|>x<|im_start|>",
  "it's THEY'RE I'M 12345 3.14159 ١٢٣",
  "\ufeffBOM / \ufeff47 and NEL\u0085here, \u0085x zero\u200bwidth",
  " hello hello",
  "call <tool_call> now",
];

/** Space-separated ids from the Python `tokenizers` package, one entry per EDGE_TEXTS line. */
const EXPECTED: Record<string, string[]> = {
  llama3: [
    "276 272",
    "258 32 266 279 258 9 119 269 271 279",
    "108 259 101 32 262 101 10 108 259 101 256 119 111 13 280 10 101 110 100 10",
    "283 169 32 110 97 195 175 118 101 32 226 128 148 32 226 128 156 113 117 111 116 101 115 226 128 157 32 230 151 165 230 156 172 232 170 158 32 101 204 129",
    "289 291 32 240 159 152 128 240 159 145 141 240 159 143 189 266 32 240 159 145 168 226 128 141 240 159 145 169 226 128 141 240 159 145 167",
    "60 124 101 110 100 111 102 116 101 120 116 124 62 32 60 115 62 60 47 115 62 32 60 124 98 101 103 259 95 111 102 95 116 101 120 116 124 62 120 60 124 105 109 95 115 116 97 114 116 124 62",
    "105 116 277 32 84 72 69 89 39 82 69 32 73 39 77 32 278 51 52 53 32 51 46 49 52 49 53 57 32 217 161 217 162 217 163",
    "239 187 191 66 79 77 32 47 292 187 191 52 55 266 32 78 69 76 194 133 257 264 44 32 194 133 120 32 122 261 111 226 128 139 119 105 100 116 104",
    "294 294",
    "281 108 108 32 60 116 111 111 108 95 281 108 108 62 32 110 111 119",
  ],
  qwen2: [
    "276 272",
    "258 32 266 279 258 9 119 269 271 279",
    "108 259 101 32 262 101 10 108 259 101 256 119 111 13 280 10 101 110 100 10",
    "283 169 32 110 97 195 175 118 101 32 226 128 148 32 226 128 156 113 117 111 116 101 115 226 128 157 32 230 151 165 230 156 172 232 170 158 32 284",
    "289 291 32 240 159 152 128 240 159 145 141 240 159 143 189 266 32 240 159 145 168 226 128 141 240 159 145 169 226 128 141 240 159 145 167",
    "60 124 101 110 100 111 102 116 101 120 116 124 62 32 60 115 62 60 47 115 62 32 60 124 98 101 103 259 95 111 102 95 116 101 120 116 124 62 120 60 124 105 109 95 115 116 97 114 116 124 62",
    "105 116 277 32 84 72 69 89 39 82 69 32 73 39 77 32 49 50 51 52 53 32 51 46 49 52 49 53 57 32 217 161 217 162 217 163",
    "239 187 191 66 79 77 32 47 292 187 191 52 55 266 32 78 69 76 194 133 257 264 44 32 194 133 120 32 122 261 111 226 128 139 119 105 100 116 104",
    "32 257 108 108 111 32 257 108 108 111",
    "281 108 108 32 298 32 110 111 119",
  ],
  smollm2: [
    "276 272",
    "258 32 266 279 258 9 119 269 271 279",
    "108 259 101 32 262 101 10 108 259 101 256 119 111 13 280 10 101 110 100 10",
    "283 169 32 110 97 195 175 118 101 32 226 128 148 32 226 128 156 113 117 111 116 101 115 226 128 157 32 230 151 165 230 156 172 232 170 158 32 101 204 129",
    "289 291 32 240 159 152 128 240 159 145 141 240 159 143 189 266 32 240 159 145 168 226 128 141 240 159 145 169 226 128 141 240 159 145 167",
    "60 124 101 110 100 111 102 116 101 120 116 124 62 32 60 115 62 60 47 115 62 32 60 124 98 101 103 259 95 111 102 95 116 101 120 116 124 62 120 60 124 105 109 95 115 116 97 114 116 124 62",
    "105 116 277 32 84 72 69 89 39 82 69 32 73 39 77 32 49 50 51 52 53 32 51 46 49 52 49 53 57 32 217 161 217 162 217 163",
    "239 187 191 66 79 77 32 47 292 187 191 52 55 266 32 78 69 76 194 133 257 264 44 32 194 133 120 32 122 261 111 226 128 139 119 105 100 116 104",
    "32 257 108 108 111 32 257 108 108 111",
    "281 108 108 32 60 116 111 111 108 95 281 108 108 62 32 110 111 119",
  ],
  llama2: [
    "259 321 317",
    "259 305 259 311 322 305 12 282 314 316 322",
    "259 271 306 264 259 274 273 264 13 271 306 264 303 282 274 16 13 13 13 264 273 263 13",
    "259 325 259 273 260 198 178 281 264 259 229 131 151 259 229 131 159 276 280 274 279 264 278 229 131 160 259 233 154 168 233 159 175 235 173 161 259 264 207 132",
    "259 264 272 274 269 268 259 243 162 155 131 243 162 148 144 243 162 146 192 311 259 243 162 148 171 229 131 144 243 162 148 172 229 131 144 243 162 148 170",
    "259 63 127 264 273 263 274 265 279 264 283 279 127 65 259 63 278 65 63 50 278 65 259 63 127 261 264 266 306 98 274 265 98 279 264 283 279 127 65 283 63 127 268 272 98 278 279 260 277 279 127 65",
    "259 268 279 292 278 259 287 286 72 92 292 85 72 259 288 292 80 259 294 295 296 297 298 259 296 291 294 297 294 298 302 259 220 164 220 165 220 166",
    "259 242 190 194 69 82 80 259 50 259 242 190 194 297 300 311 259 81 72 79 197 136 304 277 264 290 259 197 136 283 259 285 308 274 229 131 142 282 268 263 279 267",
    "322 304 319 274 259 304 319 274",
    "259 323 319 259 63 279 274 274 271 98 323 319 65 259 273 274 282",
  ],
};

function expectedIds(name: string, i: number): number[] {
  const s = EXPECTED[name][i];
  return s === "" ? [] : s.split(" ").map(Number);
}

// ---------------------------------------------------------------------------------------------
// Tests

for (const name of Object.keys(FIXTURES)) {
  Deno.test(`${name}: encode() gives the Rust tokenizer's ids, decode() the text back`, () => {
    const tok = build(FIXTURES[name]());
    EDGE_TEXTS.forEach((text, i) => {
      const ids = tok.encode(text);
      assertEquals(ids, expectedIds(name, i), `${name} ${JSON.stringify(text)}`);
      assertEquals(tok.decode(ids), decodedForm(name, text), `${name} ${JSON.stringify(text)}`);
    });
    assertEquals(tok.encode(""), []);
    assertEquals(tok.decode([]), "");
  });
}

/** What decode(encode(text)) gives: the text, after NFC for Qwen2 and without the prefix space. */
function decodedForm(name: string, text: string): string {
  if (name === "qwen2") return text.normalize("NFC");
  return text;
}

Deno.test("special tokens: BOS/EOS from config.json, spelt-out specials stay text", () => {
  const cases: [string, { bos: string; eos: string[]; addsBos: boolean }][] = [
    ["llama3", { bos: "<|begin_of_text|>", eos: ["<|end_of_text|>", "<|eot_id|>"], addsBos: true }],
    ["qwen2", { bos: "<|endoftext|>", eos: ["<|im_end|>"], addsBos: false }],
    ["smollm2", { bos: "<|endoftext|>", eos: ["<|endoftext|>"], addsBos: false }],
    ["llama2", { bos: "<s>", eos: ["</s>"], addsBos: true }],
  ];
  for (const [name, want] of cases) {
    const tok = build(FIXTURES[name]());
    assertEquals(tok.bosId, tok.tokenToId(want.bos), name);
    assertEquals(tok.eosIds, want.eos.map((t) => tok.tokenToId(t)!), name);
    assertEquals(tok.eosId, tok.eosIds[0], name);
    assertEquals(tok.addsBos, want.addsBos, name);
    assertEquals(tok.decode([tok.eosId]), want.eos[0], name);
    // Spelt out in text, a special token is text, never its id.
    const ids = tok.encode(`x${want.bos} ${want.eos.join("")}y`);
    for (const id of [tok.bosId, ...tok.eosIds]) assert(!ids.includes(id), `${name}: ${ids}`);
    assertEquals(tok.decode(ids), `x${want.bos} ${want.eos.join("")}y`, name);
  }
  // A non-special added token (Qwen2.5's <tool_call>) is matched as the file says.
  const qwen = build(qwen2());
  assertEquals(qwen.encode("<tool_call>"), [qwen.tokenToId("<tool_call>")!]);
  // The decoder's treatment of specials is Hugging Face's (Rust decode, skip_special_tokens=False).
  const l2 = build(llama2());
  assertEquals(l2.decode([1, ...l2.encode("Hello world")]), "<s> Hello world");
  const l3 = build(llama3());
  assertEquals(l3.decode([l3.bosId, ...l3.encode("Hello world")]), "<|begin_of_text|>Hello world");
});

Deno.test("BOS/EOS fall back to tokenizer_config.json, and bad ones are refused", () => {
  const f = qwen2();
  const eos = build({ json: f.json, tokenizerConfig: f.tokenizerConfig });
  assertEquals(eos.eosId, eos.tokenToId("<|im_end|>"));
  // No BOS anywhere: BOS is the EOS id, as GPT-2's single <|endoftext|>.
  assertEquals(eos.bosId, eos.eosId);
  const obj = build({
    json: f.json,
    tokenizerConfig: { eos_token: { content: "<|endoftext|>" }, bos_token: "<|im_start|>" },
  });
  assertEquals(obj.eosId, obj.tokenToId("<|endoftext|>"));
  assertEquals(obj.bosId, obj.tokenToId("<|im_start|>"));
  // config.json wins over tokenizer_config.json.
  assertEquals(build(f).eosId, eos.tokenToId("<|im_end|>"));
  assertEquals(build({ ...f, config: { eos_token_id: 7 } }).eosId, 7);
  assertThrows(() => build({ json: f.json }), RangeError, "no end-of-sequence token");
  assertThrows(
    () => build({ json: f.json, config: { eos_token_id: 100000 } }),
    RangeError,
    "config.json: eos_token_id 100000 is not a token",
  );
  assertThrows(
    () => build({ json: f.json, config: { eos_token_id: 1, bos_token_id: -1 } }),
    RangeError,
    "bos_token_id -1",
  );
  assertThrows(
    () => build({ json: f.json, tokenizerConfig: { eos_token: "</nope>" } }),
    RangeError,
    'eos_token "</nope>" is not a token',
  );
});

Deno.test("decode() rejects ids that are not tokens, naming the id and position", () => {
  const tok = build(llama2());
  assertThrows(
    () => tok.decode([5, tok.vocabSize]),
    RangeError,
    `id ${tok.vocabSize} at position 1`,
  );
  assertThrows(() => tok.decode([-1]), RangeError, "id -1 at position 0");
  assertThrows(() => tok.decode([1.5]), RangeError, "id 1.5");
  // An id below vocabSize that no token has (padding rows) is refused too.
  const f = llama2();
  const vocab = (f.json.model as Json).vocab as Record<string, number>;
  delete vocab["z"];
  const holey = build(f);
  assertThrows(() => holey.decode([5, 259 + SP_CHARS.indexOf("z")]), RangeError, "at position 1");
});

Deno.test('merges may be written "a b" or ["a", "b"], mixed in one file', () => {
  const f = llama2();
  const model = f.json.model as Json;
  model.merges = SP_MERGES.map((m, i) => i % 2 === 0 ? m.split(" ") : m);
  const tok = build(f);
  EDGE_TEXTS.forEach((text, i) => assertEquals(tok.encode(text), expectedIds("llama2", i)));
  model.merges = ["▁ t", "h e f"];
  assertThrows(() => build(f), SyntaxError, "model.merges[1]");
});

Deno.test("malformed tokenizer.json is refused naming the file", () => {
  const opts = { config: { eos_token_id: 0 }, file: "/m/tokenizer.json" };
  assertThrows(
    () => new HfTokenizer({ ...opts, tokenizerJson: "{" }),
    SyntaxError,
    "/m/tokenizer.json: not valid JSON",
  );
  assertThrows(
    () => new HfTokenizer({ ...opts, tokenizerJson: "{}" }),
    TypeError,
    '/m/tokenizer.json: "model" must be an object',
  );
  const bad = { ...llama2().json, added_tokens: [{ id: "x", content: "<s>" }] };
  assertThrows(
    () => new HfTokenizer({ ...opts, tokenizerJson: JSON.stringify(bad) }),
    TypeError,
    "added_tokens[0]",
  );
  const noByte = llama2();
  delete ((noByte.json.model as Json).vocab as Json)["<0xE2>"];
  assertThrows(() => build(noByte), RangeError, 'lacks the byte token "<0xE2>"');
  const noChar = llama3();
  delete ((noChar.json.model as Json).vocab as Json)["Ċ"];
  assertThrows(() => build(noChar), RangeError, 'lacks the byte token "Ċ"');
  // Without byte fallback, a character outside the vocabulary is the unknown token; one that is
  // not in the vocabulary either is an error, not a silently dropped character.
  const unk = llama2();
  Object.assign(unk.json.model as Json, { byte_fallback: false, fuse_unk: false });
  assertEquals(build(unk).encode("€"), [259, 0]);
  Object.assign(unk.json.model as Json, { unk_token: "<nope>" });
  assertThrows(() => build(unk).encode("a€"), RangeError, 'the unknown token "<nope>"');
  const unknown = { ...llama2().json, decoder: { type: "NoSuchDecoder" } };
  assertThrows(
    () => new HfTokenizer({ ...opts, tokenizerJson: JSON.stringify(unknown) }),
    TypeError,
    "/m/tokenizer.json: not a tokenizer the library can run",
  );
});

/** Streams `ids` through StopStringTracker as the scheduler does, one token at a time. */
function stream(tok: Tokenizer, ids: number[], stops: string[] = []): string[] {
  const tracker = new StopStringTracker((x) => tok.decode(x), stops);
  const deltas: string[] = [];
  for (const id of ids) {
    if (tracker.push(id)) break;
    deltas.push(tracker.takeDelta(false));
  }
  deltas.push(tracker.takeDelta(true));
  return deltas;
}

Deno.test("incremental decoding: characters cut across byte tokens stream whole", () => {
  const text = "Hi € 😀 café";
  // Rust's decode of each prefix: one U+FFFD per byte of an unfinished byte-fallback run, one per
  // unfinished character in byte-level BPE.
  const want: Record<string, string[]> = {
    llama2: [
      "",
      "H",
      "Hi",
      "Hi ",
      "Hi \ufffd",
      "Hi \ufffd\ufffd",
      "Hi €",
      "Hi € ",
      "Hi € \ufffd",
      "Hi € \ufffd\ufffd",
      "Hi € \ufffd\ufffd\ufffd",
      "Hi € 😀",
      "Hi € 😀 ",
      "Hi € 😀 café",
    ],
    llama3: [
      "H",
      "Hi",
      "Hi ",
      "Hi \ufffd",
      "Hi \ufffd",
      "Hi €",
      "Hi € ",
      "Hi € \ufffd",
      "Hi € \ufffd",
      "Hi € \ufffd",
      "Hi € 😀",
      "Hi € 😀 ",
      "Hi € 😀 caf\ufffd",
      "Hi € 😀 café",
    ],
  };
  for (const [name, prefixes] of Object.entries(want)) {
    const tok = build(FIXTURES[name]());
    const ids = tok.encode(text);
    if (name === "llama2") {
      // The euro sign and the emoji are not pieces: they fall back to their UTF-8 bytes.
      const bytes = ["<0xE2>", "<0x82>", "<0xAC>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"];
      assertEquals(ids.filter((id) => id >= 3 && id < 259), bytes.map((b) => tok.tokenToId(b)!));
    }
    assertEquals(ids.map((_, k) => tok.decode(ids.slice(0, k + 1))), prefixes, name);
    const deltas = stream(tok, ids);
    assertEquals(deltas.join(""), text, name);
    for (const d of deltas) assert(!d.includes("\ufffd"), `${name}: ${JSON.stringify(deltas)}`);
    // A stop string that ends inside the emoji's bytes still cuts the text before it.
    assertEquals(stream(tok, ids, ["😀"]).join(""), "Hi € ", name);
  }
});

Deno.test("loadTokenizer() takes tokenizer.json when present, else vocab.json + merges.txt", async () => {
  const dir = await writeDir(llama3());
  try {
    // Qwen2 and SmolLM2 ship vocab.json and merges.txt beside tokenizer.json: those are ignored.
    await Deno.writeTextFile(`${dir}/vocab.json`, "not json");
    await Deno.writeTextFile(`${dir}/merges.txt`, "");
    const tok = await loadTokenizer(dir);
    assert(tok instanceof HfTokenizer);
    assertEquals(tok.file, `${dir}/tokenizer.json`);
    assertEquals(tok.encode("Hello world"), expectedIds("llama3", 0));
    assertEquals((await loadHfTokenizer(dir)).eosIds, (tok as HfTokenizer).eosIds);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // A bare file (model and added tokens, no stages), as save_pretrained of old versions wrote.
  const { json } = llama3();
  const bare = await writeDir({
    json: { model: json.model, added_tokens: json.added_tokens },
    config: { eos_token_id: 0 },
  });
  try {
    const tok = await loadTokenizer(bare);
    // No pre-tokenizer: the whole text is one word, merged as far as the merges go.
    assertEquals(tok.encode("Hello"), [tok.tokenToId("Hello")!]);
    assertEquals(tok.decode(tok.encode("Hello")), "Hello");
  } finally {
    await Deno.remove(bare, { recursive: true });
  }
  const gpt2 = await loadTokenizer(GPT2_DIR);
  assert(!(gpt2 instanceof HfTokenizer));
  assertEquals(gpt2.file, `${GPT2_DIR}/vocab.json`);
});

// ---------------------------------------------------------------------------------------------
// GPT-2: the library against our tokenizer on the datasets

/** Every string field of every record of data/splits/*.jsonl, each once. */
async function datasetTexts(): Promise<string[]> {
  const out = new Set<string>();
  const walk = (v: unknown): void => {
    if (typeof v === "string") out.add(v);
    else if (Array.isArray(v)) v.forEach(walk);
    else if (typeof v === "object" && v !== null) Object.values(v).forEach(walk);
  };
  const names = [...Deno.readDirSync(SPLITS)].map((e) => e.name).filter((n) =>
    n.endsWith(".jsonl")
  );
  assertEquals(names.length, 9);
  for (const n of names.sort()) {
    for (const line of (await Deno.readTextFile(SPLITS + n)).split("\n")) {
      if (line.trim() !== "") walk(JSON.parse(line));
    }
  }
  return [...out];
}

async function gpt2Hf(): Promise<HfTokenizer> {
  return new HfTokenizer({
    tokenizerJson: JSON.stringify(await gpt2TokenizerJson(GPT2_DIR)),
    config: JSON.parse(await Deno.readTextFile(`${GPT2_DIR}/config.json`)),
  });
}

/** The one dataset text whose ids differ, as the Python tokenizers package encodes it. */
const FEFF_TEXT = "47°39′N 9°19′E\ufeff / \ufeff47.650°N 9.317°E\ufeff / 47.650; 9.317.";
const FEFF_IDS = "2857 7200 2670 17478 45 860 7200 1129 17478 36 171 119 123 1220 27332 119 123 " +
  "2857 13 17544 7200 45 860 13 34125 7200 36 171 119 123 1220 6298 13 17544 26 860 13 34125 13";

Deno.test("GPT-2: the library matches ours on every dataset string, U+FEFF after a space included", async () => {
  const ours = await loadTokenizer(GPT2_DIR);
  const hf = await gpt2Hf();
  assertEquals(hf.vocabSize, ours.vocabSize);
  assertEquals([hf.eosId, hf.bosId, hf.addsBos], [ours.eosId, ours.bosId, false]);
  const texts = await datasetTexts();
  assert(texts.length > 30_000, `${texts.length}`);
  const differ: string[] = [];
  let tokens = 0;
  for (const t of texts) {
    const a = ours.encode(t), b = hf.encode(t);
    tokens += b.length;
    if (a.length !== b.length || a.some((id, i) => id !== b[i])) differ.push(t);
    else assertEquals(hf.decode(b), t);
  }
  // JavaScript's \s takes U+FEFF for a space; GPT-2's regex (Python, Rust) does not, so " \ufeff"
  // is one punctuation pre-token there: both run the Rust regex (2 SQuAD contexts have it).
  assertEquals(differ.map((t) => t.slice(0, 80)), []);
  assertEquals(hf.encode(FEFF_TEXT).join(" "), FEFF_IDS);
  assertEquals(ours.encode(FEFF_TEXT).join(" "), FEFF_IDS);
  assertEquals(hf.decode(hf.encode(FEFF_TEXT)), FEFF_TEXT);
  assert(tokens > 600_000, `${tokens}`);
});

Deno.test("GPT-2: the library reproduces Hugging Face's ids of the reference fixtures", async () => {
  const hf = await gpt2Hf();
  const fx = `${ROOT}test/fixtures/tokenizer/`;
  const golden = JSON.parse(await Deno.readTextFile(fx + "golden_ids.json"));
  for (const s of golden.sequences as { name: string; text: string; ids: number[] }[]) {
    assertEquals(hf.encode(s.text), s.ids, s.name);
    assertEquals(hf.decode(s.ids), s.text, s.name);
  }
  const tokens = (await Deno.readTextFile(fx + "sentiment_train_tokens.jsonl")).trim().split("\n")
    .map((l) => JSON.parse(l) as { prompt_ids: number[]; answer_ids: number[] });
  const records = (await Deno.readTextFile(SPLITS + "sentiment_train.jsonl")).trim().split("\n")
    .map((l) => JSON.parse(l) as { sentence: string; label: string });
  assertEquals(records.length, tokens.length);
  records.forEach(({ sentence, label }, i) => {
    assertEquals(hf.encode(` ${sentence} sentiment:`), tokens[i].prompt_ids, `line ${i + 1}`);
    assertEquals([...hf.encode(` ${label}`), hf.eosId], tokens[i].answer_ids, `line ${i + 1}`);
  });
  // Literal <|endoftext|> is text, as in ours; its id decodes to its spelling.
  assertEquals(hf.encode("<|endoftext|>"), [27, 91, 437, 1659, 5239, 91, 29]);
  assertEquals(hf.decode([50256]), "<|endoftext|>");
});

// ---------------------------------------------------------------------------------------------
// Live: Hugging Face's Rust tokenizer, when the Python package is there

const PYTHON_REFERENCE = `
import json, sys, tokenizers
req = json.load(sys.stdin)
out = {}
for name, spec in req.items():
    tok = tokenizers.Tokenizer.from_file(spec["file"])
    tok.encode_special_tokens = True
    ids = [e.ids for e in tok.encode_batch(spec["texts"], add_special_tokens=False)]
    out[name] = {
        "ids": ids,
        "decoded": tok.decode_batch(ids, skip_special_tokens=False),
        "prefixes": [[tok.decode(i[:k], skip_special_tokens=False) for k in range(1, len(i) + 1)]
                     for i in ids[: spec["prefix_texts"]]],
    }
json.dump(out, sys.stdout)
`;

async function pythonHasTokenizers(): Promise<boolean> {
  try {
    const { code } = await new Deno.Command("python3", {
      args: ["-c", "import tokenizers"],
      stdout: "null",
      stderr: "null",
    }).output();
    return code === 0;
  } catch {
    return false;
  }
}

const HAVE_PYTHON = await pythonHasTokenizers();

Deno.test({
  name: "live: ids, decodes and streamed prefixes equal Python tokenizers' (skipped without it)",
  ignore: !HAVE_PYTHON,
  fn: async () => {
    const all = await datasetTexts();
    const sample = all.filter((_, i) => i % 40 === 0);
    const dirs: Record<string, string> = {};
    const toks: Record<string, HfTokenizer> = {};
    const req: Record<string, unknown> = {};
    try {
      const fixtures: Record<string, Fixture> = {
        gpt2: { json: await gpt2TokenizerJson(GPT2_DIR), config: { eos_token_id: 50256 } },
      };
      for (const [name, f] of Object.entries(FIXTURES)) fixtures[name] = f();
      for (const [name, f] of Object.entries(fixtures)) {
        dirs[name] = await writeDir(f);
        toks[name] = await loadHfTokenizer(dirs[name]);
        const texts = name === "gpt2" ? all : [...EDGE_TEXTS, ...sample];
        req[name] = {
          file: `${dirs[name]}/tokenizer.json`,
          texts,
          prefix_texts: EDGE_TEXTS.length,
        };
      }
      const { code, stdout, stderr } = await runWithInput(
        "python3",
        ["-c", PYTHON_REFERENCE],
        JSON.stringify(req),
      );
      assertEquals(code, 0, stderr);
      const ref = JSON.parse(stdout);
      for (const [name, tok] of Object.entries(toks)) {
        const { texts } = req[name] as { texts: string[] };
        const r = ref[name] as { ids: number[][]; decoded: string[]; prefixes: string[][] };
        texts.forEach((t, i) => {
          const ids = tok.encode(t);
          assertEquals(ids, r.ids[i], `${name} ${JSON.stringify(t.slice(0, 80))}`);
          assertEquals(tok.decode(ids), r.decoded[i], `${name} ${JSON.stringify(t.slice(0, 80))}`);
        });
        r.prefixes.forEach((want, i) => {
          const ids = r.ids[i];
          assertEquals(ids.map((_, k) => tok.decode(ids.slice(0, k + 1))), want, `${name} ${i}`);
        });
      }
    } finally {
      for (const d of Object.values(dirs)) await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test("a model padded beyond its tokenizer (Qwen2's vocab_size): the rows count, padding ids decode to nothing", () => {
  const { json, config, tokenizerConfig } = qwen2();
  const tokens = new HfTokenizer({ tokenizerJson: JSON.stringify(json), config, tokenizerConfig });
  const padded = new HfTokenizer({
    tokenizerJson: JSON.stringify(json),
    config: { ...config, vocab_size: tokens.vocabSize + 16 },
    tokenizerConfig,
  });
  assertEquals(padded.vocabSize, tokens.vocabSize + 16);
  const ids = padded.encode("Hello world");
  assertEquals(ids, tokens.encode("Hello world"));
  // Hugging Face's decode drops ids without a token; a row beyond the model's is an error.
  assertEquals(padded.decode([...ids, tokens.vocabSize + 3]), "Hello world");
  assertThrows(() => padded.decode([tokens.vocabSize + 16]), RangeError, "is not a token");
  assertThrows(() => tokens.decode([tokens.vocabSize]), RangeError, "is not a token");
});
