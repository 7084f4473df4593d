/**
 * Loads a GPT-2 family checkpoint in Hugging Face layout: config.json plus model.safetensors
 * (or a sharded model.safetensors.index.json), keys with or without the `transformer.` prefix,
 * F32/F16/BF16. Every tensor is checked against the shape the config implies.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { Gpt2Config } from "./gpt2_config.ts";
import type { LlamaConfig } from "./llama_config.ts";
import { parseModelConfig } from "./model_config.ts";
import { isPacked, type Matrix, widenInto } from "./half.ts";
import { quantizeModel, type WeightMode } from "./int8.ts";
import { release } from "./mmap.ts";
import { openTensorFile, type TensorFile } from "./tensor_file.ts";
import {
  type Gpt2Weights,
  type LayerWeights,
  type LlamaLayerWeights,
  type LlamaWeights,
  type LoadedModel,
  type ModelWeights,
  weightArrays,
} from "./weights.ts";

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`${path}: file not found`);
    }
    throw e;
  }
}

export interface LoadOptions {
  /** Memory-map the safetensors files (default: where FFI allows); false reads them. */
  map?: boolean;
  /**
   * How the frozen matrices are kept (`WEIGHTS`): "stored" (default) as the checkpoint stores
   * them, or "int8", quantised after the fingerprint is taken (which stays the checkpoint's). For
   * int8 each mapped tensor's pages are dropped once hashed and once quantised, so the process
   * never holds the whole float file.
   */
  weights?: WeightMode;
}

/** Opens every safetensors file of the checkpoint; returns a name -> file lookup. */
async function openCheckpoint(
  dir: string,
  opts: LoadOptions,
): Promise<Map<string, TensorFile>> {
  const indexPath = join(dir, "model.safetensors.index.json");
  const single = join(dir, "model.safetensors");
  const byName = new Map<string, TensorFile>();
  let files: string[];
  let index: Record<string, string> | undefined;
  try {
    const raw = JSON.parse(await Deno.readTextFile(indexPath));
    if (typeof raw?.weight_map !== "object" || raw.weight_map === null) {
      throw new TypeError(`${indexPath}: weight_map must be an object`);
    }
    index = raw.weight_map as Record<string, string>;
    files = [...new Set(Object.values(index))];
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof SyntaxError) {
        throw new SyntaxError(`${indexPath}: not valid JSON (${e.message})`);
      }
      throw e;
    }
    files = ["model.safetensors"];
    try {
      await Deno.stat(single);
    } catch {
      throw new Deno.errors.NotFound(
        `${dir}: neither model.safetensors nor model.safetensors.index.json exists`,
      );
    }
  }
  const opened: TensorFile[] = [];
  try {
    for (const f of files) {
      if (f.includes("/") || f.includes("..")) {
        throw new RangeError(
          `${indexPath}: shard name ${JSON.stringify(f)} must be a plain file name`,
        );
      }
      const parsed = openTensorFile(join(dir, f), opts);
      opened.push(parsed);
      for (const name of parsed.tensors.keys()) {
        if (index && index[name] !== undefined && index[name] !== f) continue;
        byName.set(name, parsed);
      }
    }
    if (index) {
      for (const [name, f] of Object.entries(index)) {
        if (!byName.has(name)) {
          throw new RangeError(
            `${indexPath}: tensor "${name}" is mapped to ${f}, which does not hold it`,
          );
        }
      }
    }
  } catch (e) {
    for (const f of opened) f.close();
    throw e;
  }
  return byName;
}

/**
 * Reads named tensors out of the checkpoint files, trying each of `prefixes` before a name, and
 * checking each shape. Matrices keep their stored dtype (16-bit stays 16-bit); vectors are widened
 * to float32.
 */
