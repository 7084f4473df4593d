/**
 * Llama-family `config.json` (model_type llama, qwen2, mistral-free subset), validated into what
 * the Llama blocks need: RMSNorm, rotary positions (`rope_theta`, Llama 3's `rope_scaling`),
 * grouped-query attention, a SwiGLU MLP, optional q/k/v biases (Qwen2), tied or separate lm_head.
 * Errors name the file and the key.
 */
import { parseJsonObject, positiveInt } from "../util/json.ts";

/** Llama 3's frequency-dependent RoPE rescaling (`rope_scaling.rope_type: "llama3"`). */
export interface Llama3RopeScaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

export interface LlamaConfig {
  arch: "llama";
  /** The checkpoint's model_type: "llama" or "qwen2". */
  modelType: string;
  vocabSize: number;
  /** max_position_embeddings. */
  nPositions: number;
  /** hidden_size. */
  nEmbd: number;
  nLayer: number;
  /** num_attention_heads. */
  nHead: number;
  /** num_key_value_heads (grouped-query attention: nHead is a multiple of it). */
  nKvHead: number;
  /** head_dim, or hidden_size / num_attention_heads. */
  headDim: number;
  /** intermediate_size. */
  nInner: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling?: Llama3RopeScaling;
  /** q, k and v projections have biases (Qwen2 always; Llama with attention_bias). */
  qkvBias: boolean;
  /** o_proj has a bias (Llama with attention_bias; never Qwen2). */
  oBias: boolean;
  bosTokenId: number;
  eosTokenId: number;
  tieWordEmbeddings: boolean;
}

const TYPES = ["llama", "qwen2"];

export function isLlamaModelType(t: unknown): boolean {
  return typeof t === "string" && TYPES.includes(t);
}

export function parseLlamaConfig(text: string, file = "config.json"): LlamaConfig {
  const r = parseJsonObject(text, file);
  const modelType = r.model_type;
  if (!isLlamaModelType(modelType)) {
    throw new RangeError(
      `${file}: model_type must be one of ${TYPES.join(", ")}: found ${JSON.stringify(modelType)}`,
    );
  }
  const int = (key: string, fallback?: number) => positiveInt(r, key, file, fallback);
  const num = (key: string, fallback: number): number => {
    const v = r[key] ?? fallback;
    if (typeof v !== "number" || !(v > 0)) {
      throw new RangeError(`${file}: ${key} must be a positive number: found ${JSON.stringify(v)}`);
    }
    return v;
  };
  const act = r.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new RangeError(`${file}: hidden_act must be "silu": found ${JSON.stringify(act)}`);
  }
  const nEmbd = int("hidden_size");
  const nHead = int("num_attention_heads");
  const nKvHead = int("num_key_value_heads", nHead);
  if (nHead % nKvHead !== 0) {
    throw new RangeError(
      `${file}: num_attention_heads (${nHead}) must be a multiple of num_key_value_heads (${nKvHead})`,
    );
  }
  if (r.head_dim === undefined || r.head_dim === null) {
    if (nEmbd % nHead !== 0) {
      throw new RangeError(
        `${file}: hidden_size (${nEmbd}) must be divisible by num_attention_heads (${nHead}) when head_dim is unset`,
      );
    }
  }
  const headDim = r.head_dim === undefined || r.head_dim === null ? nEmbd / nHead : int("head_dim");
  if (headDim % 2 !== 0) throw new RangeError(`${file}: head_dim must be even: found ${headDim}`);
  const vocabSize = int("vocab_size");
  const id = (key: string): number => {
    const v = r[key];
    // Several EOS ids (Llama 3's generation config) are not taken: the first one ends text.
    const first = Array.isArray(v) ? v[0] : v;
    if (first === undefined || first === null) return vocabSize - 1;
    if (typeof first !== "number" || !Number.isInteger(first) || first < 0 || first >= vocabSize) {
      throw new RangeError(
        `${file}: ${key} must be a token id below vocab_size: found ${JSON.stringify(v)}`,
      );
    }
    return first;
  };
  if (r.mlp_bias === true) throw new RangeError(`${file}: mlp_bias is not supported: found true`);
  if (r.sliding_window !== undefined && r.sliding_window !== null && r.use_sliding_window) {
    throw new RangeError(`${file}: use_sliding_window is not supported: found true`);
  }
  return {
    arch: "llama",
    modelType: modelType as string,
    vocabSize,
    nPositions: int("max_position_embeddings"),
    nEmbd,
    nLayer: int("num_hidden_layers"),
    nHead,
    nKvHead,
    headDim,
    nInner: int("intermediate_size"),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    ropeScaling: parseRopeScaling(r.rope_scaling, file),
    // Qwen2's q/k/v projections always have biases and o_proj none (modeling_qwen2.py,
    // Qwen2Attention); Llama's attention_bias puts one on all four (modeling_llama.py,
    // LlamaAttention).
    qkvBias: modelType === "qwen2" || r.attention_bias === true,
    oBias: modelType !== "qwen2" && r.attention_bias === true,
    bosTokenId: id("bos_token_id"),
    eosTokenId: id("eos_token_id"),
    tieWordEmbeddings: r.tie_word_embeddings === true,
  };
}

function parseRopeScaling(v: unknown, file: string): Llama3RopeScaling | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v)) {
    throw new RangeError(`${file}: rope_scaling must be an object or null`);
  }
  const s = v as Record<string, unknown>;
  const type = s.rope_type ?? s.type;
  if (type === "default") return undefined;
  if (type !== "llama3") {
    throw new RangeError(
      `${file}: rope_scaling.rope_type must be "llama3" or "default": found ${
        JSON.stringify(type)
      }`,
    );
  }
  const pos = (key: string): number => {
    const x = s[key];
    if (typeof x !== "number" || !(x > 0)) {
      throw new RangeError(
        `${file}: rope_scaling.${key} must be a positive number: found ${JSON.stringify(x)}`,
      );
    }
    return x;
  };
  return {
    factor: pos("factor"),
    lowFreqFactor: pos("low_freq_factor"),
    highFreqFactor: pos("high_freq_factor"),
    originalMaxPositions: pos("original_max_position_embeddings"),
  };
}
