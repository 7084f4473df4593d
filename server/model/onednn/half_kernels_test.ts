/**
 * The shim's 16-bit kernels (`OnednnLib.packedKernels`): widening bit-for-bit against the
 * TypeScript `widenInto`, and products against a float64 reference on the widened weights, on the
 * AVX2 path where this CPU has one and on the scalar fallback. Skipped when the shim is not built,
 * unless ONEDNN_TEST=required (CI).
 */
import { assert, assertEquals, assertThrows } from "../../../test/assert.ts";
import {
  type HalfDtype,
  halfFromFloat32,
  type HalfMatrix,
  type Matrix,
  type PackedDtype,
  toFloat32,
  widenInto,
} from "../half.ts";
import { quantizeInt8 } from "../int8.ts";
import { loadOnednn, type OnednnLib } from "./lib.ts";
import { uniform as rand } from "../testing/random.ts";

let lib: OnednnLib | null = null;
try {
  lib = loadOnednn();
} catch (e) {
  if (Deno.env.get("ONEDNN_TEST") === "required") throw e;
  console.warn(`oneDNN half kernel tests skipped: ${(e as Error).message}`);
}
const ignore = lib === null;
const DTYPES: HalfDtype[] = ["f16", "bf16"];

/** The kernels' paths on this CPU: AVX2 (where present) and the scalar fallback. */
function paths(): { name: string; simd: boolean }[] {
  const simd = lib!.halfSimd();
  return simd ? [{ name: "avx2", simd: true }, { name: "scalar", simd: false }] : [{
    name: "scalar",
    simd: false,
  }];
}

/** Runs `fn` with the given path selected, restoring the CPU's choice afterwards. */
function onPath<T>(simd: boolean, fn: () => T): T {
  if (!simd) lib!.halfSimd(false);
  try {
    return fn();
  } finally {
    lib!.halfSimd(true);
  }
}

function assertSameWidening(w: HalfMatrix, from: number, n: number, got: Float32Array): void {
  const want = new Float32Array(n);
  widenInto(w, from, n, want);
  const gu = new Uint32Array(got.buffer, got.byteOffset, n);
  const wu = new Uint32Array(want.buffer, want.byteOffset, n);
  for (let i = 0; i < n; i++) {
    if (Number.isNaN(want[i])) {
      assert(Number.isNaN(got[i]), `${w.dtype} bits ${w.bits[from + i]}: ${got[i]} is not NaN`);
    } else if (gu[i] !== wu[i]) {
      throw new Error(
        `${w.dtype} bits 0x${w.bits[from + i].toString(16)}: ` +
          `0x${gu[i].toString(16)} instead of 0x${wu[i].toString(16)}`,
      );
    }
  }
}

Deno.test({
  name: "packedKernels().widen matches widenInto bit for bit on all 65536 patterns of f16 and bf16",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    const bits = new Uint16Array(65536);
    for (let i = 0; i < bits.length; i++) bits[i] = i;
    for (const { name, simd } of paths()) {
      for (const dtype of DTYPES) {
        const w: HalfMatrix = { dtype, bits };
        const out = new Float32Array(65536);
        onPath(simd, () => hk.widen(w, 0, 65536, out));
        try {
          assertSameWidening(w, 0, 65536, out);
        } catch (e) {
          throw new Error(`${name}: ${(e as Error).message}`);
        }
      }
    }
  },
});

Deno.test({
  name: "packedKernels().widen widens unaligned ranges of odd length into out[0..n)",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    const bits = new Uint16Array(200_003);
    for (let i = 0; i < bits.length; i++) bits[i] = (i * 40503 + 7) & 0xffff;
    for (const { simd } of paths()) {
      for (const dtype of DTYPES) {
        const w: HalfMatrix = { dtype, bits };
        for (const [from, n] of [[1, 1], [3, 7], [5, 17], [13, 1001], [7, 150_001], [0, 0]]) {
          const out = new Float32Array(n + 3).fill(-1);
          onPath(simd, () => hk.widen(w, from, n, out));
          assertSameWidening(w, from, n, out);
          assertEquals(Array.from(out.subarray(n)), [-1, -1, -1]);
        }
      }
    }
  },
});

