/**
 * The oneDNN shim (shim.c, built by build.ts into build/libplshim.so) bound through Deno FFI:
 * frozen linear layers as oneDNN matmul primitives (fp32, bf16, or bf16 emulated), oneDNN's
 * sgemm for the strided attention products, and OpenMP row loops. Loaded once per process.
 */
import { checkOperands, type Sgemm } from "../fast/blas.ts";
import type { Activation } from "../fast/kernels.ts";
import type { BatchedAttention, FrozenLinear, RowKernels } from "../fast/ops.ts";
import type { PackedDtype, PackedKernels } from "../half.ts";

import { SHIM_LIBRARY } from "./paths.ts";

export { SHIM_LIBRARY };

const SYMBOLS = {
  pl_init: { parameters: [], result: "i32" },
  pl_last_error: { parameters: [], result: "pointer" },
  pl_set_threads: { parameters: ["i32"], result: "void" },
  pl_max_threads: { parameters: [], result: "i32" },
  pl_bf16_supported: { parameters: [], result: "i32" },
  pl_linear_new: {
    parameters: ["pointer", "i32", "i32", "i32", "i32", "pointer"],
    result: "pointer",
  },
  pl_linear_free: { parameters: ["pointer"], result: "void" },
  pl_linear_bytes: { parameters: ["pointer"], result: "i64" },
  pl_linear_fwd: { parameters: ["pointer", "i32", "buffer", "buffer", "i32"], result: "i32" },
  pl_linear_bwd: { parameters: ["pointer", "i32", "buffer", "buffer", "i32"], result: "i32" },
  pl_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "i32",
  },
  pl_layernorm: {
    parameters: ["buffer", "i32", "i32", "buffer", "buffer", "f32", "buffer", "buffer", "buffer"],
    result: "void",
  },
  pl_layernorm_backward: {
    parameters: ["buffer", "buffer", "buffer", "i32", "i32", "buffer", "buffer"],
    result: "void",
  },
  pl_bias_act: {
    parameters: ["buffer", "i32", "i32", "buffer", "i32", "buffer"],
    result: "void",
  },
  pl_rmsnorm: {
    parameters: ["buffer", "i32", "i32", "buffer", "f32", "buffer", "buffer", "buffer"],
    result: "void",
  },
  pl_rmsnorm_backward: {
    parameters: ["buffer", "buffer", "buffer", "i32", "i32", "buffer", "buffer"],
    result: "void",
  },
  pl_swiglu: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "void" },
  pl_swiglu_backward: { parameters: ["buffer", "buffer", "buffer", "i32"], result: "void" },
  pl_rope: {
    parameters: ["buffer", "i32", "i32", "i32", "i32", "buffer", "buffer", "i32"],
    result: "void",
  },
  pl_add_bias: { parameters: ["buffer", "i32", "i32", "i32", "buffer"], result: "void" },
  pl_mul: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  pl_sum: { parameters: ["buffer", "i64"], result: "f64" },
  pl_half_simd: { parameters: ["i32"], result: "i32" },
  pl_half_widen: { parameters: ["buffer", "i64", "i32", "buffer"], result: "void" },
  pl_int8_widen: { parameters: ["buffer", "i64", "i64", "buffer", "buffer"], result: "void" },
  pl_half_product: {
    parameters: ["i32", "i32", "i32", "buffer", "buffer", "i32", "buffer", "i32", "i32", "buffer"],
    result: "i32",
  },
  pl_attn_fwd: {
    parameters: ["i32", "buffer", "i32", "i32", "buffer", "i32", "buffer", "i32", "buffer", "f32"],
    result: "i32",
  },
  pl_attn_bwd: {
    parameters: [
      "i32",
      "buffer",
      "i32",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "f32",
    ],
    result: "i32",
  },
} as const;

type Symbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** 0 fp32; 1 bf16 (oneDNN bf16 kernels); 2 bf16 emulated (bf16-rounded operands, fp32 products). */
export type ShimMode = 0 | 1 | 2;

const ACT: Record<Activation, number> = { gelu_new: 1, gelu: 2, relu: 3 };
const DTYPE: Record<PackedDtype, number> = { f16: 0, bf16: 1, int8: 2 };
/** The kernels' code for float32 weights (read as they are). */
const F32_CODE = 3;

