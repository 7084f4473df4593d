/**
 * What the cuda engine needs from a GPU: typed device buffers, copies, strided-batched matrix
 * products and the project's kernels (kernels.h), all in stream order. Two implementations:
 * `cuda_device.ts` (the CUDA runtime, cuBLAS and kernels.cu through FFI) and, for tests only,
 * `../testing/emulated_cuda_device.ts` (the same operations on Float32Array), which lets the CPU
 * test suite run the engine's own logic (row plans, offsets, strides, caches, the backward pass)
 * against the reference vectors where no GPU is present.
 */

/** Element types of device buffers: weights may be stored in bf16/f16, activations are f32. */
export type DType = "f32" | "bf16" | "f16" | "i32";

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, bf16: 2, f16: 2, i32: 4 };
/** The dtype codes of kernels.h (pl_convert, pl_embed_gather). */
export const DTYPE_CODE: Record<"f32" | "bf16" | "f16", number> = { f32: 0, bf16: 1, f16: 2 };

export interface DeviceBuffer {
  readonly dtype: DType;
  /** Elements. */
  readonly length: number;
}

/** A place in a buffer: `off` elements from its start. */
export interface DPtr {
  readonly buf: DeviceBuffer;
  readonly off: number;
}

export function at(buf: DeviceBuffer, off = 0): DPtr {
  return { buf, off };
}

/** How a matrix product's inputs are multiplied: exact fp32, or TF32 tensor cores. */
export type MathMode = "fp32" | "tf32";

/** Activation codes of kernels.h. */
export const ACTIVATION_CODE = { gelu_new: 0, gelu: 1, relu: 2 } as const;

/**
 * One strided-batched product, row-major: for b < batch,
 * C_b = alpha * op(A_b) @ op(B_b) + beta * C_b with X_b at X + b * strideX elements.
 * A and B have the same dtype (f32, bf16 or f16); C is f32; accumulation is fp32.
 */
export interface Gemm {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  alpha: number;
  a: DPtr;
  lda: number;
  strideA?: number;
  b: DPtr;
  ldb: number;
  strideB?: number;
  beta: number;
  c: DPtr;
  ldc: number;
  strideC?: number;
  batch?: number;
  math: MathMode;
}

/** The kernels of kernels.h, one method each, same argument order (pointers as DPtr). */
export interface Kernels {
  addPositions(x: DPtr, wpe: DPtr, positions: DPtr, rows: number, C: number): void;
  layerNorm(
    x: DPtr,
    g: DPtr,
    b: DPtr,
    eps: number,
    out: DPtr,
    xhat: DPtr | null,
    rstd: DPtr | null,
    rows: number,
    C: number,
  ): void;
  layerNormBackward(
    dout: DPtr,
    xhat: DPtr,
    rstd: DPtr,
    g: DPtr,
    dx: DPtr,
    rows: number,
    C: number,
  ): void;
  fillBias(x: DPtr, bias: DPtr, rows: number, n: number): void;
  addBias(x: DPtr, bias: DPtr, rows: number, n: number, ld: number): void;
  biasActivation(
    h: DPtr,
    bias: DPtr,
    rows: number,
    n: number,
    act: number,
    deriv: DPtr | null,
  ): void;
  mul(a: DPtr, b: DPtr, n: number): void;
  causalSoftmax(s: DPtr, T: number, S: number, past: number, blocks: number): void;
  softmaxBackward(p: DPtr, dp: DPtr, T: number, S: number, blocks: number): void;
  crossEntropy(logits: DPtr, targets: DPtr, losses: DPtr, rows: number, V: number): void;
  copyRows(dst: DPtr, ldd: number, src: DPtr, lds: number, rows: number, cols: number): void;
  gatherRows(dst: DPtr, src: DPtr, rows: DPtr, n: number, C: number): void;
  scatterAddRows(dst: DPtr, src: DPtr, rows: DPtr, n: number, C: number): void;
  /** dst (bf16/f16/f32 buffer) = src rounded to dst's dtype. */
  convert(src: DPtr, dst: DPtr, n: number): void;
  /** out [rows, C] = x * rsqrt(mean(x^2) + eps) * g; xhat = x * rstd and rstd kept when given. */
  rmsNorm(
    x: DPtr,
    g: DPtr,
    eps: number,
    out: DPtr,
    xhat: DPtr | null,
    rstd: DPtr | null,
    rows: number,
    C: number,
  ): void;
  /** dx [rows, C] += rstd * (dout * g - xhat * mean(dout * g * xhat)). */
  rmsNormBackward(
    dout: DPtr,
    xhat: DPtr,
    rstd: DPtr,
    g: DPtr,
    dx: DPtr,
    rows: number,
    C: number,
  ): void;
  /**
   * Rotates `heads` heads of D values in each of `rows` rows of x (row stride ld) by the angles
   * of cos/sin [rows, D / 2] (rotate_half); `inverse` applies the transpose (the backward pass).
   */
  rope(
    x: DPtr,
    ld: number,
    cos: DPtr,
    sin: DPtr,
    rows: number,
    heads: number,
    D: number,
    inverse: boolean,
  ): void;
  /** h [n] = silu(gate) * up. */
  swiglu(gate: DPtr, up: DPtr, h: DPtr, n: number): void;
  /** In place from dh [n]: gate <- dh * up * silu'(gate), up <- dh * silu(gate). */
  swigluBackward(dh: DPtr, gate: DPtr, up: DPtr, n: number): void;
}

