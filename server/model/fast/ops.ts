/**
 * What the fast engine's structure delegates: the products with the frozen weights (each weight a
 * `FrozenLinear`, so a provider can convert or pack it once at load), the strided attention
 * products (`Sgemm`), and the row-wise loops. The default (`blasOps`) is today's fast engine:
 * BLAS/TypeScript sgemm over the checkpoint's float32 arrays and the TypeScript kernels; the
 * oneDNN engine (`../onednn/`) supplies matmul primitives (fp32 or bf16) and OpenMP loops.
 */
import { type HalfKernels, type HalfMatrix, isHalf, type Matrix, widenInto } from "../half.ts";
import type { Sgemm } from "./blas.ts";
import * as kernels from "./kernels.ts";
import type { Activation } from "./kernels.ts";

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
}

export const tsKernels: RowKernels = {
  layerNorm: kernels.layerNorm,
  layerNormTrain: kernels.layerNormTrain,
  layerNormBackward: kernels.layerNormBackward,
  biasActivation: kernels.biasActivation,
  biasActivationTrain: kernels.biasActivationTrain,
  addBias: kernels.addBias,
  mulInPlace: kernels.mulInPlace,
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
  half: HalfKernels | null = null,
): EngineOps {
  const panels = new HalfPanels(gemm, half);
  return {
    name: gemm.name,
    gemm,
    kernels: tsKernels,
    linear: (w, K, N, transposed, bias) =>
      isHalf(w)
        ? halfLinear(panels, w, K, N, transposed, bias)
        : new SgemmLinear(gemm, w, K, N, transposed, bias),
    dispose: onDispose,
  };
}

/**
 * A frozen linear layer over its two products; the bias, activation and accumulation around them
 * are the same whatever computes the products.
 */
abstract class ProductLinear implements FrozenLinear {
  constructor(
    readonly K: number,
    readonly N: number,
    readonly bias: Float32Array | undefined,
  ) {}

  /** y [m, N] = x [m, K] @ W (+ y when `accumulate`). */
  protected abstract product(m: number, x: Float32Array, y: Float32Array, acc: boolean): void;
  /** dx [m, K] = dy [m, N] @ W^T. */
  abstract backward(m: number, dy: Float32Array, dx: Float32Array): void;

  forward(
    m: number,
    x: Float32Array,
    y: Float32Array,
    opts: { bias?: boolean; accumulate?: boolean; act?: Activation },
  ): void {
    const { N } = this;
    const bias = opts.bias ? this.#bias() : null;
    if (opts.accumulate) {
      if (opts.act) throw new RangeError("an accumulating product takes no activation");
      this.product(m, x, y, true);
      if (bias) addBiasRows(y, m, N, bias);
      return;
    }
    if (bias && !opts.act) {
      // Bias first, then the product accumulates onto it (one pass over y fewer).
      kernels.fillBias(y, m, N, bias);
      this.product(m, x, y, true);
      return;
    }
    this.product(m, x, y, false);
    if (opts.act) kernels.biasActivation(y, m, N, bias ?? new Float32Array(N), opts.act);
  }

  #bias(): Float32Array {
    if (!this.bias) throw new RangeError("this linear layer has no bias");
    return this.bias;
  }
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

/** Products with this many rows or fewer go to the native kernels, which read W once. */
const FEW_ROWS = 8;
/** Float32 elements of W widened at a time (4 MiB): a panel stays in cache while it is used. */
const PANEL = 1 << 20;

/**
 * Products on 16-bit weights without widening the whole matrix: few rows go to the native
 * kernels (decoding); more rows widen W a panel of stored rows at a time into one scratch buffer
 * and multiply it there with `gemm` (prefill and training, where the products dwarf the
 * widening). One per engine: the scratch is shared by its layers, which run one at a time.
 */
export class HalfPanels {
  #scratch: Float32Array | undefined;
  /** `panelElements`: the scratch size (tests make it small to cross panel boundaries). */
  constructor(
    readonly gemm: Sgemm,
    readonly native: HalfKernels | null,
    readonly panelElements = PANEL,
  ) {}

