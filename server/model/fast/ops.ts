/**
 * What the fast engine's structure delegates: the products with the frozen weights (each weight a
 * `FrozenLinear`, so a provider can convert or pack it once at load), the strided attention
 * products (`Sgemm`), and the row-wise loops. The default (`blasOps`) is today's fast engine:
 * BLAS/TypeScript sgemm over the checkpoint's float32 arrays (16-bit ones through
 * `half_linear.ts`) and the TypeScript kernels; the oneDNN engine (`../onednn/`) supplies matmul
 * primitives (fp32 or bf16) and OpenMP loops.
 */
import { isPacked, type Matrix, type PackedKernels } from "../half.ts";
import type { Sgemm } from "./blas.ts";
import { packedLinear, PackedPanels } from "./half_linear.ts";
import * as kernels from "./kernels.ts";
import * as llama from "./llama_kernels.ts";
import type { Activation } from "./kernels.ts";
import { ProductLinear } from "./product_linear.ts";

/** A frozen weight W: logical [K, N] (x @ W), stored [K, N] or, `transposed`, [N, K]. */
export interface FrozenLinear {
  /**
   * y [m, N] = act(x [m, K] @ W + bias); with `accumulate`, y += x @ W + bias instead (no act).
   * Buffers are read and written from element 0.
   */
  forward(
    m: number,
    x: Float32Array,
    y: Float32Array,
    opts: { bias?: boolean; accumulate?: boolean; act?: Activation },
  ): void;
  /** dx [m, K] = dy [m, N] @ W^T (overwrites dx). */
  backward(m: number, dy: Float32Array, dx: Float32Array): void;
}

/** The row-wise loops, with the signatures of `kernels.ts`. */
export interface RowKernels {
  layerNorm: typeof kernels.layerNorm;
  layerNormTrain: typeof kernels.layerNormTrain;
  layerNormBackward: typeof kernels.layerNormBackward;
  biasActivation: typeof kernels.biasActivation;
  biasActivationTrain: typeof kernels.biasActivationTrain;
  addBias: typeof kernels.addBias;
  mulInPlace: typeof kernels.mulInPlace;
  /** The Llama blocks' (llama_kernels.ts). */
  rmsNorm: typeof llama.rmsNorm;
  rmsNormBackward: typeof llama.rmsNormBackward;
  swiglu: typeof llama.swiglu;
  swigluBackward: typeof llama.swigluBackward;
  applyRope: typeof llama.applyRope;
}

export const tsKernels: RowKernels = {
  layerNorm: kernels.layerNorm,
  layerNormTrain: kernels.layerNormTrain,
  layerNormBackward: kernels.layerNormBackward,
  biasActivation: kernels.biasActivation,
  biasActivationTrain: kernels.biasActivationTrain,
  addBias: kernels.addBias,
  mulInPlace: kernels.mulInPlace,
  rmsNorm: llama.rmsNorm,
  rmsNormBackward: llama.rmsNormBackward,
  swiglu: llama.swiglu,
  swigluBackward: llama.swigluBackward,
  applyRope: llama.applyRope,
};

/**
 * Attention of many sequences in one call (all sequences and heads, in parallel where the
 * provider can). `desc` holds 9 int64 per sequence: key and value addresses (head 0, first row),
 * their row stride, query offset in qkv, output offset in y, probabilities offset, query rows,
 * key rows, and the keys visible to the first query row minus one. A sequence with 0 query rows
 * is skipped.
 */
export interface BatchedAttention {
  forward(
    nSeq: number,
    desc: BigInt64Array,
    H: number,
    D: number,
    qkv: Float32Array,
    ldq: number,
    y: Float32Array,
    ldy: number,
    probs: Float32Array,
    scale: number,
  ): void;
  /** Input gradients of `forward` for sequences without a cache (keys and values in qkv). */
  backward(
    nSeq: number,
    desc: BigInt64Array,
    H: number,
    D: number,
    qkv: Float32Array,
    ldq: number,
    dy: Float32Array,
    ldy: number,
    probs: Float32Array,
    dqkv: Float32Array,
    dp: Float32Array,
    scale: number,
  ): void;
}

export interface EngineOps {
  /** Shown in the engine's name: `fast(<name>)` or `onednn(<name>)`. */
  readonly name: string;
  /** Products that read activations only (attention), with strides and offsets. */
  readonly gemm: Sgemm;
  readonly kernels: RowKernels;
  /** When given, attention runs through it instead of per-head `gemm` calls in TypeScript. */
  readonly attention?: BatchedAttention;
  /** Wraps one frozen weight (and its bias, used when `forward` asks for it). */
  linear(
    w: Matrix,
    K: number,
    N: number,
    transposed: boolean,
    bias?: Float32Array,
  ): FrozenLinear;
  /** Frees what `linear` allocated and anything else the ops own. */
  dispose(): void;
}

/**
 * The fast engine's own ops: every product through `gemm` on the float32 weights as stored;
 * 16-bit weights through `HalfLinear` (with `half`, native products, where given).
 */
export function blasOps(
  gemm: Sgemm,
  onDispose: () => void = () => {},
  half: PackedKernels | null = null,
): EngineOps {
  const panels = new PackedPanels(gemm, half);
  return {
    name: gemm.name,
    gemm,
    kernels: tsKernels,
    linear: (w, K, N, transposed, bias) =>
      isPacked(w)
        ? packedLinear(panels, w, K, N, transposed, bias)
        : new SgemmLinear(gemm, w, K, N, transposed, bias),
    dispose: onDispose,
  };
}

class SgemmLinear extends ProductLinear {
  constructor(
    readonly gemm: Sgemm,
    readonly w: Float32Array,
    K: number,
    N: number,
    readonly transposed: boolean,
    bias: Float32Array | undefined,
  ) {
    super(K, N, bias);
  }

  protected product(m: number, x: Float32Array, y: Float32Array, acc: boolean): void {
    const { K, N, w, transposed } = this;
    const beta = acc ? 1 : 0;
    this.gemm.sgemm(
      false,
      transposed,
      m,
      N,
      K,
      1,
      x,
      0,
      K,
      w,
      0,
      transposed ? K : N,
      beta,
      y,
      0,
      N,
    );
  }

  backward(m: number, dy: Float32Array, dx: Float32Array): void {
    const { K, N, w, transposed } = this;
    this.gemm.sgemm(
      false,
      !transposed,
      m,
      K,
      N,
      1,
      dy,
      0,
      N,
      w,
      0,
      transposed ? K : N,
      0,
      dx,
      0,
      K,
    );
  }
}
