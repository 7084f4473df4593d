/**
 * The shim's products on 16-bit weights for engines other than the oneDNN one (the fast engine
 * uses them for decoding and widening on f16/bf16 checkpoints), or null where the shim is not
 * built: callers then widen panels in TypeScript, slower but the same numbers.
 */
import type { HalfKernels } from "../half.ts";
import { loadOnednn } from "./lib.ts";

let cached: HalfKernels | null | undefined;

export function nativeHalfKernels(): HalfKernels | null {
  if (cached !== undefined) return cached;
  try {
    cached = loadOnednn().halfKernels();
  } catch {
    cached = null;
  }
  return cached;
}
