/**
 * The frozen GPT-2 weights, named and laid out as the Hugging Face checkpoint stores them (Conv1D
 * weights are [in, out]). Loaded once; every engine reads the same arrays. The large matrices
 * (`Matrix`) stay in the checkpoint's dtype: float32, or f16/bf16 bits (see half.ts); vectors and
 * the position table are float32 (widened at load: they are small).
 */
import type { Gpt2Config } from "./gpt2_config.ts";
import type { Matrix } from "./half.ts";

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

export interface LoadedModel {
  dir: string;
  config: Gpt2Config;
  weights: Gpt2Weights;
  /** sha256 over the weights as float32, in a fixed order: the base-model fingerprint. */
  weightsHash: string;
}

/** Every array of the weights, in the fingerprint's order (see `hashWeights`). */
export function weightArrays(w: Gpt2Weights): Matrix[] {
  const out: Matrix[] = [w.wte, w.wpe, w.lnFG, w.lnFB];
  for (const l of w.layers) out.push(...Object.values(l) as Matrix[]);
  if (w.lmHead) out.push(w.lmHead);
  return out;
}

/** The frozen matrices (the arrays that may be 16-bit), in a fixed order. */
export function matrices(w: Gpt2Weights): Matrix[] {
  const out: Matrix[] = [w.wte];
  for (const l of w.layers) out.push(l.attnW, l.attnProjW, l.fcW, l.fcProjW);
  if (w.lmHead) out.push(w.lmHead);
  return out;
}

/** `w` with every frozen matrix replaced by `f(matrix)`; vectors and positions kept as they are. */
export function mapMatrices(w: Gpt2Weights, f: (m: Matrix) => Matrix): Gpt2Weights {
  const layers = w.layers.map((l) => ({
    ...l,
    attnW: f(l.attnW),
    attnProjW: f(l.attnProjW),
    fcW: f(l.fcW),
    fcProjW: f(l.fcProjW),
  }));
  return { ...w, wte: f(w.wte), layers, lmHead: w.lmHead ? f(w.lmHead) : undefined };
}
