/**
 * Single-precision matrix products for the fast engine: OpenBLAS's `cblas_sgemm` through
 * `Deno.dlopen` when the library is installed, and a cache-blocked TypeScript fallback with the
 * same signature otherwise. Both are row-major and take element offsets plus leading dimensions,
 * so a strided sub-matrix (one head's Q inside a [T, 3C] buffer, lda = 3C) needs no copy.
 */

/** C = alpha * op(A) @ op(B) + beta * C, row-major; op(X) = X or X^T. */
export interface Sgemm {
  readonly name: string;
  /**
   * @param m rows of op(A) and C; @param n columns of op(B) and C; @param k inner dimension.
   * Offsets are in elements; a leading dimension is the row stride of the matrix as stored
   * (A is [m, k] stored, or [k, m] when transA).
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    aOff: number,
    lda: number,
    b: Float32Array,
    bOff: number,
    ldb: number,
    beta: number,
    c: Float32Array,
    cOff: number,
    ldc: number,
  ): void;
}

/** A native BLAS bound through FFI. */
export interface Blas extends Sgemm {
  /** The library file that was opened. */
  readonly library: string;
  /** The kernel family OpenBLAS runs ("SkylakeX", "Haswell", ...); null if it cannot say. */
  readonly coreType: string | null;
  /** Sets the BLAS thread count (process-wide); false when the library has no such control. */
  setThreads(n: number): boolean;
  /** Unloads the library; the object must not be used afterwards. */
  close(): void;
}

/** Where OpenBLAS usually lives on Debian/Ubuntu, most specific first. */
export const BLAS_CANDIDATES: readonly string[] = [
  "libopenblas.so.0",
  "libopenblas.so",
  "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "libblas.so.3",
];

const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

const SGEMM_SYMBOL = {
  name: "cblas_sgemm",
  parameters: [
    "i32", // order
    "i32", // transA
    "i32", // transB
    "i32", // m
    "i32", // n
    "i32", // k
    "f32", // alpha
    "buffer", // A
    "i32", // lda
    "buffer", // B
    "i32", // ldb
    "f32", // beta
    "buffer", // C
    "i32", // ldc
  ],
  result: "void",
} as const;

const SGEMV_SYMBOL = {
  name: "cblas_sgemv",
  parameters: [
    "i32", // order
    "i32", // trans
    "i32", // m
    "i32", // n
    "f32", // alpha
    "buffer", // A
    "i32", // lda
    "buffer", // x
    "i32", // incx
    "f32", // beta
    "buffer", // y
    "i32", // incy
  ],
  result: "void",
  optional: true,
} as const;

const CORENAME_SYMBOL = {
  name: "openblas_get_corename",
  parameters: [],
  result: "pointer",
  optional: true,
} as const;

const THREADS_SYMBOL = {
  name: "openblas_set_num_threads",
  parameters: ["i32"],
  result: "void",
  optional: true,
} as const;

export interface LoadBlasOptions {
  /** Library names or paths tried in order; default `BLAS_CANDIDATES`. */
  paths?: readonly string[];
  /** BLAS threads; default: leave the library's own default (all cores for OpenBLAS). */
  threads?: number;
  /**
   * OpenBLAS kernel family (`OPENBLAS_CORETYPE`) to request before the library loads.
   * Default "auto": chosen from /proc/cpuinfo when the variable is unset (see `pickCoreType`);
   * null leaves the library's own detection alone.
   */
  coreType?: string | null;
}

/**
 * The OpenBLAS kernel family for a CPU with these /proc/cpuinfo flags, or null when there is no
 * reason to override detection. Why: OpenBLAS releases older than the CPU (Debian 12 ships 0.3.21)
 * do not recognise it and fall back to the SSE3 "Prescott" kernels, 3 to 5 times slower than the
 * AVX-512 ("SkylakeX") or AVX2 ("Haswell") ones the CPU can run.
 */
export function pickCoreType(cpuinfo: string): string | null {
  const line = cpuinfo.split("\n").find((l) => /^flags\s*:/.test(l));
  if (!line) return null;
  const flags = new Set(line.slice(line.indexOf(":") + 1).trim().split(/\s+/));
  const all = (...f: string[]) => f.every((x) => flags.has(x));
  if (all("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512cd")) return "SkylakeX";
  if (all("avx2", "fma")) return "Haswell";
  return null;
}

/** Sets OPENBLAS_CORETYPE for the library about to load, unless the user already chose one. */
function requestCoreType(coreType: string | null | undefined): void {
  if (coreType === null) return;
  try {
    if (Deno.env.get("OPENBLAS_CORETYPE")) return;
    const pick = coreType === undefined || coreType === "auto"
      ? pickCoreType(Deno.readTextFileSync("/proc/cpuinfo"))
      : coreType;
    if (pick) Deno.env.set("OPENBLAS_CORETYPE", pick);
  } catch {
    // No /proc/cpuinfo or no env permission: the library's own detection stands.
  }
}

/**
 * Opens the first library in `paths` that exports `cblas_sgemm`; null when none does (or when FFI
 * is not permitted), so callers fall back to `jsSgemm()`.
 */
export function loadBlas(opts: LoadBlasOptions = {}): Blas | null {
  if (opts.threads !== undefined && (!Number.isInteger(opts.threads) || opts.threads < 1)) {
    throw new RangeError(`threads must be a positive integer: found ${opts.threads}`);
  }
  requestCoreType(opts.coreType);
  for (const path of opts.paths ?? BLAS_CANDIDATES) {
    let lib;
    try {
      lib = Deno.dlopen(path, {
        sgemm: SGEMM_SYMBOL,
        sgemv: SGEMV_SYMBOL,
        setThreads: THREADS_SYMBOL,
        coreName: CORENAME_SYMBOL,
      });
    } catch {
      continue; // not installed under this name, or no --allow-ffi: try the next one
    }
    const blas = new FfiBlas(path, lib);
    if (opts.threads !== undefined) blas.setThreads(opts.threads);
    return blas;
  }
  return null;
}

type BlasLib = Deno.DynamicLibrary<{
  sgemm: typeof SGEMM_SYMBOL;
  sgemv: typeof SGEMV_SYMBOL;
  setThreads: typeof THREADS_SYMBOL;
  coreName: typeof CORENAME_SYMBOL;
}>;

class FfiBlas implements Blas {
  readonly name: string;
  readonly coreType: string | null;
  readonly #fn: BlasLib["symbols"]["sgemm"];
  readonly #gemv: BlasLib["symbols"]["sgemv"];
  readonly #lib: BlasLib;
  constructor(readonly library: string, lib: BlasLib) {
    const core = lib.symbols.coreName?.();
    this.coreType = core ? new Deno.UnsafePointerView(core).getCString() : null;
    this.name = `openblas(${library}${this.coreType ? `, ${this.coreType}` : ""})`;
    this.#lib = lib;
    this.#fn = lib.symbols.sgemm;
    this.#gemv = lib.symbols.sgemv;
  }

  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    aOff: number,
    lda: number,
    b: Float32Array,
    bOff: number,
    ldb: number,
    beta: number,
    c: Float32Array,
    cOff: number,
    ldc: number,
  ): void {
    if (m === 0 || n === 0) return;
    checkOperands(transA, transB, m, n, k, a, aOff, lda, b, bOff, ldb, c, cOff, ldc);
    if (m === 1 && k > 0 && this.#gemv) {
      // One row (a decode step, one logit row, one query's scores): OpenBLAS 0.3.21's sgemm
      // packs all of B for it, several times slower than the matrix-vector product, which
      // streams B once. Newer OpenBLAS forwards so itself (GEMM_GEMV_FORWARD).
      this.#gemv(
        ROW_MAJOR,
        transB ? NO_TRANS : TRANS,
        transB ? n : k,
        transB ? k : n,
        alpha,
        bOff === 0 ? b : b.subarray(bOff),
        ldb,
        aOff === 0 ? a : a.subarray(aOff),
        transA ? lda : 1,
        beta,
        cOff === 0 ? c : c.subarray(cOff),
        1,
      );
      return;
    }
    // A whole array passes its own pointer; a subarray view carries the offset (cheaper than a
    // pointer object per call, and the view keeps the buffer alive for the call).
    this.#fn(
      ROW_MAJOR,
      transA ? TRANS : NO_TRANS,
      transB ? TRANS : NO_TRANS,
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
    );
  }

  setThreads(n: number): boolean {
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`threads must be a positive integer: found ${n}`);
    }
    const set = this.#lib.symbols.setThreads;
    if (!set) return false;
    set(n);
    return true;
  }

  close(): void {
    this.#lib.close();
  }
}

