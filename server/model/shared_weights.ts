/**
 * The weights as they travel to the engine worker without a copy. A message would clone an
 * ordinary ArrayBuffer, so each array (float32, a 16-bit matrix's bits, an int8 matrix's values
 * and scales) goes as one of:
 * - a view of a SharedArrayBuffer (weights decoded at load are already there): shared as is;
 * - a view of a memory-mapped file: its address, which the worker (same process, same address
 *   space) views again (`mmap.ts` keeps that mapping for the rest of the process);
 * - anything else (weights built in memory, e.g. random models in benchmarks): moved into a
 *   SharedArrayBuffer once, in place in `weights`, so both sides hold the same memory.
 */
import type { HalfDtype, Matrix } from "./half.ts";
import { pinnedAddress, viewAt } from "./mmap.ts";
import type { ModelWeights } from "./weights.ts";

/** An array at a pinned address of this process: float32, or 16-bit bits of `half`. */
export interface MappedRef {
  address: bigint;
  length: number;
  half?: HalfDtype;
}

/** A matrix as it travels: shared memory as is (a packed matrix clones as a plain object). */
type WireMatrix = Matrix | MappedRef;

/**
 * The weights' arrays by field name, whichever family (GPT-2's or Llama's names): the top-level
 * arrays and each layer's; an absent optional array (a bias, an untied head) has no entry.
 */
export interface WireWeights {
  fields: Record<string, WireMatrix>;
  layers: Record<string, WireMatrix>[];
}

function shareable<T extends Float32Array | Uint16Array | Int8Array>(a: T): T {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const shared = new (a.constructor as { new (b: SharedArrayBuffer): T })(
    new SharedArrayBuffer(a.byteLength),
  );
  shared.set(a);
  return shared;
}

/**
 * The message form of `w`. Arrays neither shared nor mapped are replaced in `w` by shared copies
 * first (once: a second call finds them shared).
 */
export function toWire(w: ModelWeights): WireWeights {
  const one = (a: Matrix): { keep: Matrix; wire: WireMatrix } => {
    if (!(a instanceof Float32Array) && a.dtype === "int8") {
      // Quantised at load, so never a mapped file's view: shared memory, both arrays.
      const s = { dtype: a.dtype, bits: shareable(a.bits), scales: shareable(a.scales) };
      return { keep: s, wire: s };
    }
    if (!(a instanceof Float32Array)) {
      const address = pinnedAddress(a.bits);
      if (address !== null) {
        return { keep: a, wire: { address, length: a.bits.length, half: a.dtype } };
      }
      const s = { dtype: a.dtype, bits: shareable(a.bits) };
      return { keep: s, wire: s };
    }
    const address = pinnedAddress(a);
    if (address !== null) return { keep: a, wire: { address, length: a.length } };
    const s = shareable(a);
    return { keep: s, wire: s };
  };
  // Each array is replaced in place by the copy both sides will share.
  const record = (o: Record<string, unknown>): Record<string, WireMatrix> => {
    const out: Record<string, WireMatrix> = {};
    for (const [k, v] of Object.entries(o)) {
      if (k === "layers" || v === undefined) continue;
      const r = one(v as Matrix);
      o[k] = r.keep;
      out[k] = r.wire;
    }
    return out;
  };
  return {
    fields: record(w as unknown as Record<string, unknown>),
    layers: w.layers.map((l) => record(l as unknown as Record<string, unknown>)),
  };
}

/** The weights again, on the worker's side: mapped arrays viewed at their address. */
export function fromWire(w: WireWeights): ModelWeights {
  const one = (a: WireMatrix): Matrix => {
    if (a instanceof Float32Array || !("address" in a)) return a;
    if (a.half) {
      return { dtype: a.half, bits: new Uint16Array(viewAt(a.address, a.length * 2)) };
    }
    return new Float32Array(viewAt(a.address, a.length * 4));
  };
  const record = (o: Record<string, WireMatrix>) =>
    Object.fromEntries(Object.entries(o).map(([k, v]) => [k, one(v)]));
  // The same names as the sender's: the family's own weights type.
  return { ...record(w.fields), layers: w.layers.map(record) } as unknown as ModelWeights;
}
