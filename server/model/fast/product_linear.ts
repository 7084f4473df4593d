/**
 * The bias, activation and accumulation around a frozen linear layer's products, shared by every
 * way of computing them (float32 sgemm, 16-bit panels, native kernels).
 */
import type { FrozenLinear } from "./ops.ts";
import * as kernels from "./kernels.ts";
import type { Activation } from "./kernels.ts";

/**
 * A frozen linear layer over its two products; the bias, activation and accumulation around them
 * are the same whatever computes the products.
 */
export abstract class ProductLinear implements FrozenLinear {
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

function addBiasRows(y: Float32Array, m: number, N: number, bias: Float32Array): void {
  kernels.addBias(y, m, N, N, bias);
}