/**
 * Bounds checks shared by both implementations: a native call with a wrong leading dimension
 * would read or write outside the array instead of throwing.
 */
export function checkOperands(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  a: Float32Array,
  aOff: number,
  lda: number,
  b: Float32Array,
  bOff: number,
  ldb: number,
  c: Float32Array,
  cOff: number,
  ldc: number,
): void {
  const aRows = transA ? k : m, aCols = transA ? m : k;
  const bRows = transB ? n : k, bCols = transB ? k : n;
  if (lda < Math.max(1, aCols)) throw new RangeError(`lda must be >= ${aCols}: found ${lda}`);
  if (ldb < Math.max(1, bCols)) throw new RangeError(`ldb must be >= ${bCols}: found ${ldb}`);
  if (ldc < Math.max(1, n)) throw new RangeError(`ldc must be >= ${n}: found ${ldc}`);
  if (k > 0 && aOff + (aRows - 1) * lda + aCols > a.length) {
    throw new RangeError(
      `A (${aRows} x ${aCols}, lda ${lda}, offset ${aOff}) needs ${
        aOff + (aRows - 1) * lda + aCols
      } elements: found ${a.length}`,
    );
  }
  if (k > 0 && bOff + (bRows - 1) * ldb + bCols > b.length) {
    throw new RangeError(
      `B (${bRows} x ${bCols}, ldb ${ldb}, offset ${bOff}) needs ${
        bOff + (bRows - 1) * ldb + bCols
      } elements: found ${b.length}`,
    );
  }
  if (cOff + (m - 1) * ldc + n > c.length) {
    throw new RangeError(
      `C (${m} x ${n}, ldc ${ldc}, offset ${cOff}) needs ${
        cOff + (m - 1) * ldc + n
      } elements: found ${c.length}`,
    );
  }
  if (aOff < 0 || bOff < 0 || cOff < 0) {
    throw new RangeError(`offsets must be >= 0: found ${aOff}, ${bOff}, ${cOff}`);
  }
}