/** y = x @ W (+ y0) in float64 on the widened logical [K, N] weights; also sum |terms|. */
function reference(
  m: number,
  K: number,
  N: number,
  x: Float32Array,
  wide: Float32Array,
  y0: Float32Array | null,
): { y: Float64Array; scale: Float64Array } {
  const y = new Float64Array(m * N), scale = new Float64Array(m * N);
  for (let r = 0; r < m; r++) {
    for (let k = 0; k < K; k++) {
      const xv = x[r * K + k];
      for (let n = 0; n < N; n++) {
        const t = xv * wide[k * N + n];
        y[r * N + n] += t;
        scale[r * N + n] += Math.abs(t);
      }
    }
  }
  if (y0) {
    for (let i = 0; i < m * N; i++) {
      y[i] += y0[i];
      scale[i] += Math.abs(y0[i]);
    }
  }
  return { y, scale };
}

function transpose<T extends Uint16Array | Float32Array>(a: T, K: number, N: number): T {
  const t = new (a.constructor as { new (n: number): T })(K * N);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) t[n * K + k] = a[k * N + n];
  return t;
}

/**
 * A weight of logical shape [K, N] in `dtype`, stored [K, N] or [N, K], with its values as the
 * products must see them (logical [K, N], float32). int8 has a scale per stored row, so each
 * layout quantises on its own.
 */
function packedWeight(
  dtype: PackedDtype | "f32",
  K: number,
  N: number,
  transposed: boolean,
  seed: number,
): { w: Matrix; wide: Float32Array } {
  const f = rand(K * N, seed, 2);
  if (dtype === "f32") return { w: transposed ? transpose(f, K, N) : f, wide: f };
  if (dtype === "int8") {
    if (!transposed) {
      const w = quantizeInt8(f, K);
      return { w, wide: toFloat32(w) };
    }
    const w = quantizeInt8(transpose(f, K, N), N);
    return { w, wide: transpose(toFloat32(w), N, K) };
  }
  const h = halfFromFloat32(dtype, f);
  const wide = toFloat32(h);
  return { w: transposed ? { dtype, bits: transpose(h.bits, K, N) } : h, wide };
}

Deno.test({
  name:
    "packedKernels().product matches a float64 reference for f16/bf16/int8/f32, [K,N] and [N,K], with and without accumulate, m 1..33, with tails",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    // Paths: single-threaded (small), rows k split over threads (K >= 128, y in cache: 131 x 601,
    // 768 x 2304), columns split over threads (small K: 8 x 20011).
    const shapes = [[37, 53], [64, 256], [5, 3], [131, 601], [8, 20011], [768, 2304]];
    let seed = 1;
    for (const dtype of [...DTYPES, "int8", "f32"] as const) {
      for (const [K, N] of shapes) {
        const layouts = [false, true].map((t) => packedWeight(dtype, K, N, t, seed++));
        for (const m of [1, 2, 3, 4, 5, 9, 33]) {
          const x = rand(m * K, seed++);
          const y0 = rand(m * N, seed++, 3);
          for (const transposed of [false, true]) {
            const { w, wide } = layouts[transposed ? 1 : 0];
            const plain = reference(m, K, N, x, wide, null);
            const added = reference(m, K, N, x, wide, y0);
            for (const { name, simd } of paths()) {
              for (const accumulate of [false, true]) {
                // y one longer than needed: the value past m * N stays as it was.
                const y = new Float32Array(m * N + 1).fill(NaN);
                if (accumulate) y.set(y0);
                y[m * N] = 42;
                onPath(simd, () => hk.product(m, K, N, x, w, transposed, accumulate, y));
                const ref = accumulate ? added : plain;
                for (let i = 0; i < m * N; i++) {
                  const err = Math.abs(y[i] - ref.y[i]);
                  if (!(err <= 1e-5 * ref.scale[i] + 1e-30)) {
                    throw new Error(
                      `${name} ${dtype} m=${m} K=${K} N=${N} transposed=${transposed} ` +
                        `accumulate=${accumulate}: y[${i}] = ${y[i]}, reference ${ref.y[i]} ` +
                        `(sum of |terms| ${ref.scale[i]})`,
                    );
                  }
                }
                assertEquals(y[m * N], 42);
              }
            }
          }
        }
      }
    }
  },
});

