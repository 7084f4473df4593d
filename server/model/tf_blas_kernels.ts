/**
 * Matrix products of TensorFlow.js's `cpu` backend through an optimised BLAS (OpenBLAS via Deno
 * FFI): `BatchMatMul` is re-registered for `cpu` with a kernel that calls sgemm once per batch
 * item on the backend's own Float32Arrays. Every other op, and the gradients (which are matMuls
 * too), keep running on tfjs. Shapes the kernel does not cover (broadcast batch dimensions) fall
 * back to the original kernel, so numbers never depend on which path ran.
 */
import type * as TF from "@tensorflow/tfjs-core";
import type { Sgemm } from "./fast/blas.ts";

/** The part of tfjs the kernel swap needs. */
export type KernelRegistry = Pick<typeof TF, "getKernel" | "registerKernel" | "unregisterKernel">;

interface CpuBackendLike {
  readSync(dataId: object): unknown;
  makeTensorInfo(shape: number[], dtype: string, values: Float32Array): TF.TensorInfo;
}

/** Replaces `BatchMatMul` on `cpu`; returns a function restoring the original kernel. */
export function registerBlasMatMul(tf: KernelRegistry, blas: Sgemm): () => void {
  const original = tf.getKernel("BatchMatMul", "cpu");
  if (!original) throw new Error("the cpu backend has no BatchMatMul kernel to replace");
  const kernelFunc: TF.KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: TF.TensorInfo; b: TF.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as unknown as CpuBackendLike;
    const ra = a.shape.length, rb = b.shape.length;
    const batchA = a.shape.slice(0, -2), batchB = b.shape.slice(0, -2);
    const sameBatch = ra === rb && batchA.every((d, i) => d === batchB[i]);
    if (!sameBatch || a.dtype !== "float32" || b.dtype !== "float32") {
      return original.kernelFunc(args);
    }
    const [aRows, aCols] = a.shape.slice(-2), [bRows, bCols] = b.shape.slice(-2);
    const m = transposeA ? aCols : aRows, k = transposeA ? aRows : aCols;
    const n = transposeB ? bRows : bCols;
    if ((transposeB ? bCols : bRows) !== k) return original.kernelFunc(args); // let tfjs say why
    const batch = batchA.reduce((x, y) => x * y, 1);
    const av = backend.readSync(a.dataId) as Float32Array;
    const bv = backend.readSync(b.dataId) as Float32Array;
    const out = new Float32Array(batch * m * n);
    for (let i = 0; i < batch; i++) {
      blas.sgemm(
        transposeA,
        transposeB,
        m,
        n,
        k,
        1,
        av,
        i * aRows * aCols,
        aCols,
        bv,
        i * bRows * bCols,
        bCols,
        0,
        out,
        i * m * n,
        n,
      );
    }
    return backend.makeTensorInfo([...batchA, m, n], "float32", out);
  };
  tf.registerKernel({ kernelName: "BatchMatMul", backendName: "cpu", kernelFunc });
  return () => {
    tf.unregisterKernel("BatchMatMul", "cpu");
    tf.registerKernel(original);
  };
}
