import { requireTool } from "../../test/support/required_tool.ts";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { assert, assertEquals } from "../../test/assert.ts";
import { jsSgemm, loadBlas } from "./fast/blas.ts";
import { registerBlasMatMul } from "./tf_blas_kernels.ts";

await tf.setBackend("cpu");

function products(): Float32Array[] {
  const r = (shape: number[], seed: number) => tf.randomUniform(shape, -1, 1, "float32", seed);
  return tf.tidy(() =>
    [
      tf.matMul(r([5, 7], 1), r([7, 3], 2)),
      tf.matMul(r([7, 5], 3), r([7, 3], 4), true, false),
      tf.matMul(r([5, 7], 5), r([3, 7], 6), false, true),
      tf.matMul(r([2, 4, 6, 5], 7), r([2, 4, 6, 3], 8), true, false), // batched, transposed A
      tf.matMul(r([1, 5, 7], 9), r([3, 7, 2], 10)), // broadcast batch: falls back
    ].map((t) => t.dataSync() as Float32Array)
  );
}

for (const [name, blas] of [["openblas", loadBlas()], ["typescript", jsSgemm()]] as const) {
  const tool = requireTool(
    blas === null ? "OpenBLAS does not load (apt-get install libopenblas0-pthread)" : null,
    "tf_blas_kernels_test.ts",
  );
  Deno.test({
    name: `BatchMatMul on cpu through ${name} sgemm equals tfjs's own kernel`,
    ignore: tool.ignore,
    fn() {
      tool.check();
      const expected = products();
      let calls = 0;
      const counting = {
        name: blas!.name,
        sgemm: (...args: Parameters<ReturnType<typeof jsSgemm>["sgemm"]>) => {
          calls++;
          blas!.sgemm(...args);
        },
      };
      const restore = registerBlasMatMul(tf, counting);
      let got: Float32Array[];
      try {
        got = products();
      } finally {
        restore();
      }
      assertEquals(got.length, expected.length);
      assertEquals(calls, 1 + 1 + 1 + 8); // the broadcast product used tfjs's own kernel
      for (const [i, e] of expected.entries()) {
        let err = 0;
        for (let j = 0; j < e.length; j++) err = Math.max(err, Math.abs(e[j] - got[i][j]));
        assert(err < 1e-5, `product ${i}: max abs difference ${err}`);
      }
    },
  });
}
