/**
 * Random GPT-2 family models with the real shapes of the Hugging Face checkpoints (`gpt2`,
 * `gpt2-medium`, `gpt2-large`, `gpt2-xl`), in memory or written to disk in Hugging Face layout
 * (config.json, safetensors single or sharded, F32/F16/BF16, keys with or without `transformer.`,
 * the `attn.bias`/`attn.masked_bias` buffers, tied or separate `lm_head`, tokenizer.json or
 * vocab.json + merges.txt). For tests and benchmarks: nothing large is committed; the weights are
 * generated where they are needed. Files are written tensor by tensor (no whole-file buffer).
 */
import type { Gpt2Config } from "../gpt2_config.ts";
import {
  type Gpt2Model,
  type Gpt2Weights,
  type LayerWeights,
  type LoadedModel,
  mapMatrices,
} from "../weights.ts";
import {
  type HalfDtype,
  halfFromFloat32,
  type Matrix,
  toBf16Bits,
  toF16Bits,
  toFloat32,
} from "../half.ts";

export interface Gpt2Shape {
  nEmbd: number;
  nHead: number;
  nLayer: number;
  vocabSize: number;
  nPositions: number;
}

/** The shapes of the published checkpoints (config.json of each Hugging Face repository). */
export const GPT2_SHAPES: Record<string, Gpt2Shape> = {
  "gpt2": { nEmbd: 768, nHead: 12, nLayer: 12, vocabSize: 50257, nPositions: 1024 },
  "gpt2-medium": { nEmbd: 1024, nHead: 16, nLayer: 24, vocabSize: 50257, nPositions: 1024 },
  "gpt2-large": { nEmbd: 1280, nHead: 20, nLayer: 36, vocabSize: 50257, nPositions: 1024 },
  "gpt2-xl": { nEmbd: 1600, nHead: 25, nLayer: 48, vocabSize: 50257, nPositions: 1024 },
};

export function gpt2Shape(name: string): Gpt2Shape {
  const s = GPT2_SHAPES[name];
  if (!s) {
    throw new RangeError(
      `model must be one of ${Object.keys(GPT2_SHAPES).join(", ")}: found ${JSON.stringify(name)}`,
    );
  }
  return s;
}

/** Parameters of a shape (tied LM head), for FLOP and memory figures. */
export function parameterCount(s: Gpt2Shape): number {
  const C = s.nEmbd, F = 4 * C;
  const layer = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * F + F + F * C + C;
  return s.vocabSize * C + s.nPositions * C + s.nLayer * layer + 2 * C;
}

/** Deterministic approximately normal numbers (sum of two uniforms): mean, deviation `std`. */
function fillNormal(out: Float32Array, seed: number, std: number, mean = 0): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const k = std * Math.sqrt(6) / 2 ** 32; // each int32 uniform has variance 2^64 / 12
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const a = s | 0;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = mean + (a + (s | 0)) * k;
  }
  return out;
}

export interface RandomModelOptions {
  /** Fewer layers than the shape (tests keep the real widths, vocabulary and positions). */
  layers?: number;
  nPositions?: number;
  seed?: number;
  /** A separate lm_head (tie_word_embeddings false). */
  untied?: boolean;
}

/** The config of `shape` (GPT-2's defaults for everything the shape does not say). */
function configOf(shape: Gpt2Shape, opts: RandomModelOptions = {}): Gpt2Config {
  const V = shape.vocabSize;
  return {
    vocabSize: V,
    nPositions: opts.nPositions ?? shape.nPositions,
    nEmbd: shape.nEmbd,
    nLayer: opts.layers ?? shape.nLayer,
    nHead: shape.nHead,
    nInner: 4 * shape.nEmbd,
    layerNormEpsilon: 1e-5,
    activation: "gelu_new",
    bosTokenId: V - 1,
    eosTokenId: V - 1,
    tieWordEmbeddings: !opts.untied,
  };
}

