import { assert, assertThrows } from "../../../test/assert.ts";
import { jsSgemm, loadBlas, pickCoreType, type Sgemm } from "./blas.ts";
import { uniform as filled } from "../testing/random.ts";

interface Case {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  alpha: number;
  beta: number;
  /** Extra columns beyond the logical width (leading dimension > width). */
  padA: number;
  padB: number;
  padC: number;
  /** Element offsets of the sub-matrices inside their arrays. */
  offA: number;
  offB: number;
  offC: number;
}

/** Naive triple loop over the same strided layout: the specification. */
function naive(
  c: Case,
  a: Float32Array,
  lda: number,
  b: Float32Array,
  ldb: number,
  out: Float32Array,
  ldc: number,
): void {
  for (let i = 0; i < c.m; i++) {
    for (let j = 0; j < c.n; j++) {
      let s = 0;
      for (let p = 0; p < c.k; p++) {
        const av = c.transA ? a[c.offA + p * lda + i] : a[c.offA + i * lda + p];
        const bv = c.transB ? b[c.offB + j * ldb + p] : b[c.offB + p * ldb + j];
        s += av * bv;
      }
      const at = c.offC + i * ldc + j;
      out[at] = c.alpha * s + (c.beta === 0 ? 0 : c.beta * out[at]);
    }
  }
}

function runCase(impl: Sgemm, c: Case): void {
  const aCols = c.transA ? c.m : c.k, aRows = c.transA ? c.k : c.m;
  const bCols = c.transB ? c.k : c.n, bRows = c.transB ? c.n : c.k;
  const lda = aCols + c.padA, ldb = bCols + c.padB, ldc = c.n + c.padC;
  const a = filled(c.offA + aRows * lda, 1), b = filled(c.offB + bRows * ldb, 2);
  const got = filled(c.offC + c.m * ldc, 3), want = got.slice();
  impl.sgemm(
    c.transA,
    c.transB,
    c.m,
    c.n,
    c.k,
    c.alpha,
    a,
    c.offA,
    lda,
    b,
    c.offB,
    ldb,
    c.beta,
    got,
    c.offC,
    ldc,
  );
  naive(c, a, lda, b, ldb, want, ldc);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  // Padding columns and the prefix before offC must be untouched: they are compared too.
  assert(worst < 1e-4 * Math.max(1, c.k), `${impl.name} ${JSON.stringify(c)}: max err ${worst}`);
}

const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [3, 5, 7],
  [40, 40, 32],
  [37, 129, 131], // crosses the fallback's 128-wide panels
  [64, 300, 256],
  // One row: the native path forwards it to sgemv (x strided when transA, B either way).
  [1, 300, 129],
  [1, 7, 64],
];

function allCases(): Case[] {
  const cases: Case[] = [];
  for (const [m, n, k] of SHAPES) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        cases.push({
          transA,
          transB,
          m,
          n,
          k,
          alpha: 1,
          beta: 0,
          padA: 0,
          padB: 0,
          padC: 0,
          offA: 0,
          offB: 0,
          offC: 0,
        });
        cases.push({
          transA,
          transB,
          m,
          n,
          k,
          alpha: 0.5,
          beta: 1,
          padA: 64,
          padB: 3,
          padC: 5,
          offA: 32,
          offB: 7,
          offC: 11,
        });
        cases.push({
          transA,
          transB,
          m,
          n,
          k,
          alpha: -2,
          beta: 0.25,
          padA: 1,
          padB: 96,
          padC: 0,
          offA: 3,
          offB: 0,
          offC: 2,
        });
      }
    }
  }
  return cases;
}

Deno.test("jsSgemm() matches a naive triple loop for all transposes, strides and offsets", () => {
  const impl = jsSgemm();
  for (const c of allCases()) runCase(impl, c);
});

Deno.test("loadBlas() sgemm matches a naive triple loop for all transposes, strides and offsets", () => {
  const blas = loadBlas();
  if (!blas) {
    console.warn("OpenBLAS not installed: native sgemm not tested");
    return;
  }
  try {
    for (const c of allCases()) runCase(blas, c);
  } finally {
    blas.close();
  }
});

Deno.test("sgemm with beta 0 overwrites NaN already in C", () => {
  const impls: Sgemm[] = [jsSgemm()];
  const blas = loadBlas();
  if (blas) impls.push(blas);
  for (const impl of impls) {
    const c = new Float32Array(4).fill(NaN);
    impl.sgemm(
      false,
      false,
      2,
      2,
      1,
      1,
      new Float32Array([1, 2]),
      0,
      1,
      new Float32Array([3, 4]),
      0,
      2,
      0,
      c,
      0,
      2,
    );
    assert(c.every((v, i) => v === [3, 4, 6, 8][i]), `${impl.name}: ${c}`);
    // One row (sgemv in the native path).
    const row = new Float32Array(2).fill(NaN);
    impl.sgemm(
      false,
      false,
      1,
      2,
      1,
      1,
      new Float32Array([2]),
      0,
      1,
      new Float32Array([3, 4]),
      0,
      2,
      0,
      row,
      0,
      2,
    );
    assert(row[0] === 6 && row[1] === 8, `${impl.name} one row: ${row}`);
  }
  blas?.close();
});

Deno.test("sgemm rejects operands that would run past their arrays", () => {
  const impls: Sgemm[] = [jsSgemm()];
  const blas = loadBlas();
  if (blas) impls.push(blas);
  for (const impl of impls) {
    const small = new Float32Array(10);
    assertThrows(
      () => impl.sgemm(false, false, 4, 4, 4, 1, small, 0, 4, small, 0, 4, 0, small, 0, 4),
      RangeError,
      "A (4 x 4, lda 4, offset 0) needs 16 elements: found 10",
    );
    assertThrows(
      () => impl.sgemm(false, false, 2, 2, 2, 1, small, 0, 1, small, 0, 2, 0, small, 0, 2),
      RangeError,
      "lda must be >= 2: found 1",
    );
  }
  blas?.close();
});

Deno.test("loadBlas() returns null when no candidate library exists", () => {
  assert(loadBlas({ paths: ["libdoes-not-exist.so.9"] }) === null);
});

Deno.test("loadBlas() rejects a non-positive thread count", () => {
  assertThrows(() => loadBlas({ threads: 0 }), RangeError, "threads must be a positive integer");
});

Deno.test("pickCoreType() asks for AVX-512 or AVX2 kernels only when the CPU has them", () => {
  const info = (flags: string) => `processor\t: 0\nflags\t\t: ${flags}\nbogomips\t: 4200\n`;
  const avx512 = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl";
  assert(pickCoreType(info(avx512)) === "SkylakeX");
  assert(pickCoreType(info("fpu sse sse2 avx avx2 fma")) === "Haswell");
  assert(pickCoreType(info("fpu sse sse2 sse3 avx")) === null);
  assert(pickCoreType("no flags here") === null);
});

Deno.test("loadBlas() reports the OpenBLAS kernel family it runs", () => {
  const blas = loadBlas();
  if (!blas) return;
  try {
    assert(blas.coreType === null || blas.coreType.length > 0);
    assert(blas.name.includes(blas.library));
  } finally {
    blas.close();
  }
});