function dtypeCode(w: { dtype: PackedDtype }): number {
  const code = DTYPE[w.dtype];
  if (code === undefined) {
    throw new RangeError(`w.dtype must be f16, bf16 or int8: found ${w.dtype}`);
  }
  return code;
}
const FLAG_BIAS = 1, FLAG_ACCUMULATE = 2, ACT_SHIFT = 4;

export class OnednnLib {
  readonly #s: Symbols;
  readonly bf16Supported: boolean;

  constructor(lib: Deno.DynamicLibrary<typeof SYMBOLS>) {
    this.#s = lib.symbols;
    this.#check(this.#s.pl_init(), "oneDNN init");
    this.bf16Supported = this.#s.pl_bf16_supported() === 1;
  }

  get maxThreads(): number {
    return this.#s.pl_max_threads();
  }

  /** OpenMP threads for oneDNN and the row loops (process-wide). */
  setThreads(n: number): void {
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`threads must be a positive integer: found ${n}`);
    }
    this.#s.pl_set_threads(n);
  }

  #check(status: number, what: string): void {
    if (status === 0) return;
    const p = this.#s.pl_last_error();
    const text = p ? new Deno.UnsafePointerView(p).getCString() : "";
    throw new Error(`${what} failed (${status}): ${text}`);
  }

  /**
   * A frozen weight W (logical [K, N]; stored [N, K] when `transposed`). In fp32 mode the shim
   * reads `w` itself, so `w` (and `bias`) must stay alive and unchanged: the returned object keeps
   * references to them. Call `free()` when done.
   */
  linear(
    w: Float32Array,
    K: number,
    N: number,
    transposed: boolean,
    mode: ShimMode,
    bias?: Float32Array,
  ): NativeLinear {
    if (w.length < K * N) throw new RangeError(`weight must hold ${K * N} values: ${w.length}`);
    if (bias && bias.length < N) throw new RangeError(`bias must hold ${N} values: ${bias.length}`);
    const h = this.#s.pl_linear_new(
      Deno.UnsafePointer.of(w as Float32Array<ArrayBuffer>),
      K,
      N,
      transposed ? 1 : 0,
      mode,
      bias ? Deno.UnsafePointer.of(bias as Float32Array<ArrayBuffer>) : null,
    );
    if (!h) throw new Error(`could not create a ${K} x ${N} linear layer (mode ${mode})`);
    return new NativeLinear(this.#s, (s, what) => this.#check(s, what), h, K, N, w, bias);
  }

  /** The sum of `a` computed on every thread (reads it once: a memory-bandwidth probe). */
  sum(a: Float32Array): number {
    return this.#s.pl_sum(a, BigInt(a.length));
  }

  /** oneDNN's sgemm with the `Sgemm` contract (row-major, offsets, leading dimensions). */
  sgemm(): Sgemm {
    const s = this.#s, check = (st: number) => this.#check(st, "dnnl_sgemm");
    return {
      name: "dnnl_sgemm",
      sgemm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc) {
        if (m === 0 || n === 0) return;
        checkOperands(transA, transB, m, n, k, a, aOff, lda, b, bOff, ldb, c, cOff, ldc);
        check(s.pl_sgemm(
          transA ? 1 : 0,
          transB ? 1 : 0,
          m,
          n,
          k,
          alpha,
          aOff === 0 ? a : a.subarray(aOff),
          lda,
          bOff === 0 ? b : b.subarray(bOff),
          ldb,
          beta,
          cOff === 0 ? c : c.subarray(cOff),
          ldc,
        ));
      },
    };
  }

  /**
   * Attention over (sequence, head) pairs in parallel. The descriptors carry raw addresses, so the
   * engine must pass buffers that hold every row they name (it builds them from its own plan).
   */
  attention(): BatchedAttention {
    const s = this.#s, check = (st: number, what: string) => this.#check(st, what);
    return {
      forward(nSeq, desc, H, D, qkv, ldq, y, ldy, probs, scale) {
        if (desc.length < nSeq * 9) throw new RangeError("desc must hold 9 values per sequence");
        check(s.pl_attn_fwd(nSeq, desc, H, D, qkv, ldq, y, ldy, probs, scale), "attention");
      },
      backward(nSeq, desc, H, D, qkv, ldq, dy, ldy, probs, dqkv, dp, scale) {
        if (desc.length < nSeq * 9) throw new RangeError("desc must hold 9 values per sequence");
        // dqkv is written where the descriptors address qkv, dp where they address probs: both
        // must reach that far (they may be shorter than qkv and probs, which arenas over-size).
        const { qkvEnd, probsEnd } = attentionExtent(nSeq, desc, H, D, qkv, ldq);
        if (dqkv.length < qkvEnd || dp.length < probsEnd) {
          throw new RangeError(
            `dqkv and dp must reach ${qkvEnd} and ${probsEnd} values: found ${dqkv.length} and ${dp.length}`,
          );
        }
        check(
          s.pl_attn_bwd(nSeq, desc, H, D, qkv, ldq, dy, ldy, probs, dqkv, dp, scale),
          "attention backward",
        );
      },
    };
  }

  /**
   * Whether the packed (16-bit and int8) kernels use their AVX2 + F16C + FMA path. `false` forces the scalar
   * fallback (for tests), `true` restores the CPU's choice; without an argument it only asks.
   */
  halfSimd(on?: boolean): boolean {
    return this.#s.pl_half_simd(on === undefined ? -1 : on ? 1 : 0) === 1;
  }

  /** Products on packed weights read in their stored width (every core; see `PackedKernels`). */
  packedKernels(): PackedKernels {
    const s = this.#s, check = (st: number, what: string) => this.#check(st, what);
    const size = (what: string, v: number) => {
      if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
        throw new RangeError(`${what} must be a non-negative 32-bit integer: found ${v}`);
      }
    };
    const need = (what: string, length: number, n: number, shape: string) => {
      if (length < n) {
        throw new RangeError(`${what} must hold ${shape} = ${n} values: found ${length}`);
      }
    };
    return {
      widen(w, from, n, out) {
        if (
          !Number.isInteger(from) || !Number.isInteger(n) || from < 0 || n < 0 ||
          from + n > w.bits.length
        ) {
          throw new RangeError(
            `widen: elements [${from}, ${from + n}) are not within w's ${w.bits.length}`,
          );
        }
        need("out", out.length, n, "n");
        if (n === 0) return;
        if (w.dtype === "int8") {
          const width = w.bits.length / w.scales.length;
          if (from % width !== 0 || n % width !== 0) {
            throw new RangeError(
              `widen: int8 elements [${from}, ${from + n}) must be whole rows of ${width}`,
            );
          }
          const r0 = from / width, rows = n / width;
          s.pl_int8_widen(
            w.bits.subarray(from, from + n),
            BigInt(rows),
            BigInt(width),
            w.scales.subarray(r0, r0 + rows),
            out,
          );
          return;
        }
        s.pl_half_widen(w.bits.subarray(from, from + n), BigInt(n), dtypeCode(w), out);
      },
      product(m, K, N, x, w, transposed, accumulate, y) {
        size("m", m);
        size("K", K);
        size("N", N);
        need("x", x.length, m * K, `m * K = ${m} * ${K}`);
        const f32 = w instanceof Float32Array;
        need("w", f32 ? w.length : w.bits.length, K * N, `K * N = ${K} * ${N}`);
        need("y", y.length, m * N, `m * N = ${m} * ${N}`);
        const int8 = !f32 && w.dtype === "int8";
        if (int8 && w.scales.length !== (transposed ? N : K)) {
          throw new RangeError(
            `w.scales must hold one scale per stored row (${transposed ? "N" : "K"} = ${
              transposed ? N : K
            }): found ${w.scales.length}`,
          );
        }
        if (m === 0 || N === 0) return;
        check(
          s.pl_half_product(
            m,
            K,
            N,
            x,
            f32 ? w : w.bits,
            f32 ? F32_CODE : dtypeCode(w),
            int8 ? w.scales : null,
            transposed ? 1 : 0,
            accumulate ? 1 : 0,
            y,
          ),
          `${f32 ? "f32" : w.dtype} product [${m}, ${K}, ${N}]`,
        );
      },
    };
  }

  /** The row loops in C, parallel over rows (OpenMP). */
  kernels(): RowKernels {
    const s = this.#s;
    const need = (what: string, a: Float32Array, n: number) => {
      if (a.length < n) throw new RangeError(`${what} must hold ${n} values: found ${a.length}`);
    };
    return {
      layerNorm(x, rows, C, g, b, eps, out) {
        need("x", x, rows * C);
        need("out", out, rows * C);
        s.pl_layernorm(x, rows, C, g, b, eps, out, null, null);
      },
      layerNormTrain(x, rows, C, g, b, eps, out, xhat, rstd) {
        need("x", x, rows * C);
        need("out", out, rows * C);
        need("xhat", xhat, rows * C);
        need("rstd", rstd, rows);
        s.pl_layernorm(x, rows, C, g, b, eps, out, xhat, rstd);
      },
      layerNormBackward(dout, xhat, rstd, rows, C, g, dx) {
        need("dout", dout, rows * C);
        need("xhat", xhat, rows * C);
        need("rstd", rstd, rows);
        need("dx", dx, rows * C);
        s.pl_layernorm_backward(dout, xhat, rstd, rows, C, g, dx);
      },
      biasActivation(h, rows, n, bias, act) {
        need("h", h, rows * n);
        need("bias", bias, n);
        s.pl_bias_act(h, rows, n, bias, ACT[act], null);
      },
      biasActivationTrain(h, rows, n, bias, act, deriv) {
        need("h", h, rows * n);
        need("bias", bias, n);
        need("deriv", deriv, rows * n);
        s.pl_bias_act(h, rows, n, bias, ACT[act], deriv);
      },
      addBias(x, rows, n, ld, bias) {
        if (rows > 0) need("x", x, (rows - 1) * ld + n);
        need("bias", bias, n);
        s.pl_add_bias(x, rows, n, ld, bias);
      },
      mulInPlace(a, b, n) {
        need("a", a, n);
        need("b", b, n);
        s.pl_mul(a, b, n);
      },
      rmsNorm(x, rows, C, g, eps, y, xhat, rstd) {
        need("x", x, rows * C);
        need("y", y, rows * C);
        if (xhat) need("xhat", xhat, rows * C);
        if (rstd) need("rstd", rstd, rows);
        if (Boolean(xhat) !== Boolean(rstd)) throw new TypeError("xhat and rstd go together");
        s.pl_rmsnorm(x, rows, C, g, eps, y, xhat ?? null, rstd ?? null);
      },
      rmsNormBackward(dy, xhat, rstd, rows, C, g, dx) {
        need("dy", dy, rows * C);
        need("xhat", xhat, rows * C);
        need("rstd", rstd, rows);
        need("dx", dx, rows * C);
        s.pl_rmsnorm_backward(dy, xhat, rstd, rows, C, g, dx);
      },
      swiglu(gate, up, n, h) {
        need("gate", gate, n);
        need("up", up, n);
        need("h", h, n);
        s.pl_swiglu(gate, up, n, h);
      },
      swigluBackward(dh, gate, up, n) {
        need("dh", dh, n);
        need("gate", gate, n);
        need("up", up, n);
        s.pl_swiglu_backward(dh, gate, up, n);
      },
      applyRope(x, off, ld, rows, heads, D, cos, sin, r0, inverse = false) {
        const half = D / 2;
        need("x", x, off + (rows - 1) * ld + heads * D);
        need("cos", cos, (r0 + rows) * half);
        need("sin", sin, (r0 + rows) * half);
        s.pl_rope(
          x.subarray(off),
          ld,
          rows,
          heads,
          D,
          cos.subarray(r0 * half),
          sin.subarray(r0 * half),
          inverse ? 1 : 0,
        );
      },
    };
  }
}

