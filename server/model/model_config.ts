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
