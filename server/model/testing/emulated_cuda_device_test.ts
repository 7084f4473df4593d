/**
 * The emulated GPU device rounds where a GPU rounds: TF32 products read 10-bit-mantissa inputs,
 * bf16/f16 buffers hold values rounded by half.ts's one definition (f16 with its range).
 */
import { assert, assertEquals } from "../../../test/assert.ts";
import { at } from "../cuda/device.ts";
import { halfFromFloat32, toFloat32 } from "../half.ts";
import { emulatedDevice, roundTf32 } from "./emulated_cuda_device.ts";

Deno.test("roundTf32() keeps 10 mantissa bits, ties to even, float32's range", () => {
  assertEquals(roundTf32(1 + 2 ** -11), 1); // a tie: down to the even mantissa
  assertEquals(roundTf32(1 + 3 * 2 ** -11), 1 + 2 ** -9); // a tie: up to the even mantissa
  assertEquals(roundTf32(1 + 2 ** -10), 1 + 2 ** -10); // representable
  const big = roundTf32(1e38); // far past f16's range: still finite
  assert(Math.abs(big / 1e38 - 1) <= 2 ** -11, `${big}`);
  assertEquals(roundTf32(Infinity), Infinity);
  assertEquals(Number.isNaN(roundTf32(NaN)), true);
});

Deno.test("an emulated TF32 product rounds its inputs; an fp32 one does not", () => {
  const d = emulatedDevice();
  const a = d.alloc("f32", 1), b = d.alloc("f32", 1), c = d.alloc("f32", 1);
  d.upload(at(a), Float32Array.of(1 + 2 ** -12));
  d.upload(at(b), Float32Array.of(3));
  const product = (math: "fp32" | "tf32") => {
    d.gemm({
      transA: false,
      transB: false,
      m: 1,
      n: 1,
      k: 1,
      alpha: 1,
      a: at(a),
      lda: 1,
      b: at(b),
      ldb: 1,
      beta: 0,
      c: at(c),
      ldc: 1,
      math,
    });
    const out = new Float32Array(1);
    d.download(at(c), out);
    return out[0];
  };
  assertEquals(product("fp32"), Math.fround(3 * (1 + 2 ** -12)));
  assertEquals(product("tf32"), 3);
  d.dispose();
});

Deno.test("emulated bf16/f16 buffers hold half.ts's rounding, f16 overflow included", () => {
  const d = emulatedDevice();
  const x = Float32Array.of(1 / 3, -2.7182817, 70000, 1e-8, NaN);
  for (const dtype of ["bf16", "f16"] as const) {
    const src = d.alloc("f32", x.length), half = d.alloc(dtype, x.length);
    d.upload(at(src), x);
    d.kernels.convert(at(src), at(half), x.length);
    // Read back through an f32 copy (the emulation's half buffers hold float32 values).
    const back = d.alloc("f32", x.length), out = new Float32Array(x.length);
    d.kernels.convert(at(half), at(back), x.length);
    d.download(at(back), out);
    assertEquals(out, toFloat32(halfFromFloat32(dtype, x)), dtype);
  }
  d.dispose();
});
