/**
 * Linear layers on frozen packed weights (16-bit as stored, issue 12; int8, issue 25): the
 * products computed without a float32 copy of the matrix (see `PackedPanels`).
 */
import type { Sgemm } from "./blas.ts";
import { type PackedKernels, type PackedMatrix, widenInto } from "../half.ts";
import type { FrozenLinear } from "./ops.ts";
import { ProductLinear } from "./product_linear.ts";

/** Products with this many rows or fewer go to the native kernels, which read W once. */
export const FEW_ROWS = 8;
/** Float32 elements of W widened at a time (4 MiB): a panel stays in cache while it is used. */
const PANEL = 1 << 20;

/**
 * Products on packed weights without widening the whole matrix: few rows go to the native
 * kernels (decoding); more rows widen W a panel of stored rows at a time into one scratch buffer
 * and multiply it there with `gemm` (prefill and training, where the products dwarf the
 * widening). One per engine: the scratch is shared by its layers, which run one at a time.
 */
export class PackedPanels {
  #scratch: Float32Array | undefined;
  /** `panelElements`: the scratch size (tests make it small to cross panel boundaries). */
  constructor(
    readonly gemm: Sgemm,
    readonly native: PackedKernels | null,
    readonly panelElements = PANEL,
  ) {}

  /**
   * Calls `use` on each panel of `w` (`count` stored rows of `width`) in order: its first stored
   * row, its row count and the rows as float32 (the scratch, overwritten by the next panel).
   */
  forEach(
    w: PackedMatrix,
    count: number,
    width: number,
    use: (first: number, rows: number, panel: Float32Array) => void,
  ): void {
    const step = Math.max(1, Math.floor(this.panelElements / width));
    this.#scratch ??= new Float32Array(this.panelElements);
    // A single row wider than the scratch gets its own buffer.
    const out = this.#scratch.length >= step * width ? this.#scratch : new Float32Array(width);
    for (let first = 0; first < count; first += step) {
      const rows = Math.min(step, count - first), n = rows * width;
      if (this.native) this.native.widen(w, first * width, n, out);
      else widenInto(w, first * width, n, out);
      use(first, rows, out);
    }
  }
}

/** A frozen linear layer on a packed weight, its products through `panels`. */
export function packedLinear(
  panels: PackedPanels,
  w: PackedMatrix,
  K: number,
  N: number,
  transposed: boolean,
  bias?: Float32Array,
): FrozenLinear {
  return new HalfLinear(panels, w, K, N, transposed, bias);
}

class HalfLinear extends ProductLinear {
  constructor(
    readonly p: PackedPanels,
    readonly w: PackedMatrix,
    K: number,
    N: number,
    readonly transposed: boolean,
    bias: Float32Array | undefined,
  ) {
    super(K, N, bias);
    if (w.bits.length !== K * N) {
      throw new RangeError(`${w.dtype} weight must hold ${K * N} values: found ${w.bits.length}`);
    }
    if (w.dtype === "int8" && w.scales.length !== (transposed ? N : K)) {
      throw new RangeError(
        `int8 weight must have a scale per stored row (${
          transposed ? N : K
        }): found ${w.scales.length}`,
      );
    }
  }

  protected product(m: number, x: Float32Array, y: Float32Array, acc: boolean): void {
    const { K, N, w, transposed, p } = this;
    if (m === 0) return;
    if (p.native && m <= FEW_ROWS) {
      p.native.product(m, K, N, x, w, transposed, acc, y);
      return;
    }
    const g = p.gemm;
    if (!transposed) {
      // W stored [K, N]: a panel of K rows contributes x[:, k0:k1] @ W[k0:k1, :] to all of y.
      p.forEach(w, K, N, (k0, rows, wp) => {
        const beta = acc || k0 > 0 ? 1 : 0;
        g.sgemm(false, false, m, N, rows, 1, x, k0, K, wp, 0, N, beta, y, 0, N);
      });
    } else {
      // W stored [N, K]: a panel of N rows gives the columns y[:, n0:n1] = x @ W[n0:n1, :]^T.
      p.forEach(w, N, K, (n0, rows, wp) => {
        g.sgemm(false, true, m, rows, K, 1, x, 0, K, wp, 0, K, acc ? 1 : 0, y, n0, N);
      });
    }
  }

  backward(m: number, dy: Float32Array, dx: Float32Array): void {
    const { K, N, w, transposed, p } = this;
    if (m === 0) return;
    const g = p.gemm;
    if (!transposed) {
      // dx[:, k0:k1] = dy @ W[k0:k1, :]^T
      p.forEach(w, K, N, (k0, rows, wp) => {
        g.sgemm(false, true, m, rows, N, 1, dy, 0, N, wp, 0, N, 0, dx, k0, K);
      });
    } else {
      // dx = sum over panels of dy[:, n0:n1] @ W[n0:n1, :]
      p.forEach(w, N, K, (n0, rows, wp) => {
        g.sgemm(false, false, m, K, rows, 1, dy, n0, N, wp, 0, K, n0 > 0 ? 1 : 0, dx, 0, K);
      });
    }
  }
}
