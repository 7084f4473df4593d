/**
 * FFI declarations of the project's CUDA kernels (kernels.h, built by `deno task build-cuda`), and
 * where the built library is. cuda_bindings_test.ts checks them against kernels.h and the
 * library's exported symbols.
 */

const ptr = "pointer" as const;

export const KERNEL_SYMBOLS = {
  pl_add_positions: { parameters: [ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_layer_norm: {
    parameters: [ptr, ptr, ptr, "f32", ptr, ptr, ptr, "i32", "i32"],
    result: "i32",
  },
  pl_layer_norm_backward: { parameters: [ptr, ptr, ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_fill_bias: { parameters: [ptr, ptr, "i32", "i32"], result: "i32" },
  pl_add_bias: { parameters: [ptr, ptr, "i32", "i32", "i32"], result: "i32" },
  pl_bias_activation: { parameters: [ptr, ptr, "i32", "i32", "i32", ptr], result: "i32" },
  pl_mul: { parameters: [ptr, ptr, "i64"], result: "i32" },
  pl_causal_softmax: { parameters: [ptr, "i32", "i32", "i32", "i32"], result: "i32" },
  pl_softmax_backward: { parameters: [ptr, ptr, "i32", "i32", "i32"], result: "i32" },
  pl_cross_entropy: { parameters: [ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_copy_rows: { parameters: [ptr, "i32", ptr, "i32", "i32", "i32"], result: "i32" },
  pl_gather_rows: { parameters: [ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_scatter_add_rows: { parameters: [ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_convert: { parameters: [ptr, ptr, "i32", "i64"], result: "i32" },
  pl_rms_norm: { parameters: [ptr, ptr, "f32", ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_rms_norm_backward: { parameters: [ptr, ptr, ptr, ptr, ptr, "i32", "i32"], result: "i32" },
  pl_rope: {
    parameters: [ptr, "i32", ptr, ptr, "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  pl_swiglu: { parameters: [ptr, ptr, ptr, "i64"], result: "i32" },
  pl_swiglu_backward: { parameters: [ptr, ptr, ptr, "i64"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The built library: $CUDA_KERNELS_LIB, else where scripts/build-cuda.sh writes it. */
export function kernelsLibraryPath(): string {
  try {
    const env = Deno.env.get("CUDA_KERNELS_LIB");
    if (env) return env;
  } catch {
    // no --allow-env: the default path
  }
  return new URL("./build/libpromptlearning_kernels.so", import.meta.url).pathname;
}
