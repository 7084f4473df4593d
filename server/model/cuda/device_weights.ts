/**
 * The frozen weights uploaded once to the device, GPT-2's and the Llama family's. Matrices are
 * stored in the precision the engine runs (f32, or bf16/f16 for the half-precision settings: half
 * the memory and the tensor cores' input type); norm gains, biases and position embeddings stay
 * f32, since they are small and added in fp32. Layouts as the checkpoint's (GPT-2's Conv1D weights
 * [in, out], Llama's nn.Linear [out, in]).
 */
import { type Matrix, toFloat32 } from "../half.ts";
import type { Gpt2Weights, LlamaWeights } from "../weights.ts";
import { at, type Device, type DeviceBuffer, type DPtr } from "./device.ts";

export type WeightDType = "f32" | "bf16" | "f16";

export interface DeviceLayer {
  ln1G: DPtr; // [C]
  ln1B: DPtr; // [C]
  attnW: DPtr; // [C, 3C] weight dtype
  attnB: DPtr; // [3C]
  attnProjW: DPtr; // [C, C] weight dtype
  attnProjB: DPtr; // [C]
  ln2G: DPtr; // [C]
  ln2B: DPtr; // [C]
  fcW: DPtr; // [C, F] weight dtype
  fcB: DPtr; // [F]
  fcProjW: DPtr; // [F, C] weight dtype
  fcProjB: DPtr; // [C]
}

export interface DeviceWeights {
  dtype: WeightDType;
  wpe: DPtr; // [P, C] f32
  layers: DeviceLayer[];
  lnFG: DPtr; // [C]
  lnFB: DPtr; // [C]
  lmHead: DPtr; // [V, C] weight dtype (wte when tied)
  /** Device bytes the weights hold. */
  bytes: number;
  /** Every buffer above, for freeing. */
  buffers: DeviceBuffer[];
}

/** Buffers uploaded so far, f32 vectors and matrices in the weights' dtype. */
interface Uploader {
  small(a: Float32Array): DPtr;
  matrix(m: Matrix): DPtr;
  /** Frees the staging buffer; the bytes and buffers uploaded. */
  done(): { bytes: number; buffers: DeviceBuffer[] };
}

function uploader(device: Device, dtype: WeightDType): Uploader {
  let bytes = 0;
  const buffers: DeviceBuffer[] = [];
  const small = (a: Float32Array): DPtr => {
    const buf = device.alloc("f32", a.length);
    buffers.push(buf);
    device.upload(at(buf), a);
    bytes += a.length * 4;
    return at(buf);
  };
  // Half matrices go up as f32 through one staging buffer and are converted on the device. A
  // 16-bit host matrix is widened one matrix at a time (transient host memory).
  let staging: DPtr | null = null;
  const matrix = (m: Matrix): DPtr => {
    const a = toFloat32(m);
    if (dtype === "f32") return small(a);
    if (!staging || staging.buf.length < a.length) {
      if (staging) device.free(staging.buf);
      staging = at(device.alloc("f32", a.length));
    }
    device.upload(staging, a);
    const buf = device.alloc(dtype, a.length);
    buffers.push(buf);
    device.kernels.convert(staging, at(buf), a.length);
    bytes += a.length * 2;
    return at(buf);
  };
  const done = () => {
    if (staging) device.free(staging.buf);
    staging = null;
    return { bytes, buffers };
  };
  return { small, matrix, done };
}

export function uploadWeights(device: Device, w: Gpt2Weights, dtype: WeightDType): DeviceWeights {
  const { small, matrix, done } = uploader(device, dtype);
  const layers = w.layers.map((l): DeviceLayer => ({
    ln1G: small(l.ln1G),
    ln1B: small(l.ln1B),
    attnW: matrix(l.attnW),
    attnB: small(l.attnB),
    attnProjW: matrix(l.attnProjW),
    attnProjB: small(l.attnProjB),
    ln2G: small(l.ln2G),
    ln2B: small(l.ln2B),
    fcW: matrix(l.fcW),
    fcB: small(l.fcB),
    fcProjW: matrix(l.fcProjW),
    fcProjB: small(l.fcProjB),
  }));
  const out: DeviceWeights = {
    dtype,
    wpe: small(w.wpe),
    layers,
    lnFG: small(w.lnFG),
    lnFB: small(w.lnFB),
    lmHead: matrix(w.lmHead ?? w.wte),
    bytes: 0,
    buffers: [],
  };
  Object.assign(out, done());
  return out;
}

/**
 * One Llama-family block on the device. The q, k and v projections are one [QW + 2 KW, C] matrix
 * (their rows stacked), so one product writes a row's queries, keys and values side by side
 * ([N, QW + 2 KW], as GPT-2's c_attn does) and one product takes their gradients back.
 */
export interface DeviceLlamaLayer {
  inNorm: DPtr; // [C]
  qkv: DPtr; // [QW + 2 KW, C] weight dtype
  qkvB: DPtr | null; // [QW + 2 KW] (Qwen2)
  o: DPtr; // [C, QW] weight dtype
  oB: DPtr | null; // [C]
  postNorm: DPtr; // [C]
  gate: DPtr; // [F, C] weight dtype
  up: DPtr; // [F, C] weight dtype
  down: DPtr; // [C, F] weight dtype
}

export interface DeviceLlamaWeights {
  dtype: WeightDType;
  layers: DeviceLlamaLayer[];
  norm: DPtr; // [C]
  lmHead: DPtr; // [V, C] weight dtype (wte when tied)
  /** Device bytes the weights hold. */
  bytes: number;
  /** Every buffer above, for freeing. */
  buffers: DeviceBuffer[];
}

/** Rows of float32 matrices (or vectors) one after another. */
function stacked(parts: Matrix[]): Float32Array {
  const f = parts.map(toFloat32);
  const out = new Float32Array(f.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of f) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

export function uploadLlamaWeights(
  device: Device,
  w: LlamaWeights,
  dtype: WeightDType,
): DeviceLlamaWeights {
  const { small, matrix, done } = uploader(device, dtype);
  const layers = w.layers.map((l): DeviceLlamaLayer => ({
    inNorm: small(l.inNorm),
    qkv: matrix(stacked([l.q, l.k, l.v])),
    qkvB: l.qB && l.kB && l.vB ? small(stacked([l.qB, l.kB, l.vB])) : null,
    o: matrix(l.o),
    oB: l.oB ? small(l.oB) : null,
    postNorm: small(l.postNorm),
    gate: matrix(l.gate),
    up: matrix(l.up),
    down: matrix(l.down),
  }));
  const out: DeviceLlamaWeights = {
    dtype,
    layers,
    norm: small(w.norm),
    lmHead: matrix(w.lmHead ?? w.wte),
    bytes: 0,
    buffers: [],
  };
  Object.assign(out, done());
  return out;
}
