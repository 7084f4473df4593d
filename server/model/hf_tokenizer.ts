/**
 * A model's own `tokenizer.json` (Hugging Face fast-tokenizer format) run by
 * `@huggingface/tokenizers`, Hugging Face's pure-JavaScript port: byte-level BPE (GPT-2, SmolLM2,
 * Qwen2, Llama 3) and SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama) alike, with
 * whatever normalizer, pre-tokenizer and decoder the file names.
 *
 * Same contract as the GPT-2 tokenizer of tokenizer.ts:
 *  - `encode` adds no BOS/EOS (the post-processor's template is not applied: callers add them by
 *    id), and special tokens written in the text ("<|endoftext|>", "<s>") are encoded as plain
 *    text, as Hugging Face does with `encode_special_tokens`, so data cannot inject a control
 *    token. Added tokens that are not special (a chat format's tags) are matched as the file says.
 *  - `decode` is the file's decoder, without transformers' `clean_up_tokenization_spaces` (which
 *    would rewrite " ." to "."), so decode(encode(s)) gives s back. A multi-byte character whose
 *    bytes are not all there decodes to U+FFFD; re-decoding all ids as tokens arrive (what
 *    `StopStringTracker` does) therefore streams correctly.
 *
 * BOS/EOS come from the checkpoint's `config.json` (`bos_token_id`, `eos_token_id`, which may be
 * a list), else from `tokenizer_config.json` (`bos_token`, `eos_token`, looked up in the
 * vocabulary).
 */
import {
  ByteFallbackDecoder,
  type Decoder,
  SequenceDecoder,
  Tokenizer as HfLibTokenizer,
} from "@huggingface/tokenizers";
import type { Tokenizer } from "./tokenizer.ts";
import { byteToUnicode } from "./byte_level.ts";

type Json = Record<string, unknown>;

export interface HfTokenizerOptions {
  /** The text of `tokenizer.json`. */
  tokenizerJson: string;
  /** Parsed `config.json` of the checkpoint, when there is one. */
  config?: Json;
  /** Parsed `tokenizer_config.json`, when there is one. */
  tokenizerConfig?: Json;
  /** The file the tokenizer came from, for error messages. */
  file?: string;
}

/**
 * GPT-2's pre-tokenizer regex as the Rust tokenizers run it (Oniguruma, where `\s` is Unicode
 * White_Space). The library's ByteLevel pre-tokenizer hard-codes it with JavaScript's `\s`, which
 * also matches U+FEFF and misses U+0085, so a SQuAD context with a zero-width no-break space
 * tokenized differently from the shipped tokenizer. Its Split pre-tokenizer translates `\s` right.
 */
const BYTE_LEVEL_REGEX =
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/**
 * Rewrites each ByteLevel pre-tokenizer that splits with its built-in regex into the equivalent
 * Split (same regex, Isolated) followed by ByteLevel without the regex, which is what the Rust
 * ByteLevel does. With add_prefix_space the space goes in before the split, so those are kept.
 */
function withPortableRegex(pt: unknown): unknown {
  if (!isObject(pt)) return pt;
  if (pt.type === "Sequence" && Array.isArray(pt.pretokenizers)) {
    return { ...pt, pretokenizers: pt.pretokenizers.map(withPortableRegex) };
  }
  if (pt.type === "ByteLevel" && pt.use_regex !== false && pt.add_prefix_space !== true) {
    return {
      type: "Sequence",
      pretokenizers: [
        {
          type: "Split",
          pattern: { Regex: BYTE_LEVEL_REGEX },
          behavior: "Isolated",
          invert: false,
        },
        { ...pt, use_regex: false },
      ],
    };
  }
  return pt;
}

/**
 * What the Rust ByteFallback decoder makes of a run of `<0xNN>` tokens: their UTF-8 text, a
 * leading U+FEFF kept, or one U+FFFD per byte when they are not valid UTF-8. The library's
 * decoder drops a leading U+FEFF (a default TextDecoder strips a BOM) and gives one U+FFFD per
 * broken sequence.
 */
class ByteRunText extends TextDecoder {
  readonly #strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  override decode(input?: AllowSharedBufferSource): string {
    try {
      return this.#strict.decode(input);
    } catch {
      return "\uFFFD".repeat(input === undefined ? 0 : input.byteLength);
    }
  }
}

function fixByteFallback(d: Decoder | null): void {
  if (d instanceof ByteFallbackDecoder) d.text_decoder = new ByteRunText();
  else if (d instanceof SequenceDecoder) d.decoders.forEach(fixByteFallback);
}