/** Blocking of the fallback: a block of B (64 KiB) stays in L2 while every row of A visits it. */
const KB = 128; // rows of B per block (i-k-j form)
const NB = 128; // columns of B per block (i-k-j form)
const JB = 64; // rows of stored B per block (dot-product form, B transposed)

/**
 * Pure-TypeScript sgemm, in two unit-stride forms chosen by the layout of B:
 * - B as stored ([k, n]): i-k-j over [KB, NB] blocks, the inner loop runs along a row of B and C;
 * - B transposed (stored [n, k]): dot products of a row of A with rows of B over blocks of JB rows.
 * A transposed A is first gathered one row at a time into a scratch row owned by the instance
 * (grow-only), so no call allocates in steady state.
 */
export class JsSgemm implements Sgemm {
  readonly name = "typescript";
  #row = new Float32Array(256);

  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    aOff: number,
    lda: number,
    b: Float32Array,
    bOff: number,
    ldb: number,
    beta: number,
    c: Float32Array,
    cOff: number,
    ldc: number,
  ): void {
    if (m === 0 || n === 0) return;
    checkOperands(transA, transB, m, n, k, a, aOff, lda, b, bOff, ldb, c, cOff, ldc);
    scaleRows(c, cOff, ldc, m, n, beta);
    if (k === 0 || alpha === 0) return;
    if (this.#row.length < k) this.#row = new Float32Array(k);
    const row = this.#row;
    if (!transB) {
      for (let j0 = 0; j0 < n; j0 += NB) {
        const nb = Math.min(NB, n - j0);
        for (let p0 = 0; p0 < k; p0 += KB) {
          const kb = Math.min(KB, k - p0);
          for (let i = 0; i < m; i++) {
            let src = a, base = aOff + i * lda + p0;
            if (transA) {
              gatherColumn(a, aOff + p0 * lda + i, lda, kb, row);
              src = row;
              base = 0;
            }
            axpyRows(
              src,
              base,
              alpha,
              kb,
              b,
              bOff + p0 * ldb + j0,
              ldb,
              nb,
              c,
              cOff + i * ldc + j0,
            );
          }
        }
      }
      return;
    }
    for (let j0 = 0; j0 < n; j0 += JB) {
      const jb = Math.min(JB, n - j0);
      for (let i = 0; i < m; i++) {
        let src = a, base = aOff + i * lda;
        if (transA) {
          gatherColumn(a, aOff + i, lda, k, row);
          src = row;
          base = 0;
        }
        const cBase = cOff + i * ldc + j0;
        for (let j = 0; j < jb; j++) {
          c[cBase + j] += alpha * dot(src, base, b, bOff + (j0 + j) * ldb, k);
        }
      }
    }
  }
}

