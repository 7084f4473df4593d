/**
 * The weights as they travel to the engine worker without a copy. A message would clone an
 * ordinary ArrayBuffer, so each array goes as one of:
 * - a view of a SharedArrayBuffer (weights decoded at load are already there): shared as is;
 * - a view of a memory-mapped file: its address, which the worker (same process, same address
 *   space) views again (`mmap.ts` keeps that mapping for the rest of the process);
 * - anything else (weights built in memory, e.g. random models in benchmarks): moved into a
 *   SharedArrayBuffer once, in place in `weights`, so both sides hold the same memory.
 */
import { pinnedAddress, viewAt } from "./mmap.ts";
import type { Gpt2Weights, LayerWeights } from "./weights.ts";

/** A float32 array at a pinned address of this process. */
export interface MappedRef {
  address: bigint;
  length: number;
}

export type WireLayer = { [K in keyof LayerWeights]: Float32Array | MappedRef };
export interface WireWeights {
  wte: Float32Array | MappedRef;
  wpe: Float32Array | MappedRef;
  layers: WireLayer[];
  lnFG: Float32Array | MappedRef;
  lnFB: Float32Array | MappedRef;
  lmHead?: Float32Array | MappedRef;
}
function shareable(a: Float32Array): Float32Array {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const shared = new Float32Array(new SharedArrayBuffer(a.byteLength));
  shared.set(a);
  return shared;
}

/**
 * The message form of `w`. Arrays neither shared nor mapped are replaced in `w` by shared copies
 * first (once: a second call finds them shared).
 */
export function toWire(w: Gpt2Weights): WireWeights {
  const one = (a: Float32Array): { keep: Float32Array; wire: Float32Array | MappedRef } => {
    const address = pinnedAddress(a);
    if (address !== null) return { keep: a, wire: { address, length: a.length } };
    const s = shareable(a);
    return { keep: s, wire: s };
  };
  // deno-lint-ignore no-explicit-any
  const field = (o: any, k: string): Float32Array | MappedRef => {
    const r = one(o[k] as Float32Array);
    o[k] = r.keep;
    return r.wire;
  };
  const layers = w.layers.map((l) => {
    const out = {} as WireLayer;
    for (const k of Object.keys(l) as (keyof LayerWeights)[]) out[k] = field(l, k);
    return out;
  });
  const wire: WireWeights = {
    wte: field(w, "wte"),
    wpe: field(w, "wpe"),
    layers,
    lnFG: field(w, "lnFG"),
    lnFB: field(w, "lnFB"),
  };
  if (w.lmHead) wire.lmHead = field(w, "lmHead");
  return wire;
}

/** The weights again, on the worker's side: mapped arrays viewed at their address. */
export function fromWire(w: WireWeights): Gpt2Weights {
  const one = (a: Float32Array | MappedRef): Float32Array =>
    a instanceof Float32Array ? a : new Float32Array(viewAt(a.address, a.length * 4));
  const layers = w.layers.map((l) => {
    const out = {} as LayerWeights;
    for (const k of Object.keys(l) as (keyof LayerWeights)[]) out[k] = one(l[k]);
    return out;
  });
  return {
    wte: one(w.wte),
    wpe: one(w.wpe),
    layers,
    lnFG: one(w.lnFG),
    lnFB: one(w.lnFB),
    lmHead: w.lmHead ? one(w.lmHead) : undefined,
  };
}
