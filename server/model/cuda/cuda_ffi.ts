/**
 * FFI declarations of the CUDA runtime and cuBLAS functions the cuda engine calls, and where to
 * find the libraries. Kept apart from the code that calls them so cuda_bindings_test.ts can check
 * every declaration against the C prototypes (cuda_runtime_api.h, cublas_api.h) and the symbols
 * the libraries export.
 *
 * C to FFI: enums and int -> "i32", size_t -> "usize", long long -> "i64", float -> "f32",
 * any pointer or handle -> "pointer" (host memory is passed as Deno.UnsafePointer.of(array)).
 */

export const CUDART_SYMBOLS = {
  cudaGetDeviceCount: { parameters: ["pointer"], result: "i32" },
  cudaSetDevice: { parameters: ["i32"], result: "i32" },
  cudaDeviceGetAttribute: { parameters: ["pointer", "i32", "i32"], result: "i32" },
  cudaRuntimeGetVersion: { parameters: ["pointer"], result: "i32" },
  cudaDriverGetVersion: { parameters: ["pointer"], result: "i32" },
  cudaMemGetInfo: { parameters: ["pointer", "pointer"], result: "i32" },
  cudaMalloc: { parameters: ["pointer", "usize"], result: "i32" },
  cudaFree: { parameters: ["pointer"], result: "i32" },
  cudaMemcpy: { parameters: ["pointer", "pointer", "usize", "i32"], result: "i32" },
  cudaMemset: { parameters: ["pointer", "i32", "usize"], result: "i32" },
  cudaDeviceSynchronize: { parameters: [], result: "i32" },
  // The same function on FFI's worker thread: the engine awaits the GPU without holding the
  // event loop (health checks and event streams are served meanwhile).
  cudaDeviceSynchronizeAsync: {
    name: "cudaDeviceSynchronize",
    parameters: [],
    result: "i32",
    nonblocking: true,
  },
  cudaGetLastError: { parameters: [], result: "i32" },
  cudaGetErrorName: { parameters: ["i32"], result: "pointer" },
  cudaGetErrorString: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

export const CUBLAS_SYMBOLS = {
  cublasCreate_v2: { parameters: ["pointer"], result: "i32" },
  cublasDestroy_v2: { parameters: ["pointer"], result: "i32" },
  cublasGetVersion_v2: { parameters: ["pointer", "pointer"], result: "i32" },
  cublasGetStatusString: { parameters: ["i32"], result: "pointer" },
  cublasGemmStridedBatchedEx: {
    parameters: [
      "pointer", // handle
      "i32", // transa
      "i32", // transb
      "i32", // m
      "i32", // n
      "i32", // k
      "pointer", // alpha (host float)
      "pointer", // A
      "i32", // Atype
      "i32", // lda
      "i64", // strideA
      "pointer", // B
      "i32", // Btype
      "i32", // ldb
      "i64", // strideB
      "pointer", // beta (host float)
      "pointer", // C
      "i32", // Ctype
      "i32", // ldc
      "i64", // strideC
      "i32", // batchCount
      "i32", // computeType
      "i32", // algo
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** cudaMemcpyKind */
export const MEMCPY_HOST_TO_DEVICE = 1;
export const MEMCPY_DEVICE_TO_HOST = 2;
export const MEMCPY_DEVICE_TO_DEVICE = 3;
/** cudaDeviceAttr: cudaDevAttrComputeCapabilityMajor, ...Minor, cudaDevAttrMultiProcessorCount */
export const ATTR_CC_MAJOR = 75;
export const ATTR_CC_MINOR = 76;
export const ATTR_SM_COUNT = 16;
/** cudaDataType (library_types.h) */
export const CUDA_R_32F = 0;
export const CUDA_R_16F = 2;
export const CUDA_R_16BF = 14;
/** cublasOperation_t */
export const CUBLAS_OP_N = 0;
export const CUBLAS_OP_T = 1;
/** cublasComputeType_t: exact fp32, and fp32 accumulation with TF32 tensor-core inputs. */
export const CUBLAS_COMPUTE_32F = 68;
export const CUBLAS_COMPUTE_32F_FAST_TF32 = 77;
/** cublasGemmAlgo_t: let cuBLAS choose (tensor cores when the types allow). */
export const CUBLAS_GEMM_DEFAULT = -1;

/** The library names the engine opens (CUDA 13's sonames). */
export const CUDART_NAME = "libcudart.so.13";
export const CUBLAS_NAME = "libcublas.so.13";
/** What libcublas.so.13 itself links against, beside it in the toolkit. */
export const CUBLAS_NEEDS = ["libcublasLt.so.13"];

/**
 * Where to look for a CUDA library, most specific first: $CUDA_HOME/lib64 and /lib (and
 * targets/x86_64-linux/lib), /usr/local/cuda-13.0, /usr/local/cuda, then the bare name so the
 * dynamic loader searches LD_LIBRARY_PATH and ld.so.cache.
 */
export function libraryCandidates(name: string, cudaHome = envOr("CUDA_HOME")): string[] {
  const homes = [cudaHome, envOr("CUDA_PATH"), "/usr/local/cuda-13.0", "/usr/local/cuda"]
    .filter((h): h is string => !!h);
  const dirs = homes.flatMap((h) => [`${h}/lib64`, `${h}/lib`, `${h}/targets/x86_64-linux/lib`]);
  return [...new Set([...dirs.map((d) => `${d}/${name}`), name])];
}

function envOr(key: string): string | undefined {
  try {
    return Deno.env.get(key) || undefined;
  } catch {
    return undefined; // no --allow-env: the default locations and the loader's path remain
  }
}

/**
 * Opens the first candidate that loads; the error of each failed try is returned instead when
 * none does, so the start-up message can say what was looked for.
 */
export function openFirst<S extends Deno.ForeignLibraryInterface>(
  candidates: readonly string[],
  symbols: S,
  /**
   * Libraries the candidate itself needs (libcublas needs libcublasLt): opened first from the
   * candidate's own directory, since that directory may not be on the loader's path, and the
   * loader then finds them by name among the loaded ones. Kept open for the process.
   */
  needs: readonly string[] = [],
): { lib: Deno.DynamicLibrary<S>; path: string } | { tried: string[] } {
  const tried: string[] = [];
  for (const path of candidates) {
    if (path.includes("/")) {
      try {
        Deno.statSync(path);
      } catch {
        continue; // absent: not worth a line in the message
      }
      const dir = path.slice(0, path.lastIndexOf("/"));
      for (const need of needs) {
        try {
          Deno.dlopen(`${dir}/${need}`, {});
        } catch {
          // not there: the loader's own search may still find it
        }
      }
    }
    try {
      return { lib: Deno.dlopen(path, symbols), path };
    } catch (e) {
      const why = (e as Error).message.split("\n")[0].replace(/^(Could not open library: )+/, "");
      tried.push(`${path}: ${why}`);
    }
  }
  return { tried };
}