/** Creates the fallback sgemm. */
export function jsSgemm(): Sgemm {
  return new JsSgemm();
}

function scaleRows(
  c: Float32Array,
  cOff: number,
  ldc: number,
  m: number,
  n: number,
  beta: number,
): void {
  if (beta === 1) return;
  for (let i = 0; i < m; i++) {
    const base = cOff + i * ldc;
    // beta = 0 overwrites (BLAS semantics: NaN or garbage in C must not leak through).
    if (beta === 0) c.fill(0, base, base + n);
    else for (let j = 0; j < n; j++) c[base + j] *= beta;
  }
}

/** row[p] = a[base + p * stride] for p < n. */
function gatherColumn(a: Float32Array, base: number, stride: number, n: number, row: Float32Array) {
  for (let p = 0; p < n; p++) row[p] = a[base + p * stride];
}

/** c[0:nb] += alpha * sum_p x[p] * B[p, 0:nb], two rows of B per pass. */
function axpyRows(
  x: Float32Array,
  xBase: number,
  alpha: number,
  kb: number,
  b: Float32Array,
  bBase: number,
  ldb: number,
  nb: number,
  c: Float32Array,
  cBase: number,
): void {
  let p = 0;
  for (; p + 1 < kb; p += 2) {
    const a0 = alpha * x[xBase + p], a1 = alpha * x[xBase + p + 1];
    if (a0 === 0 && a1 === 0) continue; // masked attention probabilities are exact zeros
    const r0 = bBase + p * ldb, r1 = r0 + ldb;
    for (let j = 0; j < nb; j++) c[cBase + j] += a0 * b[r0 + j] + a1 * b[r1 + j];
  }
  if (p < kb) {
    const a0 = alpha * x[xBase + p], r0 = bBase + p * ldb;
    for (let j = 0; j < nb; j++) c[cBase + j] += a0 * b[r0 + j];
  }
}

/** sum_p x[xBase + p] * y[yBase + p] with four partial sums. */
function dot(x: Float32Array, xBase: number, y: Float32Array, yBase: number, n: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let p = 0;
  for (; p + 3 < n; p += 4) {
    s0 += x[xBase + p] * y[yBase + p];
    s1 += x[xBase + p + 1] * y[yBase + p + 1];
    s2 += x[xBase + p + 2] * y[yBase + p + 2];
    s3 += x[xBase + p + 3] * y[yBase + p + 3];
  }
  for (; p < n; p++) s0 += x[xBase + p] * y[yBase + p];
  return (s0 + s1) + (s2 + s3);
}