  /** Stored rows [first, first+rows) of `w` (rows of `width`) as float32, in the scratch. */
  panel(w: HalfMatrix, first: number, rows: number, width: number): Float32Array {
    const n = rows * width;
    this.#scratch ??= new Float32Array(this.panelElements);
    const out = this.#scratch.length >= n ? this.#scratch : new Float32Array(n);
    if (this.native) this.native.widen(w, first * width, n, out);
    else widenInto(w, first * width, n, out);
    return out;
  }

  /** Stored rows per panel for rows of `width` elements. */
  rowsPerPanel(width: number): number {
    return Math.max(1, Math.floor(this.panelElements / width));
  }
}

/** A frozen linear layer on a 16-bit weight, its products through `panels`. */
export function halfLinear(
  panels: HalfPanels,
  w: HalfMatrix,
  K: number,
  N: number,
  transposed: boolean,
  bias?: Float32Array,
): FrozenLinear {
  return new HalfLinear(panels, w, K, N, transposed, bias);
}

class HalfLinear extends ProductLinear {
  constructor(
    readonly p: HalfPanels,
    readonly w: HalfMatrix,
    K: number,
    N: number,
    readonly transposed: boolean,
    bias: Float32Array | undefined,
  ) {
    super(K, N, bias);
    if (w.bits.length !== K * N) {
      throw new RangeError(`16-bit weight must hold ${K * N} values: found ${w.bits.length}`);
    }
  }

  protected product(m: number, x: Float32Array, y: Float32Array, acc: boolean): void {
    const { K, N, w, transposed, p } = this;
    if (m === 0) return;
    if (p.native && m <= FEW_ROWS) {
      p.native.product(m, K, N, x, w, transposed, acc, y);
      return;
    }
    if (!transposed) {
      // W stored [K, N]: a panel of K rows contributes x[:, k0:k1] @ W[k0:k1, :] to all of y.
      const step = p.rowsPerPanel(N);
      for (let k0 = 0; k0 < K; k0 += step) {
        const rows = Math.min(step, K - k0);
        const wp = p.panel(w, k0, rows, N);
        const beta = acc || k0 > 0 ? 1 : 0;
        p.gemm.sgemm(false, false, m, N, rows, 1, x, k0, K, wp, 0, N, beta, y, 0, N);
      }
    } else {
      // W stored [N, K]: a panel of N rows gives the columns y[:, n0:n1] = x @ W[n0:n1, :]^T.
      const step = p.rowsPerPanel(K);
      for (let n0 = 0; n0 < N; n0 += step) {
        const rows = Math.min(step, N - n0);
        const wp = p.panel(w, n0, rows, K);
        p.gemm.sgemm(false, true, m, rows, K, 1, x, 0, K, wp, 0, K, acc ? 1 : 0, y, n0, N);
      }
    }
  }

  backward(m: number, dy: Float32Array, dx: Float32Array): void {
    const { K, N, w, transposed, p } = this;
    if (m === 0) return;
    if (!transposed) {
      // dx[:, k0:k1] = dy @ W[k0:k1, :]^T
      const step = p.rowsPerPanel(N);
      for (let k0 = 0; k0 < K; k0 += step) {
        const rows = Math.min(step, K - k0);
        const wp = p.panel(w, k0, rows, N);
        p.gemm.sgemm(false, true, m, rows, N, 1, dy, 0, N, wp, 0, N, 0, dx, k0, K);
      }
    } else {
      // dx = sum over panels of dy[:, n0:n1] @ W[n0:n1, :]
      const step = p.rowsPerPanel(K);
      for (let n0 = 0; n0 < N; n0 += step) {
        const rows = Math.min(step, N - n0);
        const wp = p.panel(w, n0, rows, K);
        p.gemm.sgemm(false, false, m, K, rows, 1, dy, n0, N, wp, 0, K, n0 > 0 ? 1 : 0, dx, 0, K);
      }
    }
  }
}

function addBiasRows(y: Float32Array, m: number, N: number, bias: Float32Array): void {
  kernels.addBias(y, m, N, N, bias);
}