/** A random model of `shape` in memory, initialised at GPT-2's scale (std 0.02). */
export function randomGpt2(shape: Gpt2Shape, opts: RandomModelOptions = {}): Gpt2Model {
  const C = shape.nEmbd, F = 4 * C, V = shape.vocabSize;
  const P = opts.nPositions ?? shape.nPositions, L = opts.layers ?? shape.nLayer;
  let seed = opts.seed ?? 1;
  const rnd = (n: number, std = 0.02, mean = 0) =>
    fillNormal(new Float32Array(n), seed++, std, mean);
  const config = configOf(shape, opts);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < L; l++) {
    layers.push({
      ln1G: rnd(C, 0.1, 1),
      ln1B: rnd(C),
      attnW: rnd(C * 3 * C),
      attnB: rnd(3 * C),
      attnProjW: rnd(C * C, 0.02 / Math.sqrt(2 * L)),
      attnProjB: rnd(C),
      ln2G: rnd(C, 0.1, 1),
      ln2B: rnd(C),
      fcW: rnd(C * F),
      fcB: rnd(F),
      fcProjW: rnd(F * C, 0.02 / Math.sqrt(2 * L)),
      fcProjB: rnd(C),
    });
  }
  const weights: Gpt2Weights = {
    wte: rnd(V * C),
    wpe: rnd(P * C, 0.01),
    layers,
    lnFG: rnd(C, 0.1, 1),
    lnFB: rnd(C),
    lmHead: opts.untied ? rnd(V * C) : undefined,
  };
  return { dir: "(random)", config, weights, weightsHash: `random-${opts.seed ?? 1}` };
}

/** `m` with every 16-bit matrix widened to float32 (the same values, in new arrays). */
export function widened<M extends LoadedModel>(m: M): M {
  return { ...m, weights: mapMatrices(m.weights, toFloat32) };
}

/** `m` with every matrix rounded to `dtype` and kept 16-bit, as a 16-bit checkpoint loads. */
export function halved<M extends LoadedModel>(m: M, dtype: HalfDtype): M {
  const h = (x: Matrix) => halfFromFloat32(dtype, toFloat32(x));
  return { ...m, weights: mapMatrices(m.weights, h) };
}

export type StoredDtype = "F32" | "F16" | "BF16";

export interface WriteOptions {
  dtype?: StoredDtype;
  /** Keys under `transformer.` (as save_pretrained writes them) or bare (the `gpt2` repo). */
  prefix?: boolean;
  /** Also write each layer's attn.bias [1, 1, P, P] and attn.masked_bias [] buffers. */
  buffers?: boolean | "BOOL";
  /** Split into this many shards with a model.safetensors.index.json. Default 1. */
  shards?: number;
  tokenizer?: "json" | "vocab" | "none";
}

/**
 * The tensors of a model under Hugging Face names, in the order save_pretrained writes them
 * (16-bit matrices widened: writing them back as F16/BF16 gives the same bits).
 */
export function hfTensors(
  m: Gpt2Model,
  prefix: boolean,
): Array<[string, number[], Float32Array]> {
  const { nEmbd: C, nInner: F, vocabSize: V, nPositions: P } = m.config;
  const p = prefix ? "transformer." : "";
  const w = m.weights;
  const out: Array<[string, number[], Float32Array]> = [
    [`${p}wte.weight`, [V, C], toFloat32(w.wte)],
    [`${p}wpe.weight`, [P, C], w.wpe],
  ];
  w.layers.forEach((l, i) => {
    const h = `${p}h.${i}.`;
    out.push(
      [h + "ln_1.weight", [C], l.ln1G],
      [h + "ln_1.bias", [C], l.ln1B],
      [h + "attn.c_attn.weight", [C, 3 * C], toFloat32(l.attnW)],
      [h + "attn.c_attn.bias", [3 * C], l.attnB],
      [h + "attn.c_proj.weight", [C, C], toFloat32(l.attnProjW)],
      [h + "attn.c_proj.bias", [C], l.attnProjB],
      [h + "ln_2.weight", [C], l.ln2G],
      [h + "ln_2.bias", [C], l.ln2B],
      [h + "mlp.c_fc.weight", [C, F], toFloat32(l.fcW)],
      [h + "mlp.c_fc.bias", [F], l.fcB],
      [h + "mlp.c_proj.weight", [F, C], toFloat32(l.fcProjW)],
      [h + "mlp.c_proj.bias", [C], l.fcProjB],
    );
  });
  out.push([`${p}ln_f.weight`, [C], w.lnFG], [`${p}ln_f.bias`, [C], w.lnFB]);
  if (w.lmHead) out.push(["lm_head.weight", [V, C], toFloat32(w.lmHead)]);
  return out;
}

