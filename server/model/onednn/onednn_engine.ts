/**
 * The oneDNN CPU engine: the fast engine's structure (packed rows, KV caches, logits only where
 * asked, backward to the input embeddings only) with its products on oneDNN and its row loops in
 * C on every core. Each frozen weight becomes a oneDNN matmul once at load:
 *
 * - `fp32`: the checkpoint's float32 arrays as they are (no copy); same numbers as the fast engine
 *   up to summation order. Products of a few rows (decoding) stream each weight once through the
 *   shim's kernels (`fewRowsLinear`), where oneDNN's matmul takes up to 2.4x as long. 16-bit checkpoints stay 16-bit: fp32 products on weights widened a
 *   panel at a time, or in registers for a few rows (`PackedPanels`).
 * - int8 weights (`WEIGHTS=int8`) stay int8 in every precision: fp32 products on them, through
 *   `PackedPanels` as above (a bf16 copy would double the memory the int8 weights save).
 * - `bf16`: weights converted to bf16 once (half the bytes), activations rounded to bf16 at each
 *   product, fp32 accumulation and output; bias and GELU fused as post-ops at inference. Needs a
 *   CPU with oneDNN bf16 kernels (avx512_core or newer; native bf16 with avx512_bf16/AMX).
 * - `bf16-emulated`: operands rounded to bf16 exactly as `bf16` rounds them, products in fp32, on
 *   any CPU: the bf16 numbers (up to summation order) where the CPU has no bf16 kernels; for tests.
 *
 * `auto` (the default, or PRECISION=auto) picks bf16 where the CPU multiplies bf16 natively
 * (avx512_bf16 or AMX) and oneDNN has kernels for it, and fp32 elsewhere. Layer norm, bias, activations and their backward run in the shim with OpenMP over
 * rows; attention (scores, causal softmax, weighted values, and their backward) runs there over
 * every (sequence, head) pair in parallel, its products through oneDNN's sgemm.
 */
import type { Engine } from "../engine.ts";
import { engineOver } from "../fast/fast_engine.ts";
import { packedLinear, PackedPanels } from "../fast/half_linear.ts";
import type { EngineOps } from "../fast/ops.ts";
import { isPacked, toFloat32 } from "../half.ts";
import type { LoadedModel } from "../weights.ts";
import { fewRowsLinear } from "./few_rows_linear.ts";
import { loadOnednn, type NativeLinear, type ShimMode } from "./lib.ts";

export const PRECISIONS = ["auto", "fp32", "bf16", "bf16-emulated"] as const;
export type Precision = (typeof PRECISIONS)[number];

export interface OnednnEngineOptions {
  /** Default: PRECISION from the environment, else "auto". */
  precision?: string;
  /** OpenMP threads (process-wide). Default: all cores. */
  threads?: number;
  profile?: Map<string, number>;
}

/**
 * Whether the CPU multiplies bf16 natively (avx512_bf16 or AMX), from /proc/cpuinfo's flags; false
 * when it cannot be read. Without it oneDNN may still run bf16 (emulated on avx512_core), slower.
 */
export function cpuHasNativeBf16(cpuinfo?: string): boolean {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = Deno.readTextFileSync("/proc/cpuinfo");
    } catch {
      return false;
    }
  }
  const line = text.split("\n").find((l) => /^flags\s*:/.test(l)) ?? "";
  return /\b(avx512_bf16|amx_bf16)\b/.test(line);
}

/**
 * The precision `requested` resolves to: `auto` is bf16 only where oneDNN has bf16 kernels and
 * the CPU multiplies bf16 natively, else fp32; an explicit bf16 needs the kernels (throws if not).
 */
export function resolvePrecision(
  requested: string,
  bf16Supported: boolean,
  nativeBf16 = bf16Supported,
): Exclude<Precision, "auto"> {
  if (!(PRECISIONS as readonly string[]).includes(requested)) {
    throw new RangeError(
      `precision must be one of ${PRECISIONS.join(", ")}: found ${JSON.stringify(requested)}`,
    );
  }
  if (requested === "auto") return bf16Supported && nativeBf16 ? "bf16" : "fp32";
  if (requested === "bf16" && !bf16Supported) {
    throw new Error(
      "precision bf16 needs a CPU with oneDNN bf16 matmul kernels (avx512_core or newer; " +
        "avx512_bf16 for native bf16): this one has none. Use PRECISION=fp32, or " +
        "bf16-emulated for bf16 numbers at fp32 speed",
    );
  }
  return requested as Exclude<Precision, "auto">;
}

function precisionFromEnv(): string {
  try {
    return Deno.env.get("PRECISION") || "auto";
  } catch {
    return "auto";
  }
}

/** Builds the oneDNN engine over loaded weights; throws when the shim cannot load. */
export function createOnednnEngine(model: LoadedModel, opts: OnednnEngineOptions = {}): Engine {
  const lib = loadOnednn();
  if (opts.threads !== undefined) lib.setThreads(opts.threads);
  const precision = resolvePrecision(
    opts.precision ?? precisionFromEnv(),
    lib.bf16Supported,
    cpuHasNativeBf16(),
  );
  const mode: ShimMode = precision === "fp32" ? 0 : precision === "bf16" ? 1 : 2;
  const linears: NativeLinear[] = [];
  const gemm = lib.sgemm();
  const packed = lib.packedKernels();
  let panels: PackedPanels | undefined;
  const ops: EngineOps = {
    name: precision,
    gemm,
    kernels: lib.kernels(),
    attention: lib.attention(),
    linear(w, K, N, transposed, bias) {
      if (isPacked(w) && (mode === 0 || w.dtype === "int8")) {
        // fp32 products on packed weights: the shim's kernels, W never widened whole. int8 stays
        // int8 in every mode (a bf16 copy would double the memory it exists to save).
        panels ??= new PackedPanels(gemm, packed);
        return packedLinear(panels, w, K, N, transposed, bias);
      }
      // bf16 modes hold their own converted copy: a widened 16-bit weight is dropped after.
      const l = lib.linear(toFloat32(w), K, N, transposed, mode, bias);
      linears.push(l);
      // fp32 on float32 weights: decoding's few rows stream W through the shim's kernels.
      if (mode === 0 && !isPacked(w)) {
        return fewRowsLinear(l, packed, w, K, N, transposed, bias);
      }
      return l;
    },
    dispose() {
      for (const l of linears) l.free();
      linears.length = 0;
    },
  };
  return engineOver("onednn", model, ops, opts.profile ?? null);
}
