/**
 * Reads C function prototypes out of header text and maps their types to Deno FFI types, so the
 * FFI declarations can be checked against the headers they stand for (cuda_bindings_test.ts).
 * Enough C for the CUDA runtime, cuBLAS and kernels.h, not a C parser: comments, `__dv(...)`
 * default arguments and the calling-convention macros are dropped, then `ret name(params);` read.
 */

export interface Prototype {
  name: string;
  /** FFI result type. */
  result: string;
  /** FFI parameter types. */
  parameters: string[];
  /** The declaration as read (for messages). */
  text: string;
}

const MACROS = new Set([
  "extern",
  "__host__",
  "__device__",
  "__cudart_builtin__",
  "CUDARTAPI",
  "CUBLASAPI",
  "CUBLASWINAPI",
  "CUDART_CB",
  "static",
  "inline",
]);

/** Opaque handles and enums of the CUDA headers, passed as a pointer or an int. */
const NAMED: Record<string, string> = {
  cudaError_t: "i32",
  cudaMemcpyKind: "i32",
  cudaDeviceAttr: "i32",
  cublasStatus_t: "i32",
  cublasOperation_t: "i32",
  cudaDataType: "i32",
  cudaDataType_t: "i32",
  cublasComputeType_t: "i32",
  cublasGemmAlgo_t: "i32",
  cublasHandle_t: "pointer",
  cudaStream_t: "pointer",
  int: "i32",
  float: "f32",
  "long long": "i64",
  "long long int": "i64",
  int64_t: "i64",
  size_t: "usize",
  void: "void",
};

/** The FFI type of a C type; throws on a type this mapping does not know. */
export function ffiType(cType: string): string {
  const t = cType.replace(/\b(const|enum|struct)\b/g, "").replace(/\s+/g, " ").trim();
  if (t.includes("*")) return "pointer";
  const mapped = NAMED[t];
  if (!mapped) throw new Error(`no FFI mapping for the C type "${cType}"`);
  return mapped;
}

/** Every declaration of function `name` in `header` (usually one). */
export function findPrototypes(header: string, name: string): Prototype[] {
  const text = header
    .replace(/\/\*[\s\S]*?\*\//g, " ")
    .replace(/\/\/[^\n]*/g, " ")
    .replace(/__dv\([^)]*\)/g, " ")
    .replace(/^\s*#[^\n]*$/gm, " ");
  const out: Prototype[] = [];
  const re = new RegExp(`([^;{}]*?)\\b${name}\\s*\\(([^)]*)\\)\\s*;`, "g");
  for (const m of text.matchAll(re)) {
    const words = m[1].replace(/\*/g, " * ").split(/\s+/).filter((w) => w && !MACROS.has(w));
    // The return type is what is left of the prefix; a preceding declaration's tail cannot
    // remain, as the prefix starts after the last ';', '{' or '}'.
    const result = ffiType(words.join(" "));
    const params = m[2].trim() === "void" || m[2].trim() === ""
      ? []
      : m[2].split(",").map((p) => ffiType(stripName(p)));
    out.push({ name, result, parameters: params, text: `${m[1].trim()} ${name}(${m[2]})` });
  }
  return out;
}

/** "const float* x" -> "const float*"; "int" (unnamed) -> "int". */
function stripName(param: string): string {
  const p = param.trim().replace(/\[\s*\]$/, "").trim();
  const array = /\[\s*\]$/.test(param.trim());
  const m = /^(.*?)([A-Za-z_]\w*)$/.exec(p);
  if (!m) return p;
  const head = m[1].trim();
  // No name: the last word was the type itself ("int", "const void*" ends in '*').
  if (head === "" || head === "const" || head === "unsigned" || head === "long") return p;
  return array ? `${head}*` : head;
}