function encode(data: Float32Array, dtype: StoredDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  const conv = dtype === "F16" ? toF16Bits : toBf16Bits;
  for (let i = 0; i < data.length; i++) out[i] = conv(data[i]);
  return new Uint8Array(out.buffer);
}

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  bytes: () => Uint8Array;
  size: number;
}

async function writeSafetensorsFile(path: string, entries: Entry[]): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.size] };
    offset += e.size;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += " ";
  const head = new Uint8Array(8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  head.set(new TextEncoder().encode(json), 8);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await writeAll(f, head);
    for (const e of entries) await writeAll(f, e.bytes());
  } finally {
    f.close();
  }
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await f.write(bytes.subarray(at));
}

/**
 * Writes `m` to `dir` as a Hugging Face checkpoint would store it. Returns the files written.
 */
export function writeHfCheckpoint(
  dir: string,
  m: Gpt2Model,
  opts: WriteOptions = {},
): Promise<string[]> {
  const tensors = hfTensors(m, opts.prefix ?? false)
    .map(([name, shape, data]): LazyTensor => [name, shape, () => data]);
  return writeTensors(dir, m.config, tensors, opts);
}

/**
 * Writes a random model of `shape` (initialised as `randomGpt2` does, tied head) without holding
 * it: each tensor is generated as it is written, so a 1.5B checkpoint needs one tensor of memory.
 */
export function writeRandomCheckpoint(
  dir: string,
  shape: Gpt2Shape,
  opts: WriteOptions & { seed?: number } = {},
): Promise<string[]> {
  const C = shape.nEmbd, F = 4 * C, L = shape.nLayer;
  let seed = opts.seed ?? 1;
  const rnd = (n: number, std = 0.02, mean = 0) => {
    const s = seed++;
    return () => fillNormal(new Float32Array(n), s, std, mean);
  };
  const p = opts.prefix ? "transformer." : "";
  const out: LazyTensor[] = [
    [`${p}wte.weight`, [shape.vocabSize, C], rnd(shape.vocabSize * C)],
    [`${p}wpe.weight`, [shape.nPositions, C], rnd(shape.nPositions * C, 0.01)],
  ];
  for (let i = 0; i < L; i++) {
    const h = `${p}h.${i}.`;
    out.push(
      [h + "ln_1.weight", [C], rnd(C, 0.1, 1)],
      [h + "ln_1.bias", [C], rnd(C)],
      [h + "attn.c_attn.weight", [C, 3 * C], rnd(C * 3 * C)],
      [h + "attn.c_attn.bias", [3 * C], rnd(3 * C)],
      [h + "attn.c_proj.weight", [C, C], rnd(C * C, 0.02 / Math.sqrt(2 * L))],
      [h + "attn.c_proj.bias", [C], rnd(C)],
      [h + "ln_2.weight", [C], rnd(C, 0.1, 1)],
      [h + "ln_2.bias", [C], rnd(C)],
      [h + "mlp.c_fc.weight", [C, F], rnd(C * F)],
      [h + "mlp.c_fc.bias", [F], rnd(F)],
      [h + "mlp.c_proj.weight", [F, C], rnd(F * C, 0.02 / Math.sqrt(2 * L))],
      [h + "mlp.c_proj.bias", [C], rnd(C)],
    );
  }
  out.push([`${p}ln_f.weight`, [C], rnd(C, 0.1, 1)], [`${p}ln_f.bias`, [C], rnd(C)]);
  return writeTensors(dir, configOf(shape), out, opts);
}

/** A tensor to write: its data made when it is written. */
type LazyTensor = [string, number[], () => Float32Array];

