/**
 * GPT-2 byte-level BPE, as OpenAI's encoder.py and Hugging Face's GPT2Tokenizer do it:
 * pre-tokenise with the GPT-2 regex, map each UTF-8 byte to a printable character, then merge
 * adjacent symbols by merge rank. `loadTokenizer` uses it for `vocab.json` + `merges.txt`; a
 * model directory with `tokenizer.json` gets `HfTokenizer` (hf_tokenizer.ts) instead.
 *
 * Special tokens in input text (e.g. a literal "<|endoftext|>") are encoded as plain text: data
 * fields must not be able to inject an end-of-text. Callers append EOS by id.
 */

import { byteToUnicode } from "./byte_level.ts";
import { loadHfTokenizer } from "./hf_tokenizer.ts";

export interface Tokenizer {
  encode(text: string): number[];
  /** Invalid UTF-8 (a cut multi-byte character) decodes to U+FFFD, as Hugging Face does. */
  decode(ids: ArrayLike<number>): string;
  /** Id of a vocabulary entry in its byte-mapped spelling (" positive" is "Ġpositive"). */
  tokenToId(tok: string): number | undefined;
  readonly vocabSize: number;
  /** Id of `<|endoftext|>`. */
  readonly eosId: number;
  /** Id of `<|endoftext|>` (GPT-2 uses one token for both). */
  readonly bosId: number;
  /** The file the vocabulary came from, for error messages. */
  readonly file: string;
}

// GPT-2's regex with Unicode White_Space for \s, as Python's `re` and Rust's tokenizers read it:
// JavaScript's \s also takes U+FEFF and misses U+0085, which changed the ids of SQuAD contexts.
const PRETOKENIZE =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
const END_OF_TEXT = "<|endoftext|>";
/** Bounds the per-word cache so hostile input cannot grow it without limit. */
const CACHE_LIMIT = 200_000;

class BpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosId: number;
  readonly bosId: number;
  readonly file: string;
  readonly #vocab: Map<string, number>;
  readonly #idToToken: (string | undefined)[];
  /** Key: `left + " " + right` (tokens never contain a space: it is mapped to "Ġ"). */
  readonly #ranks: Map<string, number>;
  readonly #byteChar: string[];
  readonly #charByte: Map<string, number>;
  readonly #cache = new Map<string, number[]>();
  readonly #utf8 = new TextEncoder();
  readonly #utf8Decoder = new TextDecoder();

  constructor(vocab: Map<string, number>, ranks: Map<string, number>, file: string) {
    this.file = file;
    this.#vocab = vocab;
    this.#ranks = ranks;
    let max = -1;
    for (const id of vocab.values()) if (id > max) max = id;
    this.vocabSize = max + 1;
    this.#idToToken = new Array(this.vocabSize);
    for (const [tok, id] of vocab) this.#idToToken[id] = tok;
    const eos = vocab.get(END_OF_TEXT);
    if (eos === undefined) {
      throw new RangeError(`${file}: the vocabulary has no "${END_OF_TEXT}" token`);
    }
    this.eosId = eos;
    this.bosId = eos;
    this.#byteChar = byteToUnicode();
    this.#charByte = new Map(this.#byteChar.map((c, b) => [c, b]));
    for (const c of this.#byteChar) {
      if (!vocab.has(c)) {
        throw new RangeError(
          `${file}: the vocabulary lacks the single-byte token ${
            JSON.stringify(c)
          }: every byte needs a token so that any text can be encoded`,
        );
      }
    }
  }

  tokenToId(tok: string): number | undefined {
    return this.#vocab.get(tok);
  }

  encode(text: string): number[] {
    const out: number[] = [];
    for (const m of text.matchAll(PRETOKENIZE)) {
      const word = m[0];
      let ids = this.#cache.get(word);
      if (ids === undefined) {
        ids = this.#bpe(word);
        if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
        this.#cache.set(word, ids);
      }
      for (const id of ids) out.push(id);
    }
    return out;
  }

  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      const tok = Number.isInteger(id) ? this.#idToToken[id] : undefined;
      if (tok === undefined) {
        throw new RangeError(
          `decode: id ${id} at position ${i} is not a token of ${this.file} (vocabulary size ${this.vocabSize})`,
        );
      }
      for (const ch of tok) {
        const b = this.#charByte.get(ch);
        // Added tokens such as <|endoftext|> are spelt in plain characters, not mapped bytes.
        if (b === undefined) bytes.push(...this.#utf8.encode(ch));
        else bytes.push(b);
      }
    }
    return this.#utf8Decoder.decode(new Uint8Array(bytes));
  }

  /**
   * Merges one pre-token. A min-heap of candidate pairs (rank, then position) keeps long words
   * at O(n log n); lowest rank first with leftmost tie-break gives the same result as the
   * reference loop that merges every occurrence of the best pair per round.
   */
  #bpe(word: string): number[] {
    const sym: string[] = [];
    for (const b of this.#utf8.encode(word)) sym.push(this.#byteChar[b]);
    const n = sym.length;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const push = (i: number) => {
      const j = next[i];
      if (j < 0) return;
      const rank = this.#ranks.get(sym[i] + " " + sym[j]);
      if (rank !== undefined) heap.push(rank, i, sym[i].length, sym[j].length);
    };
    for (let i = 0; i + 1 < n; i++) push(i);
    while (heap.size > 0) {
      const [, i, leftLen, rightLen] = heap.pop();
      const j = next[i];
      // Stale entry: a side was merged since the push. Symbols only grow, and next[i] changes
      // only when sym[i] does, so equal lengths mean the same pair.
      if (sym[i] === "" || j < 0 || sym[i].length !== leftLen || sym[j].length !== rightLen) {
        continue;
      }
      sym[i] = sym[i] + sym[j];
      sym[j] = "";
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      if (prev[i] >= 0) push(prev[i]);
      push(i);
    }
    const ids: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]) {
      const id = this.#vocab.get(sym[i]);
      if (id === undefined) {
        throw new RangeError(
          `${this.file}: BPE produced ${JSON.stringify(sym[i])}, which is not in the vocabulary`,
        );
      }
      ids.push(id);
    }
    return ids;
  }
}

