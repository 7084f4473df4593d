/**
 * The frozen GPT-2 weights, named and laid out as the Hugging Face checkpoint stores them (Conv1D
 * weights are [in, out]). Loaded once; every engine reads the same arrays. The large matrices
 * (`Matrix`) stay in the checkpoint's dtype: float32, or f16/bf16 bits (see half.ts); vectors and
 * the position table are float32 (widened at load: they are small).
 */
import type { Gpt2Config } from "./gpt2_config.ts";
import type { LlamaConfig } from "./llama_config.ts";
import { type Matrix, matrixBytes } from "./half.ts";

export interface LayerWeights {
  ln1G: Float32Array; // [C]        h.i.ln_1.weight
  ln1B: Float32Array; // [C]        h.i.ln_1.bias
  attnW: Matrix; // [C, 3C]   h.i.attn.c_attn.weight
  attnB: Float32Array; // [3C]      h.i.attn.c_attn.bias
  attnProjW: Matrix; // [C, C] h.i.attn.c_proj.weight
  attnProjB: Float32Array; // [C]    h.i.attn.c_proj.bias
  ln2G: Float32Array; // [C]        h.i.ln_2.weight
  ln2B: Float32Array; // [C]        h.i.ln_2.bias
  fcW: Matrix; // [C, F]      h.i.mlp.c_fc.weight
  fcB: Float32Array; // [F]         h.i.mlp.c_fc.bias
  fcProjW: Matrix; // [F, C]  h.i.mlp.c_proj.weight
  fcProjB: Float32Array; // [C]     h.i.mlp.c_proj.bias
}

export interface Gpt2Weights {
  wte: Matrix; // [V, C] also the (tied) lm_head
  wpe: Float32Array; // [P, C]
  layers: LayerWeights[];
  lnFG: Float32Array; // [C] ln_f.weight
  lnFB: Float32Array; // [C] ln_f.bias
  /** [V, C] when the checkpoint has an untied lm_head; otherwise undefined (use wte). */
  lmHead?: Matrix;
}

/**
 * One Llama-family block, in the Hugging Face names and nn.Linear layout ([out, in]):
 * model.layers.i.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
 * mlp.{gate,up,down}_proj}.
 */
export interface LlamaLayerWeights {
  inNorm: Float32Array; // [C]
  q: Matrix; // [H * D, C]
  k: Matrix; // [KVH * D, C]
  v: Matrix; // [KVH * D, C]
  /** q/k/v biases (Qwen2). */
  qB?: Float32Array; // [H * D]
  kB?: Float32Array; // [KVH * D]
  vB?: Float32Array; // [KVH * D]
  o: Matrix; // [C, H * D]
  /** o_proj's bias (Llama's attention_bias). */
  oB?: Float32Array; // [C]
  postNorm: Float32Array; // [C]
  gate: Matrix; // [F, C]
  up: Matrix; // [F, C]
  down: Matrix; // [C, F]
}

export interface LlamaWeights {
  wte: Matrix; // [V, C] model.embed_tokens.weight, also the lm_head when tied
  layers: LlamaLayerWeights[];
  norm: Float32Array; // [C] model.norm.weight
  /** [V, C] lm_head.weight when untied. */
  lmHead?: Matrix;
}

interface Loaded<C, W> {
  dir: string;
  config: C;
  weights: W;
  /** sha256 over the weights as float32, in a fixed order: the base-model fingerprint. */
  weightsHash: string;
}

export type Gpt2Model = Loaded<Gpt2Config, Gpt2Weights>;
export type LlamaModel = Loaded<LlamaConfig, LlamaWeights>;
/** A loaded checkpoint of either family; `config.arch` tells which. */
export type LoadedModel = Gpt2Model | LlamaModel;

export function isLlama(m: LoadedModel): m is LlamaModel {
  return m.config.arch === "llama";
}

/** `m` as a GPT-2 model, for code that runs GPT-2's blocks only; throws naming the family. */
export function asGpt2(m: LoadedModel, what = "this engine"): Gpt2Model {
  if (isLlama(m)) {
    throw new RangeError(`${what} runs GPT-2 checkpoints only: found ${m.config.modelType}`);
  }
  return m;
}

export type ModelWeights = Gpt2Weights | LlamaWeights;

function isLlamaWeights(w: ModelWeights): w is LlamaWeights {
  return "norm" in w;
}

/** A Llama block's arrays in a fixed order (absent biases skipped). */
function llamaLayerArrays(l: LlamaLayerWeights): Matrix[] {
  const out: (Matrix | undefined)[] = [
    l.inNorm,
    l.q,
    l.qB,
    l.k,
    l.kB,
    l.v,
    l.vB,
    l.o,
    l.oB,
    l.postNorm,
    l.gate,
    l.up,
    l.down,
  ];
  return out.filter((a): a is Matrix => a !== undefined);
}

/** Every array of the weights, in the fingerprint's order (see `hashWeights`). */
export function weightArrays(w: ModelWeights): Matrix[] {
  if (isLlamaWeights(w)) {
    const out: Matrix[] = [w.wte, w.norm];
    for (const l of w.layers) out.push(...llamaLayerArrays(l));
    if (w.lmHead) out.push(w.lmHead);
    return out;
  }
  const out: Matrix[] = [w.wte, w.wpe, w.lnFG, w.lnFB];
  for (const l of w.layers) out.push(...Object.values(l) as Matrix[]);
  if (w.lmHead) out.push(w.lmHead);
  return out;
}

/** Bytes the weights occupy as held (16-bit matrices at 2 bytes a value, int8 at 1 plus scales). */
export function weightBytes(w: ModelWeights): number {
  return weightArrays(w).reduce((n, a) => n + matrixBytes(a), 0);
}

/** The frozen matrices (the arrays that may be 16-bit), in a fixed order. */
export function matrices(w: ModelWeights): Matrix[] {
  const out: Matrix[] = [w.wte];
  if (isLlamaWeights(w)) {
    for (const l of w.layers) out.push(l.q, l.k, l.v, l.o, l.gate, l.up, l.down);
  } else {
    for (const l of w.layers) out.push(l.attnW, l.attnProjW, l.fcW, l.fcProjW);
  }
  if (w.lmHead) out.push(w.lmHead);
  return out;
}

/** `w` with every frozen matrix replaced by `f(matrix)`; vectors and positions kept as they are. */
export function mapMatrices<W extends ModelWeights>(w: W, f: (m: Matrix) => Matrix): W {
  const lmHead = w.lmHead ? f(w.lmHead) : undefined;
  if (isLlamaWeights(w)) {
    const layers = w.layers.map((l) => ({
      ...l,
      q: f(l.q),
      k: f(l.k),
      v: f(l.v),
      o: f(l.o),
      gate: f(l.gate),
      up: f(l.up),
      down: f(l.down),
    }));
    return { ...w, wte: f(w.wte), layers, lmHead };
  }
  const g = w as Gpt2Weights;
  const layers = g.layers.map((l) => ({
    ...l,
    attnW: f(l.attnW),
    attnProjW: f(l.attnProjW),
    fcW: f(l.fcW),
    fcProjW: f(l.fcProjW),
  }));
  return { ...g, wte: f(g.wte), layers, lmHead } as W;
}
