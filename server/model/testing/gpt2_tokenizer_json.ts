/**
 * A GPT-2 vocabulary (vocab.json + merges.txt) in the layout of GPT-2's published tokenizer.json,
 * for tests of the tokenizer.json path. With `tokens`, only the first tokens - 1 ids are kept (the
 * 256 byte tokens, then merges in rank order, each merge's result being the next id) and
 * <|endoftext|> takes the last id: a valid, smaller byte-level BPE.
 */
export async function gpt2TokenizerJson(
  dir: string,
  opts: { tokens?: number } = {},
): Promise<Record<string, unknown>> {
  const full = JSON.parse(await Deno.readTextFile(`${dir}/vocab.json`)) as Record<string, number>;
  let merges = (await Deno.readTextFile(`${dir}/merges.txt`)).split("\n")
    .filter((l, i) => l !== "" && !(i === 0 && l.startsWith("#version")));
  let vocab = full, eos = full["<|endoftext|>"];
  if (opts.tokens !== undefined) {
    eos = opts.tokens - 1;
    vocab = Object.fromEntries(Object.entries(full).filter(([, id]) => id < eos));
    merges = merges.slice(0, eos - 256);
    for (const m of merges) {
      if (!(m.replace(" ", "") in vocab)) throw new Error(`merge ${m} makes no kept token`);
    }
  }
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{
      id: eos,
      content: "<|endoftext|>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    }],
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: {
      type: "ByteLevel",
      add_prefix_space: true,
      trim_offsets: false,
      use_regex: true,
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}