/**
 * How far into qkv (and so dqkv) and probs (and dp) the attention descriptors reach, in floats:
 * each sequence's query rows, its key and value rows (raw addresses, relative to qkv), and its
 * probability blocks of every head.
 */
export function attentionExtent(
  nSeq: number,
  desc: BigInt64Array,
  H: number,
  D: number,
  qkv: Float32Array,
  ldq: number,
): { qkvEnd: number; probsEnd: number } {
  const base = BigInt(
    Deno.UnsafePointer.value(Deno.UnsafePointer.of(qkv as Float32Array<ArrayBuffer>)),
  );
  let qkvEnd = 0, probsEnd = 0;
  for (let s = 0; s < nSeq; s++) {
    const d = s * 9;
    const tq = Number(desc[d + 6]), t = Number(desc[d + 7]), ld = Number(desc[d + 2]);
    if (tq === 0 || t === 0) continue;
    const k = Number((desc[d] - base) / 4n), v = Number((desc[d + 1] - base) / 4n);
    const rowsEnd = (start: number, rows: number, stride: number) =>
      start + (rows - 1) * stride + H * D;
    qkvEnd = Math.max(
      qkvEnd,
      rowsEnd(Number(desc[d + 3]), tq, ldq),
      rowsEnd(k, t, ld),
      rowsEnd(v, t, ld),
    );
    probsEnd = Math.max(probsEnd, Number(desc[d + 5]) + H * tq * t);
  }
  return { qkvEnd, probsEnd };
}

