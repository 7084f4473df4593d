/**
 * A checkpoint's `config.json`, whichever family: GPT-2 (`gpt2_config.ts`) or Llama
 * (`llama_config.ts`, model_type llama or qwen2). Engines branch on `arch`; everything above them
 * reads only the fields both share (sizes, positions, special token ids).
 */
import { type Gpt2Config, parseGpt2Config } from "./gpt2_config.ts";
import { isLlamaModelType, type LlamaConfig, parseLlamaConfig } from "./llama_config.ts";
import { parseJsonObject } from "../util/json.ts";

export type ModelConfig = Gpt2Config | LlamaConfig;

export function parseModelConfig(text: string, file = "config.json"): ModelConfig {
  const type = parseJsonObject(text, file).model_type;
  return isLlamaModelType(type) ? parseLlamaConfig(text, file) : parseGpt2Config(text, file);
}

/**
 * Bytes of one token's KV-cache row: a key and a value in every layer, float32. Llama's keys and
 * values have nKvHead heads of headDim (grouped-query attention), GPT-2's the whole hidden size.
 */
export function kvRowBytes(config: ModelConfig): number {
  const width = config.arch === "llama" ? config.nKvHead * config.headDim : config.nEmbd;
  return config.nLayer * 2 * width * 4;
}