function tensorReader(files: Map<string, TensorFile>, dir: string, prefixes: string[]) {
  const take = (key: string, shape: number[], asMatrix: boolean): Matrix => {
    const names = prefixes.map((p) => p + key);
    const name = names.find((k) => files.has(k));
    if (!name) {
      const nor = names.length > 1 ? ` (nor "${names.slice(1).join('", "')}")` : "";
      throw new RangeError(`${dir}: checkpoint has no tensor "${names[0]}"${nor}`);
    }
    const f = files.get(name)!;
    const info = f.tensors.get(name)!;
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new RangeError(
        `${f.file}: tensor "${name}" must have shape [${shape}] for this config: found [${info.shape}]`,
      );
    }
    return asMatrix ? f.matrix(name) : f.float32(name);
  };
  return {
    vector: (key: string, shape: number[]) => take(key, shape, false) as Float32Array,
    matrix: (key: string, shape: number[]) => take(key, shape, true),
  };
}

/**
 * The separate `lm_head.weight` [V, C] of an untied checkpoint (it lives outside the model's
 * prefix); undefined when tied, where a checkpoint may omit it or repeat the embedding.
 */
function untiedHead(
  files: Map<string, TensorFile>,
  config: { tieWordEmbeddings: boolean; vocabSize: number; nEmbd: number },
  dir: string,
): Matrix | undefined {
  if (config.tieWordEmbeddings) return undefined;
  if (!files.has("lm_head.weight")) {
    throw new RangeError(`${dir}: tie_word_embeddings is false but "lm_head.weight" is missing`);
  }
  return tensorReader(files, dir, [""]).matrix("lm_head.weight", [config.vocabSize, config.nEmbd]);
}

/** Reads the weights out of a set of checkpoint files, checking each shape against the config. */
export function readGpt2Weights(
  files: Map<string, TensorFile>,
  config: Gpt2Config,
  dir: string,
): Gpt2Weights {
  const C = config.nEmbd, F = config.nInner;
  const { vector: must, matrix } = tensorReader(files, dir, ["", "transformer."]);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.nLayer; i++) {
    const p = `h.${i}.`;
    layers.push({
      ln1G: must(p + "ln_1.weight", [C]),
      ln1B: must(p + "ln_1.bias", [C]),
      attnW: matrix(p + "attn.c_attn.weight", [C, 3 * C]),
      attnB: must(p + "attn.c_attn.bias", [3 * C]),
      attnProjW: matrix(p + "attn.c_proj.weight", [C, C]),
      attnProjB: must(p + "attn.c_proj.bias", [C]),
      ln2G: must(p + "ln_2.weight", [C]),
      ln2B: must(p + "ln_2.bias", [C]),
      fcW: matrix(p + "mlp.c_fc.weight", [C, F]),
      fcB: must(p + "mlp.c_fc.bias", [F]),
      fcProjW: matrix(p + "mlp.c_proj.weight", [F, C]),
      fcProjB: must(p + "mlp.c_proj.bias", [C]),
    });
  }
  const wte = matrix("wte.weight", [config.vocabSize, C]);
  const lmHead = untiedHead(files, config, dir);
  return {
    wte,
    wpe: must("wpe.weight", [config.nPositions, C]),
    layers,
    lnFG: must("ln_f.weight", [C]),
    lnFB: must("ln_f.bias", [C]),
    lmHead,
  };
}

/**
 * Reads a Llama-family checkpoint's weights (Hugging Face names, with or without the `model.`
 * prefix), checking each shape against the config. nn.Linear weights are [out, in].
 */