export class NativeLinear implements FrozenLinear {
  #h: Deno.PointerValue;
  constructor(
    readonly s: Symbols,
    readonly check: (status: number, what: string) => void,
    h: Deno.PointerValue,
    readonly K: number,
    readonly N: number,
    /** Kept so the memory the shim may read stays alive. */
    readonly weight: Float32Array,
    readonly bias: Float32Array | undefined,
  ) {
    this.#h = h;
  }

  /** Bytes of weights the shim holds itself (bf16 copies; 0 in fp32 mode). */
  get ownBytes(): number {
    return this.#h ? Number(this.s.pl_linear_bytes(this.#h)) : 0;
  }

  forward(
    m: number,
    x: Float32Array,
    y: Float32Array,
    opts: { bias?: boolean; accumulate?: boolean; act?: Activation },
  ): void {
    if (!this.#h) throw new Error("linear layer was freed");
    if (x.length < m * this.K) throw new RangeError(`x must hold ${m * this.K}: ${x.length}`);
    if (y.length < m * this.N) throw new RangeError(`y must hold ${m * this.N}: ${y.length}`);
    if (opts.bias && !this.bias) throw new RangeError("this linear layer has no bias");
    if (opts.accumulate && opts.act) {
      throw new RangeError("an accumulating product takes no activation");
    }
    const flags = (opts.bias ? FLAG_BIAS : 0) | (opts.accumulate ? FLAG_ACCUMULATE : 0) |
      ((opts.act ? ACT[opts.act] : 0) << ACT_SHIFT);
    this.check(
      this.s.pl_linear_fwd(this.#h, m, x, y, flags),
      `matmul [${m}, ${this.K}, ${this.N}]`,
    );
  }

  backward(m: number, dy: Float32Array, dx: Float32Array): void {
    if (!this.#h) throw new Error("linear layer was freed");
    if (dy.length < m * this.N) throw new RangeError(`dy must hold ${m * this.N}: ${dy.length}`);
    if (dx.length < m * this.K) throw new RangeError(`dx must hold ${m * this.K}: ${dx.length}`);
    this.check(
      this.s.pl_linear_bwd(this.#h, m, dy, dx, 0),
      `matmul [${m}, ${this.N}, ${this.K}]`,
    );
  }

  free(): void {
    if (this.#h) this.s.pl_linear_free(this.#h);
    this.#h = null;
  }
}

let loaded: OnednnLib | null = null;

/** Whether the shim is open in this process already (its OpenMP settings are then fixed). */
export function isOnednnLoaded(): boolean {
  return loaded !== null;
}

/**
 * The shim, opened once per process. Throws saying what to do when it is not built or when
 * libdnnl2 is missing.
 */
export function loadOnednn(): OnednnLib {
  if (loaded) return loaded;
  let lib;
  try {
    lib = Deno.dlopen(SHIM_LIBRARY, SYMBOLS);
  } catch (e) {
    throw new Error(
      `the oneDNN engine's shim ${SHIM_LIBRARY} could not be loaded (${(e as Error).message}); ` +
        "install the Debian packages libdnnl2 and libdnnl-dev and gcc, then run " +
        "`deno task build-native`",
    );
  }
  loaded = new OnednnLib(lib);
  return loaded;
}
