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
  setThreads: typeof THREADS_SYMBOL;
  coreName: typeof CORENAME_SYMBOL;
}>;

class FfiBlas implements Blas {
  readonly name: string;
  readonly coreType: string | null;
  readonly #fn: BlasLib["symbols"]["sgemm"];
  readonly #lib: BlasLib;
  constructor(readonly library: string, lib: BlasLib) {
    const core = lib.symbols.coreName?.();
    this.coreType = core ? new Deno.UnsafePointerView(core).getCString() : null;
    this.name = `openblas(${library}${this.coreType ? `, ${this.coreType}` : ""})`;
    this.#lib = lib;
    this.#fn = lib.symbols.sgemm;
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
function checkOperands(
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

/** Panel sizes of the fallback: a [KB, NB] panel of B (64 KiB) stays in L2 across all rows. */
const KB = 128;
const NB = 128;

/**
 * Pure-TypeScript sgemm. op(B) is packed one [KB, NB] panel at a time into a contiguous buffer,
 * then every row of C is updated i-k-j over that panel, so the inner loop is unit-stride for any
 * transposition. The panel buffer is owned by the instance (no allocation per call).
 */
export class JsSgemm implements Sgemm {
  readonly name = "typescript";
  readonly #panel = new Float32Array(KB * NB);

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
    const panel = this.#panel;
    // Strides of op(A)[i, p] and op(B)[p, j] in the stored arrays.
    const aRow = transA ? 1 : lda, aCol = transA ? lda : 1;
    const bRow = transB ? 1 : ldb, bCol = transB ? ldb : 1;
    for (let j0 = 0; j0 < n; j0 += NB) {
      const nb = Math.min(NB, n - j0);
      for (let p0 = 0; p0 < k; p0 += KB) {
        const kb = Math.min(KB, k - p0);
        packPanel(panel, b, bOff + p0 * bRow + j0 * bCol, bRow, bCol, kb, nb);
        for (let i = 0; i < m; i++) {
          const aBase = aOff + i * aRow + p0 * aCol;
          const cBase = cOff + i * ldc + j0;
          panelRow(panel, a, aBase, aCol, alpha, kb, nb, c, cBase);
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

function packPanel(
  panel: Float32Array,
  b: Float32Array,
  base: number,
  rowStride: number,
  colStride: number,
  kb: number,
  nb: number,
): void {
  for (let p = 0; p < kb; p++) {
    const src = base + p * rowStride;
    const dst = p * nb;
    for (let j = 0; j < nb; j++) panel[dst + j] = b[src + j * colStride];
  }
}

/** C[i, j0:j0+nb] += alpha * sum_p A[i, p] * panel[p, :], two panel rows per pass. */
function panelRow(
  panel: Float32Array,
  a: Float32Array,
  aBase: number,
  aCol: number,
  alpha: number,
  kb: number,
  nb: number,
  c: Float32Array,
  cBase: number,
): void {
  let p = 0;
  for (; p + 1 < kb; p += 2) {
    const a0 = alpha * a[aBase + p * aCol];
    const a1 = alpha * a[aBase + (p + 1) * aCol];
    if (a0 === 0 && a1 === 0) continue;
    const r0 = p * nb, r1 = r0 + nb;
    for (let j = 0; j < nb; j++) c[cBase + j] += a0 * panel[r0 + j] + a1 * panel[r1 + j];
  }
  if (p < kb) {
    const a0 = alpha * a[aBase + p * aCol];
    const r0 = p * nb;
    for (let j = 0; j < nb; j++) c[cBase + j] += a0 * panel[r0 + j];
  }
}
