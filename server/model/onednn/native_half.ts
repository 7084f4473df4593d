/**
 * The shim's products on 16-bit weights for engines other than the oneDNN one (the fast engine
 * uses them for decoding and widening on f16/bf16 checkpoints), or null where the shim is not
 * built: callers then widen panels in TypeScript, slower but the same numbers.
 *
 * The fast engine alternates these OpenMP kernels with OpenBLAS, whose threads want the same
 * cores. OpenMP's idle threads spin by default and starve OpenBLAS's (measured: widening plus
 * sgemm 2-3x slower than sgemm alone on fp32); so when this is what first loads the shim, and
 * OMP_WAIT_POLICY is not set, OpenMP threads are made to sleep when idle (libgomp reads the
 * policy once, when it loads). The oneDNN engine, alone with its OpenMP pool, keeps the default.
 */
import type { PackedKernels } from "../half.ts";
import { isOnednnLoaded, loadOnednn } from "./lib.ts";

let cached: PackedKernels | null | undefined;

export function nativePackedKernels(): PackedKernels | null {
  if (cached !== undefined) return cached;
  // Only while the shim loads: processes this one starts keep their own default.
  const set = !isOnednnLoaded() && !Deno.env.get("OMP_WAIT_POLICY");
  try {
    if (set) Deno.env.set("OMP_WAIT_POLICY", "passive");
    cached = loadOnednn().packedKernels();
  } catch {
    cached = null;
  } finally {
    if (set) Deno.env.delete("OMP_WAIT_POLICY");
  }
  return cached;
}