export interface Device {
  /** e.g. "NVIDIA H200 (sm_90, CUDA 13.0)". */
  readonly name: string;
  readonly kernels: Kernels;
  alloc(dtype: DType, length: number): DeviceBuffer;
  /** Frees a buffer (after the work queued on it has finished). Idempotent. */
  free(buf: DeviceBuffer): void;
  /** Host to device: `src` into dst (f32 or i32 buffers, matching types). */
  upload(dst: DPtr, src: Float32Array | Int32Array): void;
  /** Device to host, after everything queued before it. */
  download(src: DPtr, out: Float32Array): void;
  /** n elements of zero. */
  zero(dst: DPtr, n: number): void;
  /** n elements from src to dst (same dtype). */
  copy(dst: DPtr, src: DPtr, n: number): void;
  gemm(g: Gemm): void;
  /** Resolves when the queued work has finished. */
  synchronize(): Promise<void>;
  /** Whether `synchronize()` waits on another thread, leaving the event loop free meanwhile. */
  readonly waitsOffThread: boolean;
  /** Bytes held in buffers this device allocated and has not freed. */
  readonly allocatedBytes: number;
  /** The most `allocatedBytes` has been since the device opened (the engine's peak GPU memory). */
  readonly peakBytes: number;
  dispose(): void;
}

/** Shapes and buffer bounds of a product, checked before cuBLAS reads or writes anything. */
export function checkGemm(g: Gemm): void {
  if (g.a.buf.dtype !== g.b.buf.dtype || g.a.buf.dtype === "i32") {
    throw new TypeError(`gemm inputs must share a float dtype: ${g.a.buf.dtype}, ${g.b.buf.dtype}`);
  }
  if (g.c.buf.dtype !== "f32") throw new TypeError(`gemm output must be f32: ${g.c.buf.dtype}`);
  const batch = g.batch ?? 1;
  const need = (p: DPtr, rows: number, cols: number, ld: number, stride: number, what: string) => {
    if (ld < Math.max(1, cols)) throw new RangeError(`${what}: leading dimension ${ld} < ${cols}`);
    if (rows === 0 || cols === 0) return;
    const end = p.off + (batch - 1) * stride + (rows - 1) * ld + cols;
    if (p.off < 0 || end > p.buf.length) {
      throw new RangeError(
        `${what} (${batch} x ${rows} x ${cols}, ld ${ld}, stride ${stride}, offset ${p.off}) needs ${end} elements: the buffer has ${p.buf.length}`,
      );
    }
  };
  const k = g.k;
  need(g.a, g.transA ? k : g.m, g.transA ? g.m : k, g.lda, g.strideA ?? 0, "A");
  need(g.b, g.transB ? g.n : k, g.transB ? k : g.n, g.ldb, g.strideB ?? 0, "B");
  need(g.c, g.m, g.n, g.ldc, g.strideC ?? 0, "C");
}
