/**
 * Linear layers on frozen 16-bit weights (issue 12: weights stay in their stored dtype): the
 * products computed without a float32 copy of the matrix (see `HalfPanels`).
 */
import type { Sgemm } from "./blas.ts";
import { type HalfKernels, type HalfMatrix, widenInto } from "../half.ts";
import type { FrozenLinear } from "./ops.ts";
import { ProductLinear } from "./product_linear.ts";

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