async function writeTensors(
  dir: string,
  cfg: Gpt2Config,
  tensors: LazyTensor[],
  opts: WriteOptions,
): Promise<string[]> {
  const dtype = opts.dtype ?? "F32";
  const bytesPer = dtype === "F32" ? 4 : 2;
  await Deno.mkdir(dir, { recursive: true });
  const config: Record<string, unknown> = {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    vocab_size: cfg.vocabSize,
    n_positions: cfg.nPositions,
    n_ctx: cfg.nPositions,
    n_embd: cfg.nEmbd,
    n_layer: cfg.nLayer,
    n_head: cfg.nHead,
    n_inner: null,
    activation_function: "gelu_new",
    layer_norm_epsilon: cfg.layerNormEpsilon,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenId,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    torch_dtype: dtype === "F32" ? "float32" : dtype === "F16" ? "float16" : "bfloat16",
  };
  const files = ["config.json"];
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2));
  const entries: Entry[] = [];
  const P = cfg.nPositions;
  for (const [name, shape, data] of tensors) {
    entries.push({
      name,
      dtype,
      shape,
      size: shape.reduce((a, b) => a * b, 1) * bytesPer,
      bytes: () => encode(data(), dtype),
    });
    const layer = /^(transformer\.)?h\.(\d+)\.attn\.c_proj\.bias$/.exec(name);
    if (opts.buffers && layer) {
      // The causal-mask buffers older transformers saved: never read by the loader.
      const pre = name.slice(0, name.length - "c_proj.bias".length);
      const boolMask = opts.buffers === "BOOL";
      entries.push({
        name: `${pre}bias`,
        dtype: boolMask ? "BOOL" : dtype,
        shape: [1, 1, P, P],
        size: P * P * (boolMask ? 1 : bytesPer),
        bytes: () => {
          const t = new Float32Array(P * P);
          for (let i = 0; i < P; i++) t.fill(1, i * P, i * P + i + 1);
          return boolMask ? Uint8Array.from(t) : encode(t, dtype);
        },
      });
      entries.push({
        name: `${pre}masked_bias`,
        dtype,
        shape: [],
        size: bytesPer,
        bytes: () => encode(Float32Array.of(-1e4), dtype),
      });
    }
  }
  const shards = opts.shards ?? 1;
  if (shards <= 1) {
    await writeSafetensorsFile(`${dir}/model.safetensors`, entries);
    files.push("model.safetensors");
  } else {
    const total = entries.reduce((n, e) => n + e.size, 0);
    const weightMap: Record<string, string> = {};
    // Contiguous runs of about equal tensor counts: exactly `shards` non-empty files.
    const groups: Entry[][] = Array.from({ length: shards }, (_, i) =>
      entries.slice(
        Math.round((i * entries.length) / shards),
        Math.round(((i + 1) * entries.length) / shards),
      ));
    for (const [i, g] of groups.entries()) {
      const name = `model-${String(i + 1).padStart(5, "0")}-of-${
        String(groups.length).padStart(5, "0")
      }.safetensors`;
      await writeSafetensorsFile(`${dir}/${name}`, g);
      for (const e of g) weightMap[e.name] = name;
      files.push(name);
    }
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
    );
    files.push("model.safetensors.index.json");
  }
  const tok = opts.tokenizer ?? "none";
  if (tok !== "none") files.push(...await writeTokenizer(dir, cfg.vocabSize, tok));
  return files;
}

/** GPT-2's byte-to-unicode alphabet (the 256 single-character tokens). */
function byteAlphabet(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const out = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = String.fromCharCode(keep.includes(b) ? b : 256 + n++);
  }
  return out;
}

/**
 * A byte-level BPE vocabulary of exactly `vocabSize` tokens (256 bytes, vocabSize - 257 merges of
 * two bytes, `<|endoftext|>` last, as GPT-2's) in the requested format.
 */
async function writeTokenizer(
  dir: string,
  vocabSize: number,
  format: "json" | "vocab",
): Promise<string[]> {
  const bytes = byteAlphabet();
  const vocab: Record<string, number> = {};
  bytes.forEach((b, i) => (vocab[b] = i));
  const merges: string[] = [];
  for (let i = 0; merges.length < vocabSize - 257; i++) {
    const a = bytes[Math.floor(i / 256)], b = bytes[i % 256];
    if (vocab[a + b] !== undefined) continue;
    vocab[a + b] = 256 + merges.length;
    merges.push(`${a} ${b}`);
  }
  if (format === "vocab") {
    vocab["<|endoftext|>"] = vocabSize - 1;
    await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify(vocab));
    await Deno.writeTextFile(`${dir}/merges.txt`, "#version: 0.2\n" + merges.join("\n") + "\n");
    return ["vocab.json", "merges.txt"];
  }
  const tok = {
    version: "1.0",
    added_tokens: [{ id: vocabSize - 1, content: "<|endoftext|>", special: true }],
    model: { type: "BPE", vocab, merges },
  };
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(tok));
  return ["tokenizer.json"];
}