function usesByteLevel(pt: unknown): boolean {
  if (!isObject(pt)) return false;
  if (pt.type === "ByteLevel") return true;
  return pt.type === "Sequence" && Array.isArray(pt.pretokenizers) &&
    pt.pretokenizers.some(usesByteLevel);
}

/**
 * Byte-level and byte-fallback tokenizers can spell any text only if every byte has a token;
 * without one, the library (like the Rust tokenizer) drops what it cannot spell.
 */
function checkByteTokens(raw: Json, vocab: Json, file: string): void {
  const model = raw.model as Json;
  const need = usesByteLevel(raw.pre_tokenizer)
    ? byteToUnicode()
    : model.byte_fallback === true
    ? Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)
    : [];
  for (const t of need) {
    if (!Object.hasOwn(vocab, t)) {
      throw new RangeError(
        `${file}: the vocabulary lacks the byte token ${JSON.stringify(t)}: every byte needs a ` +
          `token so that any text can be encoded`,
      );
    }
  }
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0;
}

function parseObject(text: string, file: string): Json {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(raw)) throw new TypeError(`${file}: expected a JSON object at the top level`);
  return raw;
}

/** `"<s>"` or `{ "content": "<s>", ... }` (tokenizer_config.json writes both). */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (isObject(v) && typeof v.content === "string") return v.content;
  return undefined;
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosId: number;
  readonly bosId: number;
  readonly file: string;
  /** Every id config.json names as end of sequence (Llama 3 Instruct lists several); eosId first. */
  readonly eosIds: readonly number[];
  /** Whether the file's post-processor puts BOS in front of a sequence (Llama 2/3, TinyLlama). */
  readonly addsBos: boolean;
  /**
   * Ids below this have a token. A model may pad its embedding beyond its tokenizer (Qwen2's
   * vocab_size 151936 over 151665 tokens): ids from here to `vocabSize` are rows without a token.
   */
  readonly #tokens: number;
  /** Special added tokens left out, so that their spelling in text stays text. */
  readonly #encoder: HfLibTokenizer;
  /** Every added token, to decode any id. */
  readonly #decoder: HfLibTokenizer;

  constructor(opts: HfTokenizerOptions) {
    const file = opts.file ?? "tokenizer.json";
    this.file = file;
    const raw = parseObject(opts.tokenizerJson, file);
    const model = raw.model;
    if (!isObject(model) || !isObject(model.vocab)) {
      throw new TypeError(`${file}: "model" must be an object with a "vocab" object`);
    }
    const added = raw.added_tokens ?? [];
    if (!Array.isArray(added)) throw new TypeError(`${file}: added_tokens must be an array`);
    let max = -1;
    for (const [tok, id] of Object.entries(model.vocab)) {
      if (!isId(id)) {
        throw new RangeError(
          `${file}: id of token ${JSON.stringify(tok)} must be a non-negative integer: found ${
            JSON.stringify(id)
          }`,
        );
      }
      if (id > max) max = id;
    }
    added.forEach((t: unknown, i: number) => {
      if (!isObject(t) || typeof t.content !== "string" || !isId(t.id)) {
        throw new TypeError(
          `${file}: added_tokens[${i}] needs a string "content" and a non-negative integer "id": ` +
            `found ${JSON.stringify(t)}`,
        );
      }
      if (t.id > max) max = t.id;
    });
    this.#tokens = max + 1;
    // The model's rows (config.json vocab_size) may outnumber the tokens: padding, never encoded.
    const rows = opts.config?.vocab_size;
    this.vocabSize = typeof rows === "number" && Number.isInteger(rows) && rows > max + 1
      ? rows
      : max + 1;
    checkByteTokens(raw, model.vocab, file);
    const merges = model.merges ?? [];
    if (!Array.isArray(merges)) throw new TypeError(`${file}: model.merges must be an array`);
    // The library reads every merge in the format of the first; files may mix "a b" and ["a", "b"].
    const pairs = merges.map((m: unknown, i: number) => {
      const pair = typeof m === "string" ? m.split(" ") : m;
      if (!Array.isArray(pair) || pair.length !== 2 || !pair.every((p) => typeof p === "string")) {
        throw new SyntaxError(
          `${file}: model.merges[${i}] must be "left right" or ["left", "right"]: found ${
            JSON.stringify(m)
          }`,
        );
      }
      return pair;
    });

    // The library wants every stage named, null where the file has none.
    const full: Json = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
    };
    Object.assign(full, raw, { added_tokens: added });
    if (model.type === "BPE" || model.merges !== undefined) {
      full.model = { ...model, merges: pairs };
    }
    full.pre_tokenizer = withPortableRegex(full.pre_tokenizer);
    // tokenizer_config.json is not passed: the library would apply transformers' clean-up and
    // legacy flags from it, which the Rust tokenizer (and so the ids of the shipped file) ignores.
    const libConfig = { clean_up_tokenization_spaces: false };
    try {
      this.#decoder = new HfLibTokenizer(full, libConfig);
      fixByteFallback(this.#decoder.decoder);
      this.#encoder = new HfLibTokenizer(
        { ...full, added_tokens: added.filter((t: Json) => t.special !== true) },
        libConfig,
      );
    } catch (e) {
      throw new TypeError(`${file}: not a tokenizer the library can run (${(e as Error).message})`);
    }

    const ids = this.#specialIds(opts.config, opts.tokenizerConfig);
    this.eosIds = ids.eos;
    this.eosId = ids.eos[0];
    this.bosId = ids.bos ?? this.eosId;
    const probe = this.#decoder.encode("a", { add_special_tokens: true }).ids;
    this.addsBos = ids.bos !== undefined && probe[0] === ids.bos;
  }

  /** BOS/EOS ids: config.json first, then tokenizer_config.json's token strings. */
  #specialIds(config?: Json, tokConfig?: Json): { eos: number[]; bos?: number } {
    const dir = this.file.slice(0, this.file.lastIndexOf("/") + 1);
    const check = (id: number, key: string) => {
      if (!isId(id) || id >= this.vocabSize || this.#decoder.id_to_token(id) === undefined) {
        throw new RangeError(
          `${dir}config.json: ${key} ${JSON.stringify(id)} is not a token of ${this.file} ` +
            `(vocabulary size ${this.vocabSize})`,
        );
      }
      return id;
    };
    const byName = (key: string): number | undefined => {
      const content = tokenContent(tokConfig?.[key]);
      if (content === undefined) return undefined;
      const id = this.#decoder.token_to_id(content);
      if (id === undefined) {
        throw new RangeError(
          `${dir}tokenizer_config.json: ${key} ${
            JSON.stringify(content)
          } is not a token of ${this.file}`,
        );
      }
      return id;
    };
    let eos: number[] | undefined;
    const e = config?.eos_token_id;
    if (Array.isArray(e) && e.length > 0) eos = e.map((id) => check(id, "eos_token_id"));
    else if (e !== undefined && e !== null) eos = [check(e as number, "eos_token_id")];
    else {
      const id = byName("eos_token");
      if (id !== undefined) eos = [id];
    }
    if (eos === undefined) {
      throw new RangeError(
        `${this.file}: no end-of-sequence token: config.json has no eos_token_id and ` +
          `tokenizer_config.json no eos_token`,
      );
    }
    const b = config?.bos_token_id;
    const bos = b !== undefined && b !== null
      ? check(b as number, "bos_token_id")
      : byName("bos_token");
    return { eos, bos };
  }

  tokenToId(tok: string): number | undefined {
    return this.#decoder.token_to_id(tok);
  }

  encode(text: string): number[] {
    const { ids, tokens } = this.#encoder.encode(text, { add_special_tokens: false });
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] === undefined) {
        throw new RangeError(
          `${this.file}: text outside the vocabulary maps to the unknown token ` +
            `${JSON.stringify(tokens[i])}, which is not in the vocabulary either`,
        );
      }
    }
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    const list: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      // A padding row has no text, as Hugging Face's decode drops ids without a token.
      if (Number.isInteger(id) && id >= this.#tokens && id < this.vocabSize) continue;
      // Negative, fractional and too large ids have no token either.
      if (this.#decoder.id_to_token(id) === undefined) {
        throw new RangeError(
          `decode: id ${id} at position ${i} is not a token of ${this.file} (vocabulary size ${this.vocabSize})`,
        );
      }
      list.push(id);
    }
    if (list.length === 0) return "";
    return this.#decoder.decode(list, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
  }
}

async function readJsonIfPresent(path: string): Promise<Json | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  return parseObject(text, path);
}

/** Loads `dir/tokenizer.json` with `dir/config.json` and `dir/tokenizer_config.json` if present. */
export async function loadHfTokenizer(dir: string): Promise<HfTokenizer> {
  const file = `${dir}/tokenizer.json`;
  const [tokenizerJson, config, tokenizerConfig] = await Promise.all([
    Deno.readTextFile(file),
    readJsonIfPresent(`${dir}/config.json`),
    readJsonIfPresent(`${dir}/tokenizer_config.json`),
  ]);
  return new HfTokenizer({ tokenizerJson, config, tokenizerConfig, file });
}