export function readLlamaWeights(
  files: Map<string, TensorFile>,
  config: LlamaConfig,
  dir: string,
): LlamaWeights {
  const { nEmbd: C, nInner: F, vocabSize: V, nHead: H, nKvHead: KVH, headDim: D } = config;
  const QW = H * D, KW = KVH * D;
  const read = tensorReader(files, dir, ["model.", ""]);
  const vec = (key: string, n: number) => read.vector(key, [n]);
  const matrix = (key: string, rows: number, cols: number) => read.matrix(key, [rows, cols]);
  const layers: LlamaLayerWeights[] = [];
  for (let i = 0; i < config.nLayer; i++) {
    const p = `layers.${i}.`;
    const l: LlamaLayerWeights = {
      inNorm: vec(p + "input_layernorm.weight", C),
      q: matrix(p + "self_attn.q_proj.weight", QW, C),
      k: matrix(p + "self_attn.k_proj.weight", KW, C),
      v: matrix(p + "self_attn.v_proj.weight", KW, C),
      o: matrix(p + "self_attn.o_proj.weight", C, QW),
      postNorm: vec(p + "post_attention_layernorm.weight", C),
      gate: matrix(p + "mlp.gate_proj.weight", F, C),
      up: matrix(p + "mlp.up_proj.weight", F, C),
      down: matrix(p + "mlp.down_proj.weight", C, F),
    };
    if (config.qkvBias) {
      l.qB = vec(p + "self_attn.q_proj.bias", QW);
      l.kB = vec(p + "self_attn.k_proj.bias", KW);
      l.vB = vec(p + "self_attn.v_proj.bias", KW);
    }
    if (config.oBias) l.oB = vec(p + "self_attn.o_proj.bias", C);
    layers.push(l);
  }
  const lmHead = untiedHead(files, config, dir);
  return {
    wte: matrix("embed_tokens.weight", V, C),
    layers,
    norm: vec("norm.weight", C),
    lmHead,
  };
}

/**
 * sha256 over all weights as float32, in a fixed order: identifies the base model exactly. A
 * 16-bit matrix is hashed as its widened values, so the fingerprint does not depend on whether
 * an engine keeps it 16-bit (tasks registered before weights stayed 16-bit still match).
 */
export async function hashWeights(w: ModelWeights, releaseAfter = false): Promise<string> {
  // Incremental, in 1 MiB pieces: the digest of the concatenation, with no copy of the model
  // nor of a whole tensor (mapped weights are hashed straight from the page cache).
  const hash = createHash("sha256");
  let scratch: Float32Array | undefined;
  for (const p of weightArrays(w)) {
    if (isPacked(p)) {
      scratch ??= new Float32Array(HASH_CHUNK / 4);
      for (let at = 0; at < p.bits.length; at += scratch.length) {
        const n = Math.min(scratch.length, p.bits.length - at);
        widenInto(p, at, n, scratch);
        hash.update(new Uint8Array(scratch.buffer, 0, n * 4));
        if (releaseAfter) release(p.bits.subarray(at, at + n));
      }
      continue;
    }
    const bytes = new Uint8Array(p.buffer, p.byteOffset, p.byteLength);
    for (let at = 0; at < bytes.length; at += HASH_CHUNK) {
      const chunk = bytes.subarray(at, at + HASH_CHUNK);
      hash.update(chunk);
      if (releaseAfter) release(chunk);
    }
  }
  return await Promise.resolve(hash.digest("hex"));
}

const HASH_CHUNK = 1 << 20;

/**
 * Loads config and weights of the model in `dir` (tokenizer: see tokenizer.ts). Float32 tensors
 * are views of the memory-mapped files where this process may map them (see tensor_file.ts).
 */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const configPath = join(dir, "config.json");
  const config = parseModelConfig(await readText(configPath), configPath);
  const files = await openCheckpoint(dir, opts);
  try {
    const int8 = opts.weights === "int8";
    const model: LoadedModel = config.arch === "llama"
      ? { dir, config, weights: readLlamaWeights(files, config, dir), weightsHash: "" }
      : { dir, config, weights: readGpt2Weights(files, config, dir), weightsHash: "" };
    model.weightsHash = await hashWeights(model.weights, int8);
    return int8 ? quantizeModel(model) : model;
  } finally {
    for (const f of new Set(files.values())) f.close();
  }
}
