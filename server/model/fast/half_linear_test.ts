/**
 * Linear layers on 16-bit weights (`packedLinear`) compute what the float32 layer computes on the
 * widened weights: every forward variant (plain, bias, bias + activation, accumulate) and the
 * backward, both stored layouts, few rows (native kernels where built) and many (panels), with
 * panels small enough that every product crosses several panel boundaries.
 */
import { assert, assertThrows } from "../../../test/assert.ts";
import { type HalfDtype, halfFromFloat32, type PackedKernels, toFloat32 } from "../half.ts";
import { nativePackedKernels } from "../onednn/native_half.ts";
import { jsSgemm, loadBlas } from "./blas.ts";
import { packedLinear, PackedPanels } from "./half_linear.ts";
import { blasOps } from "./ops.ts";
import { uniform as filled } from "../testing/random.ts";

function assertClose(got: Float32Array, want: Float32Array, what: string): void {
  assert(got.length === want.length, `${what}: length`);
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    assert(
      err <= 1e-5 * Math.max(1, scale),
      `${what}: element ${i} is ${got[i]}, want ${want[i]}`,
    );
  }
}

const blas = loadBlas();
const gemm = blas ?? jsSgemm();
const native = nativePackedKernels();
const providers: Array<[string, PackedKernels | null]> = [["typescript panels", null]];
if (native) providers.push(["native", native]);

for (const [provider, kernels] of providers) {
  Deno.test(`packedLinear (${provider}) matches the float32 layer on the widened weights`, () => {
    for (const dtype of ["f16", "bf16"] as HalfDtype[]) {
      for (const transposed of [false, true]) {
        const K = 37, N = 53;
        const half = halfFromFloat32(dtype, filled(K * N, 11));
        const wide = toFloat32(half);
        const bias = filled(N, 12);
        // 5 stored rows per panel at most: every product spans many panels.
        const panels = new PackedPanels(gemm, kernels, 5 * Math.max(K, N));
        const got = packedLinear(panels, half, K, N, transposed, bias);
        const want = blasOps(gemm).linear(wide, K, N, transposed, bias);
        for (const m of [1, 3, 9, 40]) {
          const what = `${dtype} ${transposed ? "[N, K]" : "[K, N]"} m=${m}`;
          const x = filled(m * K, m), dy = filled(m * N, m + 1), y0 = filled(m * N, m + 2);
          const variants = [
            {},
            { bias: true },
            { bias: true, act: "gelu_new" as const },
            { accumulate: true },
            { accumulate: true, bias: true },
          ];
          for (const opts of variants) {
            const a = y0.slice(), b = y0.slice();
            got.forward(m, x, a, opts);
            want.forward(m, x, b, opts);
            assertClose(a, b, `${what} forward ${JSON.stringify(opts)}`);
          }
          const dxa = new Float32Array(m * K).fill(7), dxb = new Float32Array(m * K);
          got.backward(m, dy, dxa);
          want.backward(m, dy, dxb);
          assertClose(dxa, dxb, `${what} backward`);
        }
      }
    }
  });
}

Deno.test("packedLinear refuses a weight of the wrong size", () => {
  const panels = new PackedPanels(gemm, null);
  assertThrows(
    () => packedLinear(panels, halfFromFloat32("bf16", new Float32Array(10)), 3, 4, false),
    RangeError,
    "must hold 12 values",
  );
});