/** Min-heap over (rank, position) with two payload numbers, in flat arrays. */
class PairHeap {
  #data: number[] = [];
  get size(): number {
    return this.#data.length / 4;
  }
  push(rank: number, pos: number, a: number, b: number): void {
    const d = this.#data;
    d.push(rank, pos, a, b);
    let k = d.length / 4 - 1;
    while (k > 0) {
      const p = (k - 1) >> 1;
      if (!this.#less(k, p)) break;
      this.#swap(k, p);
      k = p;
    }
  }
  pop(): [number, number, number, number] {
    const d = this.#data;
    const top: [number, number, number, number] = [d[0], d[1], d[2], d[3]];
    const last = d.length / 4 - 1;
    if (last > 0) this.#swap(0, last);
    d.length -= 4;
    let k = 0;
    const n = d.length / 4;
    for (;;) {
      const l = 2 * k + 1;
      const r = l + 1;
      let m = k;
      if (l < n && this.#less(l, m)) m = l;
      if (r < n && this.#less(r, m)) m = r;
      if (m === k) break;
      this.#swap(k, m);
      k = m;
    }
    return top;
  }
  #less(x: number, y: number): boolean {
    const d = this.#data;
    return d[4 * x] < d[4 * y] || (d[4 * x] === d[4 * y] && d[4 * x + 1] < d[4 * y + 1]);
  }
  #swap(x: number, y: number): void {
    const d = this.#data;
    for (let k = 0; k < 4; k++) {
      const t = d[4 * x + k];
      d[4 * x + k] = d[4 * y + k];
      d[4 * y + k] = t;
    }
  }
}

/** 1-based line of a character offset. */
function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** Turns V8's "... at position N" / "(line L column C)" into a line number when it can. */
function jsonErrorLine(text: string, message: string): number | undefined {
  const lc = /line (\d+) column \d+/.exec(message);
  if (lc) return Number(lc[1]);
  const pos = /position (\d+)/.exec(message);
  return pos ? lineAt(text, Number(pos[1])) : undefined;
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    const msg = (e as Error).message;
    const line = jsonErrorLine(text, msg);
    throw new SyntaxError(
      `${file}${line === undefined ? "" : `:${line}`}: not valid JSON (${msg})`,
    );
  }
}

/** Where a vocabulary key sits in the file, best effort, for error messages. */
function keyLocation(text: string, file: string, key: string): string {
  const at = text.indexOf(JSON.stringify(key) + ":");
  return at < 0 ? file : `${file}:${lineAt(text, at)}`;
}

function vocabFromObject(
  raw: unknown,
  text: string,
  file: string,
  what: string,
): Map<string, number> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new TypeError(`${file}: ${what} must be a JSON object of token -> id`);
  }
  const vocab = new Map<string, number>();
  const seen = new Map<number, string>();
  for (const [tok, id] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new RangeError(
        `${keyLocation(text, file, tok)}: id of token ${JSON.stringify(tok)} must be a ` +
          `non-negative integer: found ${JSON.stringify(id)}`,
      );
    }
    const other = seen.get(id);
    if (other !== undefined) {
      throw new RangeError(
        `${keyLocation(text, file, tok)}: tokens ${JSON.stringify(other)} and ${
          JSON.stringify(tok)
        } share id ${id}`,
      );
    }
    seen.set(id, tok);
    vocab.set(tok, id);
  }
  return vocab;
}

function checkMerge(
  vocab: Map<string, number>,
  left: string,
  right: string,
  where: string,
): void {
  for (const part of [left, right, left + right]) {
    if (!vocab.has(part)) {
      throw new RangeError(
        `${where}: merge "${left} ${right}" uses ${
          JSON.stringify(part)
        }, which is not in the vocabulary`,
      );
    }
  }
}

