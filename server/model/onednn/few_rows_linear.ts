/**
 * A frozen float32 linear layer whose products of a few rows (decoding: one to eight sequences a
 * step) stream the weight once through the shim's kernels, and whose larger products (prefill,
 * training) and input gradients stay oneDNN's matmul. Measured on gpt2-medium's shapes, one row:
 * oneDNN's matmul takes 1.5-2.4x the time of reading the weight once; the kernels 0.8-1.0x.
 * Bias and activation follow the product as in every `ProductLinear`.
 */
import { FEW_ROWS } from "../fast/half_linear.ts";
import type { FrozenLinear } from "../fast/ops.ts";
import { ProductLinear } from "../fast/product_linear.ts";
import type { PackedKernels } from "../half.ts";
import type { Activation } from "../fast/kernels.ts";

export function fewRowsLinear(
  inner: FrozenLinear,
  kernels: PackedKernels,
  w: Float32Array,
  K: number,
  N: number,
  transposed: boolean,
  bias?: Float32Array,
): FrozenLinear {
  const few = new KernelLinear(kernels, w, K, N, transposed, bias);
  return {
    forward(
      m: number,
      x: Float32Array,
      y: Float32Array,
      opts: { bias?: boolean; accumulate?: boolean; act?: Activation },
    ) {
      (m <= FEW_ROWS ? few : inner).forward(m, x, y, opts);
    },
    backward: (m, dy, dx) => inner.backward(m, dy, dx),
  };
}

class KernelLinear extends ProductLinear {
  constructor(
    readonly kernels: PackedKernels,
    readonly w: Float32Array,
    K: number,
    N: number,
    readonly transposed: boolean,
    bias: Float32Array | undefined,
  ) {
    super(K, N, bias);
  }

  protected product(m: number, x: Float32Array, y: Float32Array, acc: boolean): void {
    this.kernels.product(m, this.K, this.N, x, this.w, this.transposed, acc, y);
  }

  backward(): void {
    throw new Error("unreachable: fewRowsLinear takes gradients through oneDNN");
  }
}
