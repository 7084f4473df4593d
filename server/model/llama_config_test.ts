import { assertEquals, assertThrows } from "../../test/assert.ts";
import { parseLlamaConfig } from "./llama_config.ts";
import { kvRowBytes, parseModelConfig } from "./model_config.ts";

const SMOLLM2 = {
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  head_dim: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  max_position_embeddings: 8192,
  vocab_size: 49152,
  tie_word_embeddings: true,
  bos_token_id: 0,
  eos_token_id: 0,
};

const parse = (over: Record<string, unknown>) =>
  parseLlamaConfig(JSON.stringify({ ...SMOLLM2, ...over }), "/m/config.json");

Deno.test("parseModelConfig: llama and qwen2 model types read as Llama blocks, the rest as GPT-2", () => {
  const c = parseModelConfig(JSON.stringify(SMOLLM2), "c.json");
  assertEquals(c.arch, "llama");
  assertEquals(
    c.arch === "llama" && [c.nHead, c.nKvHead, c.headDim, c.qkvBias, c.oBias],
    [9, 3, 64, false, false],
  );
  const q = parse({ model_type: "qwen2" });
  assertEquals([q.qkvBias, q.oBias], [true, false]);
  const b = parse({ attention_bias: true });
  assertEquals([b.qkvBias, b.oBias], [true, true]);
  assertEquals(parse({ eos_token_id: [7, 8] }).eosTokenId, 7);
  assertEquals(parse({ head_dim: undefined, hidden_size: 576 }).headDim, 64);
  const scaled = parse({
    rope_scaling: {
      rope_type: "llama3",
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
  });
  assertEquals(scaled.ropeScaling?.factor, 32);
});

Deno.test("parseLlamaConfig refuses what the blocks cannot run, naming the file and the key", () => {
  const cases: [Record<string, unknown>, string][] = [
    [
      { num_key_value_heads: 4 },
      "/m/config.json: num_attention_heads (9) must be a multiple of num_key_value_heads (4)",
    ],
    [{ hidden_act: "gelu" }, '/m/config.json: hidden_act must be "silu"'],
    [
      { rope_scaling: { rope_type: "yarn", factor: 4 } },
      "/m/config.json: rope_scaling.rope_type must be",
    ],
    [
      { rope_scaling: { rope_type: "llama3", factor: 8 } },
      "/m/config.json: rope_scaling.low_freq_factor",
    ],
    [{ mlp_bias: true }, "/m/config.json: mlp_bias is not supported"],
    [{ sliding_window: 4096, use_sliding_window: true }, "/m/config.json: use_sliding_window"],
    [{ eos_token_id: 49152 }, "/m/config.json: eos_token_id must be a token id below vocab_size"],
    [{ head_dim: 63 }, "/m/config.json: head_dim must be even"],
    [{ rms_norm_eps: -1 }, "/m/config.json: rms_norm_eps must be a positive number"],
    [{ hidden_size: 0 }, "/m/config.json: hidden_size must be a positive integer"],
  ];
  for (const [over, message] of cases) assertThrows(() => parse(over), RangeError, message);
});

Deno.test("kvRowBytes: Llama's KV rows are its key/value heads' width, GPT-2's the hidden size", () => {
  // SmolLM2-135M: 30 layers x (K + V) x 3 heads x 64 x 4 bytes.
  assertEquals(kvRowBytes(parse({})), 30 * 2 * 192 * 4);
  const gpt2 = parseModelConfig(
    JSON.stringify({ n_embd: 768, n_head: 12, n_layer: 12, n_positions: 1024, vocab_size: 50257 }),
  );
  assertEquals(kvRowBytes(gpt2), 12 * 2 * 768 * 4);
});
