/*
 * C ABI of the project's CUDA kernels (kernels.cu), bound through Deno FFI in kernels_ffi.ts and
 * checked against it by cuda_bindings_test.ts (one prototype per line, so the test can read them).
 *
 * Every function launches on the legacy default stream (the one cuBLAS and cudaMemcpy use here, so
 * work stays in order without events) and returns cudaGetLastError() as an int (0 = success).
 * Pointers are device pointers; row-major; `ld` is a row stride in elements.
 * dtype codes (pl_convert): 0 = float32, 1 = bfloat16, 2 = float16. act codes: 0 = gelu_new, 1 = gelu, 2 = relu.
 * pl_rope: cos_tab/sin_tab are [rows, D/2] (row r's table row r); inverse != 0 rotates by -angle.
 */
#ifndef PL_KERNELS_H
#define PL_KERNELS_H
#ifdef __cplusplus
extern "C" {
#endif

int pl_add_positions(float* x, const float* wpe, const int* positions, int rows, int C);
int pl_layer_norm(const float* x, const float* g, const float* b, float eps, float* out, float* xhat, float* rstd, int rows, int C);
int pl_layer_norm_backward(const float* dout, const float* xhat, const float* rstd, const float* g, float* dx, int rows, int C);
int pl_fill_bias(float* x, const float* bias, int rows, int n);
int pl_add_bias(float* x, const float* bias, int rows, int n, int ld);
int pl_bias_activation(float* h, const float* bias, int rows, int n, int act, float* deriv);
int pl_mul(float* a, const float* b, long long n);
int pl_causal_softmax(float* s, int T, int S, int past, int blocks);
int pl_softmax_backward(const float* p, float* dp, int T, int S, int blocks);
int pl_cross_entropy(float* logits, const int* targets, float* losses, int rows, int V);
int pl_copy_rows(float* dst, int ldd, const float* src, int lds, int rows, int cols);
int pl_gather_rows(float* dst, const float* src, const int* rows, int n, int C);
int pl_scatter_add_rows(float* dst, const float* src, const int* rows, int n, int C);
int pl_convert(const float* src, void* dst, int dtype, long long n);
int pl_rms_norm(const float* x, const float* g, float eps, float* out, float* xhat, float* rstd, int rows, int C);
int pl_rms_norm_backward(const float* dout, const float* xhat, const float* rstd, const float* g, float* dx, int rows, int C);
int pl_rope(float* x, int ld, const float* cos_tab, const float* sin_tab, int rows, int heads, int D, int inverse);
int pl_swiglu(const float* gate, const float* up, float* h, long long n);
int pl_swiglu_backward(const float* dh, float* gate, float* up, long long n);

#ifdef __cplusplus
}
#endif
#endif
