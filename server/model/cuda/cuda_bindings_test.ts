/**
 * The FFI declarations of the cuda engine against what they bind, on any machine (no GPU needed):
 * - kernels.h prototypes and the built kernel library's exported symbols (`nm -D`);
 * - the CUDA runtime's prototypes (cuda_runtime_api.h) and libcudart's exported symbols;
 * - cuBLAS's prototypes (the vendored ../testing/cublas_prototypes.h, and the real cublas_api.h and
 *   libcublas where installed).
 * A wrong parameter type in an FFI declaration is not an error at dlopen: it corrupts the call.
 * Checks whose header or library is absent here are ignored with the reason in their name.
 */
import { assert, assertEquals } from "../../../test/assert.ts";
import { findPrototypes } from "../testing/c_prototypes.ts";
import {
  CUBLAS_NAME,
  CUBLAS_SYMBOLS,
  CUDART_NAME,
  CUDART_SYMBOLS,
  libraryCandidates,
} from "./cuda_ffi.ts";
import { KERNEL_SYMBOLS, kernelsLibraryPath } from "./kernels_ffi.ts";

type Symbols = Record<string, Deno.ForeignFunction & { name?: string }>;

const here = new URL(".", import.meta.url).pathname;
const cudaHome = Deno.env.get("CUDA_HOME") || "/usr/local/cuda";

/** Checks each symbol's declaration against its prototype(s) in `header`. */
function checkAgainstHeader(symbols: Symbols, header: string, source: string): void {
  for (const [key, decl] of Object.entries(symbols)) {
    const name = decl.name ?? key;
    const protos = findPrototypes(header, name);
    assert(protos.length > 0, `${name}: no prototype in ${source}`);
    for (const p of protos) {
      assertEquals(
        { result: decl.result, parameters: [...decl.parameters] },
        { result: p.result, parameters: p.parameters },
        `${key} does not match ${source}: ${p.text}`,
      );
    }
  }
}

/** Names a shared library exports (defined, dynamic), version suffixes dropped. */
async function exportedSymbols(path: string): Promise<Set<string>> {
  const out = await new Deno.Command("nm", { args: ["-D", "--defined-only", path] }).output();
  assert(out.success, `nm -D ${path} failed: ${new TextDecoder().decode(out.stderr)}`);
  const names = new TextDecoder().decode(out.stdout).split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length === 3 && /^[TtWi]$/.test(f[1]))
    .map((f) => f[2].replace(/@.*$/, ""));
  return new Set(names);
}