/** Parses merges.txt: an optional "#version" line, then one `left right` pair per line. */
export function parseMerges(
  text: string,
  vocab: Map<string, number>,
  file: string,
): Map<string, number> {
  const ranks = new Map<string, number>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].endsWith("\r") ? lines[i].slice(0, -1) : lines[i];
    if (line === "" || (i === 0 && line.startsWith("#version"))) continue;
    const parts = line.split(" ");
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      throw new SyntaxError(
        `${file}:${i + 1}: expected two tokens separated by one space: found ${
          JSON.stringify(line)
        }`,
      );
    }
    checkMerge(vocab, parts[0], parts[1], `${file}:${i + 1}`);
    const key = parts[0] + " " + parts[1];
    // The first occurrence wins, as in Hugging Face's loader.
    if (!ranks.has(key)) ranks.set(key, ranks.size);
  }
  return ranks;
}

/** Builds a tokenizer from the texts of vocab.json and merges.txt. */
export function tokenizerFromFiles(
  vocabText: string,
  mergesText: string,
  vocabFile = "vocab.json",
  mergesFile = "merges.txt",
): Tokenizer {
  const vocab = vocabFromObject(parseJson(vocabText, vocabFile), vocabText, vocabFile, "the file");
  return new BpeTokenizer(vocab, parseMerges(mergesText, vocab, mergesFile), vocabFile);
}

/** Builds a tokenizer from the text of a Hugging Face tokenizer.json (BPE model). */
export function tokenizerFromJson(text: string, file = "tokenizer.json"): Tokenizer {
  const raw = parseJson(text, file);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new TypeError(`${file}: expected a JSON object at the top level`);
  }
  const model = (raw as Record<string, unknown>).model as Record<string, unknown> | undefined;
  if (typeof model !== "object" || model === null) {
    throw new TypeError(`${file}: field "model" is missing or not an object`);
  }
  if (model.type !== "BPE") {
    throw new RangeError(`${file}: model.type must be "BPE": found ${JSON.stringify(model.type)}`);
  }
  const vocab = vocabFromObject(model.vocab, text, file, "model.vocab");
  const added = (raw as Record<string, unknown>).added_tokens ?? [];
  if (!Array.isArray(added)) throw new TypeError(`${file}: added_tokens must be an array`);
  added.forEach((t, i) => {
    const { id, content } = (t ?? {}) as { id?: unknown; content?: unknown };
    if (typeof content !== "string" || typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new TypeError(
        `${file}: added_tokens[${i}] needs a string "content" and a non-negative integer "id": ` +
          `found ${JSON.stringify(t)}`,
      );
    }
    vocab.set(content, id);
  });
  if (!Array.isArray(model.merges)) throw new TypeError(`${file}: model.merges must be an array`);
  const ranks = new Map<string, number>();
  model.merges.forEach((m: unknown, i: number) => {
    // Older files spell a merge "a b", newer ones ["a", "b"].
    const pair = typeof m === "string" ? m.split(" ") : m;
    if (
      !Array.isArray(pair) || pair.length !== 2 ||
      !pair.every((p) => typeof p === "string" && p !== "")
    ) {
      throw new SyntaxError(
        `${file}: model.merges[${i}] must be "left right" or ["left", "right"]: found ${
          JSON.stringify(m)
        }`,
      );
    }
    checkMerge(vocab, pair[0], pair[1], `${file}: model.merges[${i}]`);
    const key = pair[0] + " " + pair[1];
    if (!ranks.has(key)) ranks.set(key, ranks.size);
  });
  return new BpeTokenizer(vocab, ranks, file);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * `dir/tokenizer.json` if present (any model's, run by @huggingface/tokenizers, BOS/EOS from
 * `dir/config.json`), else `dir/vocab.json` + `dir/merges.txt` (GPT-2, ours).
 */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  if (await exists(`${dir}/tokenizer.json`)) return await loadHfTokenizer(dir);
  const vocabFile = `${dir}/vocab.json`;
  const mergesFile = `${dir}/merges.txt`;
  for (const f of [vocabFile, mergesFile]) {
    if (!(await exists(f))) {
      throw new Deno.errors.NotFound(
        `${f}: not found (a tokenizer needs tokenizer.json, or vocab.json and merges.txt)`,
      );
    }
  }
  const [vocabText, mergesText] = await Promise.all([
    Deno.readTextFile(vocabFile),
    Deno.readTextFile(mergesFile),
  ]);
  return tokenizerFromFiles(vocabText, mergesText, vocabFile, mergesFile);
}

/**
 * The model's embedding rows and the tokenizer's ids must line up, and virtual-token ids start
 * at the vocabulary size, so a mismatch would silently shift every prompt table.
 */
export function checkTokenizerMatchesModel(tok: Tokenizer, vocabSize: number, dir: string): void {
  if (tok.vocabSize !== vocabSize) {
    throw new RangeError(
      `${dir}/config.json: vocab_size is ${vocabSize} but the tokenizer ${tok.file} has ` +
        `${tok.vocabSize} tokens: the tokenizer does not belong to this model`,
    );
  }
}
