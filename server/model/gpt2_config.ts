/** GPT-2 family `config.json`, validated into the few numbers the engine needs. */

import { parseJsonObject, positiveInt } from "../util/json.ts";

export interface Gpt2Config {
  /** GPT-2's blocks (the default): LayerNorm, learned positions, fused qkv, GELU MLP. */
  arch?: "gpt2";
  vocabSize: number;
  nPositions: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  /** MLP width; `n_inner` or 4 * n_embd. */
  nInner: number;
  layerNormEpsilon: number;
  activation: "gelu_new" | "gelu" | "relu";
  bosTokenId: number;
  eosTokenId: number;
  tieWordEmbeddings: boolean;
}

const ACTIVATIONS = ["gelu_new", "gelu_pytorch_tanh", "gelu", "relu"] as const;

/** Parses and validates a config.json text; errors name the file and the key. */
export function parseGpt2Config(text: string, file = "config.json"): Gpt2Config {
  const r = parseJsonObject(text, file);
  if (r.model_type !== undefined && r.model_type !== "gpt2") {
    throw new RangeError(
      `${file}: model_type must be "gpt2": found ${JSON.stringify(r.model_type)}`,
    );
  }
  const int = (key: string, fallback?: number) => positiveInt(r, key, file, fallback);
  const nEmbd = int("n_embd");
  const nHead = int("n_head");
  if (nEmbd % nHead !== 0) {
    throw new RangeError(`${file}: n_embd (${nEmbd}) must be divisible by n_head (${nHead})`);
  }
  const act = (r.activation_function ?? "gelu_new") as string;
  if (!(ACTIVATIONS as readonly string[]).includes(act)) {
    throw new RangeError(
      `${file}: activation_function must be one of ${ACTIVATIONS.join(", ")}: found ${
        JSON.stringify(act)
      }`,
    );
  }
  const eps = r.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) {
    throw new RangeError(`${file}: layer_norm_epsilon must be a positive number: found ${eps}`);
  }
  const vocabSize = int("vocab_size");
  const nInner = r.n_inner === null || r.n_inner === undefined ? 4 * nEmbd : int("n_inner");
  return {
    vocabSize,
    nPositions: int("n_positions", r.n_ctx as number | undefined),
    nEmbd,
    nLayer: int("n_layer"),
    nHead,
    nInner,
    layerNormEpsilon: eps,
    activation: act === "gelu_pytorch_tanh" ? "gelu_new" : act as Gpt2Config["activation"],
    bosTokenId: (r.bos_token_id as number | undefined) ?? vocabSize - 1,
    eosTokenId: (r.eos_token_id as number | undefined) ?? vocabSize - 1,
    tieWordEmbeddings: r.tie_word_embeddings !== false,
  };
}