function firstExisting(paths: string[]): string | null {
  for (const p of paths) {
    if (!p.includes("/")) continue;
    try {
      Deno.statSync(p);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

const hasNm = await new Deno.Command("nm", { args: ["--version"] }).output().then(
  (o) => o.success,
  () => false,
);

Deno.test("kernel bindings match kernels.h, prototype for prototype", () => {
  const header = Deno.readTextFileSync(`${here}kernels.h`);
  checkAgainstHeader(KERNEL_SYMBOLS, header, "kernels.h");
  // Nothing declared in the header is left unbound.
  const declared = [...header.matchAll(/^int (pl_\w+)\(/gm)].map((m) => m[1]).sort();
  assertEquals(declared, Object.keys(KERNEL_SYMBOLS).sort());
});

const kernelsLib = kernelsLibraryPath();
const kernelsBuilt = firstExisting([kernelsLib]) !== null;
Deno.test({
  name: kernelsBuilt && hasNm
    ? "the built kernel library exports exactly the bound kernels (nm -D)"
    : `the built kernel library exports exactly the bound kernels (ignored: ${
      hasNm ? `${kernelsLib} not built; run \`deno task build-cuda\`` : "no nm"
    })`,
  ignore: !kernelsBuilt || !hasNm,
  async fn() {
    const exported = [...await exportedSymbols(kernelsLib)].filter((s) => s.startsWith("pl_"));
    assertEquals(exported.sort(), Object.keys(KERNEL_SYMBOLS).sort());
  },
});

const runtimeHeaderPath = firstExisting([
  `${cudaHome}/include/cuda_runtime_api.h`,
  "/usr/local/cuda/include/cuda_runtime_api.h",
]);
Deno.test({
  name: runtimeHeaderPath
    ? "CUDA runtime bindings match cuda_runtime_api.h"
    : "CUDA runtime bindings match cuda_runtime_api.h (ignored: no CUDA toolkit headers here)",
  ignore: !runtimeHeaderPath,
  fn() {
    checkAgainstHeader(
      CUDART_SYMBOLS,
      Deno.readTextFileSync(runtimeHeaderPath!),
      runtimeHeaderPath!,
    );
  },
});

const cudartPath = firstExisting(libraryCandidates(CUDART_NAME));
Deno.test({
  name: cudartPath && hasNm
    ? `${CUDART_NAME} exports every bound runtime function (nm -D)`
    : `${CUDART_NAME} exports every bound runtime function (ignored: ${
      hasNm ? `${CUDART_NAME} not installed here` : "no nm"
    })`,
  ignore: !cudartPath || !hasNm,
  async fn() {
    const exported = await exportedSymbols(cudartPath!);
    for (const [key, decl] of Object.entries(CUDART_SYMBOLS as Symbols)) {
      assert(exported.has(decl.name ?? key), `${cudartPath} does not export ${decl.name ?? key}`);
    }
  },
});

Deno.test("cuBLAS bindings match the vendored cublas_api.h prototypes", () => {
  checkAgainstHeader(
    CUBLAS_SYMBOLS,
    Deno.readTextFileSync(new URL("../testing/cublas_prototypes.h", import.meta.url)),
    "cublas_prototypes.h",
  );
});

const cublasHeaderPath = firstExisting([`${cudaHome}/include/cublas_api.h`]);
Deno.test({
  name: cublasHeaderPath
    ? "cuBLAS bindings match the installed cublas_api.h"
    : `cuBLAS bindings match the installed cublas_api.h (ignored: ${cudaHome}/include/cublas_api.h absent; cuBLAS is on the GPU machine only)`,
  ignore: !cublasHeaderPath,
  fn() {
    checkAgainstHeader(CUBLAS_SYMBOLS, Deno.readTextFileSync(cublasHeaderPath!), cublasHeaderPath!);
  },
});

const cublasPath = firstExisting(libraryCandidates(CUBLAS_NAME));
Deno.test({
  name: cublasPath && hasNm
    ? `${CUBLAS_NAME} exports every bound cuBLAS function (nm -D)`
    : `${CUBLAS_NAME} exports every bound cuBLAS function (ignored: ${
      hasNm ? `${CUBLAS_NAME} not installed here; cuBLAS is on the GPU machine only` : "no nm"
    })`,
  ignore: !cublasPath || !hasNm,
  async fn() {
    const exported = await exportedSymbols(cublasPath!);
    for (const [key, decl] of Object.entries(CUBLAS_SYMBOLS as Symbols)) {
      assert(exported.has(decl.name ?? key), `${cublasPath} does not export ${decl.name ?? key}`);
    }
  },
});

Deno.test("the C-to-FFI reading handles the declaration forms the headers use", () => {
  const h = `/* cudaMalloc(int) in a comment */
extern __host__ __cudart_builtin__ cudaError_t CUDARTAPI cudaMalloc(void **devPtr, size_t size);
extern __host__ const char* CUDARTAPI cudaGetErrorString(cudaError_t error);
extern __host__ cudaError_t CUDARTAPI cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream __dv(0));
cublasStatus_t CUBLASWINAPI f(long long int strideA, const float A[], float);`;
  assertEquals(findPrototypes(h, "cudaMalloc").map((p) => [p.result, p.parameters]), [
    ["i32", ["pointer", "usize"]],
  ]);
  assertEquals(findPrototypes(h, "cudaGetErrorString")[0].result, "pointer");
  assertEquals(findPrototypes(h, "cudaMemsetAsync")[0].parameters, [
    "pointer",
    "i32",
    "usize",
    "pointer",
  ]);
  assertEquals(findPrototypes(h, "f")[0].parameters, ["i64", "pointer", "f32"]);
});
