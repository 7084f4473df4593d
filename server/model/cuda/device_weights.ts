/**
 * The frozen GPT-2 weights uploaded once to the device. Matrices are stored in the precision the
 * engine runs (f32, or bf16/f16 for the half-precision settings: half the memory and the tensor
 * cores' input type); layer-norm gains, biases and position embeddings stay f32, since they are
 * small and added in fp32. Layouts as the checkpoint's (Conv1D weights [in, out]).
 */
import { type Matrix, toFloat32 } from "../half.ts";
import type { Gpt2Weights } from "../weights.ts";
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

export function uploadWeights(device: Device, w: Gpt2Weights, dtype: WeightDType): DeviceWeights {
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
    buffers,
  };
  if (staging) device.free((staging as DPtr).buf);
  out.bytes = bytes;
  return out;
}
