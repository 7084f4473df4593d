/**
 * The frozen GPT-2 weights as float32 arrays, named and laid out as the Hugging Face checkpoint
 * stores them (Conv1D weights are [in, out]). Loaded once; every engine reads the same arrays.
 */
import type { Gpt2Config } from "./config.ts";

export interface LayerWeights {
  ln1G: Float32Array; // [C]        h.i.ln_1.weight
  ln1B: Float32Array; // [C]        h.i.ln_1.bias
  attnW: Float32Array; // [C, 3C]   h.i.attn.c_attn.weight
  attnB: Float32Array; // [3C]      h.i.attn.c_attn.bias
  attnProjW: Float32Array; // [C, C] h.i.attn.c_proj.weight
  attnProjB: Float32Array; // [C]    h.i.attn.c_proj.bias
  ln2G: Float32Array; // [C]        h.i.ln_2.weight
  ln2B: Float32Array; // [C]        h.i.ln_2.bias
  fcW: Float32Array; // [C, F]      h.i.mlp.c_fc.weight
  fcB: Float32Array; // [F]         h.i.mlp.c_fc.bias
  fcProjW: Float32Array; // [F, C]  h.i.mlp.c_proj.weight
  fcProjB: Float32Array; // [C]     h.i.mlp.c_proj.bias
}

export interface Gpt2Weights {
  wte: Float32Array; // [V, C] also the (tied) lm_head
  wpe: Float32Array; // [P, C]
  layers: LayerWeights[];
  lnFG: Float32Array; // [C] ln_f.weight
  lnFB: Float32Array; // [C] ln_f.bias
  /** [V, C] when the checkpoint has an untied lm_head; otherwise undefined (use wte). */
  lmHead?: Float32Array;
}

export interface LoadedModel {
  dir: string;
  config: Gpt2Config;
  weights: Gpt2Weights;
  /** sha256 over the float32 weights in a fixed order: the base-model fingerprint. */
  weightsHash: string;
}