Deno.test({
  name: "packedKernels().widen of whole int8 rows matches widenInto bit for bit (q * row scale)",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    const rows = 41, width = 1003; // odd: SIMD tails on every row
    const w = quantizeInt8(rand(rows * width, 7, 3), rows);
    for (const { simd } of paths()) {
      for (const [r0, n] of [[0, rows], [5, 1], [17, 24]]) {
        const out = new Float32Array(n * width + 2).fill(-1);
        onPath(simd, () => hk.widen(w, r0 * width, n * width, out));
        const want = new Float32Array(n * width);
        widenInto(w, r0 * width, n * width, want);
        assertEquals(Array.from(out.subarray(0, n * width)), Array.from(want));
        assertEquals(Array.from(out.subarray(n * width)), [-1, -1]);
      }
    }
    assertThrows(() => hk.widen(w, 3, width, new Float32Array(width)), RangeError, "whole rows");
  },
});

Deno.test({
  name: "packedKernels().product refuses an int8 weight without a scale per stored row",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    const w = quantizeInt8(rand(12, 3), 4); // 4 rows of 3: [K=4, N=3] stored [K, N]
    const x = new Float32Array(8), y = new Float32Array(6);
    hk.product(2, 4, 3, x, w, false, false, y);
    assertThrows(() => hk.product(2, 4, 3, x, w, true, false, y), RangeError, "w.scales must hold");
  },
});

Deno.test({
  name: "packedKernels().product with K = 0 writes zeros (or leaves y when accumulating)",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    const w: HalfMatrix = { dtype: "bf16", bits: new Uint16Array(0) };
    for (const transposed of [false, true]) {
      const y = new Float32Array(6).fill(5);
      hk.product(2, 0, 3, new Float32Array(0), w, transposed, true, y);
      assertEquals(Array.from(y), [5, 5, 5, 5, 5, 5]);
      hk.product(2, 0, 3, new Float32Array(0), w, transposed, false, y);
      assertEquals(Array.from(y), [0, 0, 0, 0, 0, 0]);
    }
  },
});

Deno.test({
  name: "packedKernels() rejects operands that are too small or out of range, naming them",
  ignore,
  fn() {
    const hk = lib!.packedKernels();
    const w: HalfMatrix = { dtype: "f16", bits: new Uint16Array(12) };
    const x = new Float32Array(8), y = new Float32Array(6);
    hk.product(2, 4, 3, x, w, false, false, y);
    assertThrows(
      () => hk.product(2, 4, 3, x.subarray(1), w, false, false, y),
      RangeError,
      "x must hold m * K = 2 * 4",
    );
    assertThrows(
      () => hk.product(2, 4, 3, x, { dtype: "f16", bits: new Uint16Array(11) }, true, false, y),
      RangeError,
      "w must hold K * N = 4 * 3",
    );
    assertThrows(
      () => hk.product(2, 4, 3, x, w, false, false, y.subarray(1)),
      RangeError,
      "y must hold m * N = 2 * 3",
    );
    assertThrows(() => hk.product(-1, 4, 3, x, w, false, false, y), RangeError, "m must be");
    assertThrows(() => hk.product(2, 1.5, 3, x, w, false, false, y), RangeError, "K must be");
    assertThrows(
      () => hk.product(2, 4, 3, x, { dtype: "f32" as HalfDtype, bits: w.bits }, false, false, y),
      RangeError,
      "w.dtype",
    );
    assertThrows(() => hk.widen(w, 10, 3, new Float32Array(3)), RangeError, "[10, 13)");
    assertThrows(() => hk.widen(w, -1, 3, new Float32Array(3)), RangeError, "w's 12");
    assertThrows(() => hk.widen(w, 0, 4, new Float32Array(3)), RangeError, "out must hold");
  },
});
