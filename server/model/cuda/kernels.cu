/*
 * The element-wise and row-wise pieces of GPT-2 and the Llama family on the GPU (the matrix
 * products are cuBLAS's): position add, layer norm, bias + activation, causal softmax,
 * cross-entropy, row copies and gathers, precision conversion, RMSNorm, rotary positions, the
 * SwiGLU gate, and their backward passes. Each mirrors the fast engine's TypeScript kernel of the
 * same name (server/model/fast/kernels.ts, llama_kernels.ts) and the emulated device
 * (server/model/testing/emulated_cuda_device.ts), which the CPU tests run; see kernels.h for the ABI.
 *
 * Row-wise kernels use one block of 256 threads per row: rows are at most a few thousand values
 * (C, or S keys), and the vocabulary-wide cross-entropy row (50k) loops inside the block.
 * Reductions are in float32, two-pass (mean, then squared deviations) for accuracy.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels.h"

namespace {

constexpr int kRowThreads = 256;  // multiple of 32 (block_reduce assumes whole warps)
constexpr int kFlatThreads = 256;

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Reduces v over the block; every thread gets the result. Safe to call repeatedly: the last
// barrier orders this call's reads of `part` before the next call's writes.
template <typename Op>
__device__ float block_reduce(float v, Op op, float identity) {
  __shared__ float part[32];
  __shared__ float result;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? part[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

int launched() { return static_cast<int>(cudaGetLastError()); }

unsigned flat_blocks(long long n) {
  long long b = (n + kFlatThreads - 1) / kFlatThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 32 ? 65535LL * 32 : b));
}

// x[r, :] += wpe[positions[r], :]
__global__ void add_positions_k(float* x, const float* wpe, const int* pos, int rows, int C) {
  const long long total = static_cast<long long>(rows) * C;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / C, c = i % C;
    x[i] += wpe[static_cast<long long>(pos[r]) * C + c];
  }
}

// out = (x - mean) * rstd * g + b; xhat and rstd kept when non-null (training forward).
__global__ void layer_norm_k(const float* x, const float* g, const float* b, float eps, float* out,
                             float* xhat, float* rstd, int C) {
  const long long base = static_cast<long long>(blockIdx.x) * C;
  float sum = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) sum += x[base + c];
  const float mean = block_reduce(sum, SumOp(), 0.f) / C;
  float sq = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = x[base + c] - mean;
    sq += d * d;
  }
  const float rs = rsqrtf(block_reduce(sq, SumOp(), 0.f) / C + eps);
  if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float h = (x[base + c] - mean) * rs;
    if (xhat) xhat[base + c] = h;
    out[base + c] = h * g[c] + b[c];
  }
}

// dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * g
__global__ void layer_norm_backward_k(const float* dout, const float* xhat, const float* rstd,
                                      const float* g, float* dx, int C) {
  const long long base = static_cast<long long>(blockIdx.x) * C;
  float m1 = 0.f, m2 = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float dh = dout[base + c] * g[c];
    m1 += dh;
    m2 += dh * xhat[base + c];
  }
  m1 = block_reduce(m1, SumOp(), 0.f) / C;
  m2 = block_reduce(m2, SumOp(), 0.f) / C;
  const float s = rstd[blockIdx.x];
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    dx[base + c] += s * (dout[base + c] * g[c] - m1 - xhat[base + c] * m2);
  }
}

// x[r, j] (row stride ld) = bias[j] (overwrite) or += bias[j] (accumulate)
__global__ void bias_k(float* x, const float* bias, int rows, int n, int ld, bool accumulate) {
  const long long total = static_cast<long long>(rows) * n;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / n, j = i % n;
    float* p = x + r * ld + j;
    *p = accumulate ? *p + bias[j] : bias[j];
  }
}

__device__ void activation(float v, int act, float* f, float* d) {
  if (act == 0) {  // gelu_new (tanh form)
    const float k = 0.7978845608028654f, c = 0.044715f;
    const float t = tanhf(k * v * (1.f + c * v * v));
    *f = 0.5f * v * (1.f + t);
    *d = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * k * (1.f + 3.f * c * v * v);
  } else if (act == 1) {  // gelu (erf form)
    const float cdf = 0.5f * (1.f + erff(v * 0.7071067811865476f));
    *f = v * cdf;
    *d = cdf + v * 0.3989422804014327f * expf(-0.5f * v * v);
  } else {  // relu
    *f = v > 0.f ? v : 0.f;
    *d = v > 0.f ? 1.f : 0.f;
  }
}

// h = act(h + bias) in place over [rows, n]; deriv = act'(h + bias) when non-null
__global__ void bias_activation_k(float* h, const float* bias, int rows, int n, int act,
                                  float* deriv) {
  const long long total = static_cast<long long>(rows) * n;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    float f, d;
    activation(h[i] + bias[i % n], act, &f, &d);
    h[i] = f;
    if (deriv) deriv[i] = d;
  }
}

__global__ void mul_k(float* a, const float* b, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    a[i] *= b[i];
  }
}

// One block per (row i, block z) of `blocks` [T, S] score blocks: row i sits at absolute position
// past + i and sees keys 0..past + i; the masked tail is written 0 so p @ v can use all S keys.
__global__ void causal_softmax_k(float* s, int T, int S, int past) {
  const int i = blockIdx.x;
  float* row = s + (static_cast<long long>(blockIdx.y) * T + i) * S;
  const int end = past + i + 1;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < end; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_reduce(mx, MaxOp(), -INFINITY);
  float sum = 0.f;
  for (int j = threadIdx.x; j < end; j += blockDim.x) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    sum += e;
  }
  const float inv = 1.f / block_reduce(sum, SumOp(), 0.f);
  for (int j = threadIdx.x; j < S; j += blockDim.x) row[j] = j < end ? row[j] * inv : 0.f;
}

// dS = P * (dP - rowsum(dP * P)) in place in dp
__global__ void softmax_backward_k(const float* p, float* dp, int T, int S) {
  const long long base = (static_cast<long long>(blockIdx.y) * T + blockIdx.x) * S;
  float dot = 0.f;
  for (int j = threadIdx.x; j < S; j += blockDim.x) dot += p[base + j] * dp[base + j];
  dot = block_reduce(dot, SumOp(), 0.f);
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    dp[base + j] = p[base + j] * (dp[base + j] - dot);
  }
}

// One block per row: losses[r] = logsumexp - logits[target]; logits become
// (softmax - onehot) / rows, the gradient of the mean loss.
__global__ void cross_entropy_k(float* logits, const int* targets, float* losses, int rows, int V) {
  float* row = logits + static_cast<long long>(blockIdx.x) * V;
  const int t = targets[blockIdx.x];
  const float target = row[t];
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
  mx = block_reduce(mx, MaxOp(), -INFINITY);
  float sum = 0.f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) sum += expf(row[v] - mx);
  sum = block_reduce(sum, SumOp(), 0.f);
  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + mx - target;
  const float scale = 1.f / (sum * rows);
  // `target` was read before any thread rewrote the row (the reductions' barriers order it).
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    row[v] = expf(row[v] - mx) * scale - (v == t ? 1.f / rows : 0.f);
  }
}

__global__ void copy_rows_k(float* dst, int ldd, const float* src, int lds, int rows, int cols) {
  const long long total = static_cast<long long>(rows) * cols;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / cols, c = i % cols;
    dst[r * ldd + c] = src[r * lds + c];
  }
}

// dst[i, :] = src[rows[i], :]
__global__ void gather_rows_k(float* dst, const float* src, const int* rows, int n, int C) {
  const long long total = static_cast<long long>(n) * C;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / C, c = i % C;
    dst[i] = src[static_cast<long long>(rows[r]) * C + c];
  }
}

// dst[rows[i], :] += src[i, :] (atomic: rows may repeat)
__global__ void scatter_add_rows_k(float* dst, const float* src, const int* rows, int n, int C) {
  const long long total = static_cast<long long>(n) * C;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / C, c = i % C;
    atomicAdd(dst + static_cast<long long>(rows[r]) * C + c, src[i]);
  }
}

__global__ void convert_k(const float* src, void* dst, int dtype, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    if (dtype == 1) static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(src[i]);
    else if (dtype == 2) static_cast<__half*>(dst)[i] = __float2half_rn(src[i]);
    else static_cast<float*>(dst)[i] = src[i];
  }
}

// out = x * rstd * g, rstd = rsqrt(mean(x^2) + eps); xhat and rstd kept when non-null (training).
__global__ void rms_norm_k(const float* x, const float* g, float eps, float* out, float* xhat,
                           float* rstd, int C) {
  const long long base = static_cast<long long>(blockIdx.x) * C;
  float sq = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) sq += x[base + c] * x[base + c];
  const float rs = rsqrtf(block_reduce(sq, SumOp(), 0.f) / C + eps);
  if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float h = x[base + c] * rs;
    if (xhat) xhat[base + c] = h;
    out[base + c] = h * g[c];
  }
}

// dx += rstd * (dout * g - xhat * mean(dout * g * xhat))
__global__ void rms_norm_backward_k(const float* dout, const float* xhat, const float* rstd,
                                    const float* g, float* dx, int C) {
  const long long base = static_cast<long long>(blockIdx.x) * C;
  float dot = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot += dout[base + c] * g[c] * xhat[base + c];
  const float m = block_reduce(dot, SumOp(), 0.f) / C;
  const float s = rstd[blockIdx.x];
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    dx[base + c] += s * (dout[base + c] * g[c] - xhat[base + c] * m);
  }
}

// Rotates `heads` heads of D in each row (row stride ld), rotate_half style: one element pair
// (i, i + D/2) per thread, table row r for row r. sign -1 applies the transpose (backward).
__global__ void rope_k(float* x, int ld, const float* cos_tab, const float* sin_tab, int rows,
                       int heads, int D, float sign) {
  const int half = D / 2;
  const long long per_row = static_cast<long long>(heads) * half;
  const long long total = rows * per_row;
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / per_row;
    const int h = static_cast<int>((i % per_row) / half), j = static_cast<int>(i % half);
    float* p = x + r * ld + static_cast<long long>(h) * D;
    const float c = cos_tab[r * half + j], s = sign * sin_tab[r * half + j];
    const float a1 = p[j], a2 = p[j + half];
    p[j] = a1 * c - a2 * s;
    p[j + half] = a2 * c + a1 * s;
  }
}

// h = silu(gate) * up, silu(z) = z / (1 + e^-z)
__global__ void swiglu_k(const float* gate, const float* up, float* h, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float z = gate[i];
    h[i] = z / (1.f + expf(-z)) * up[i];
  }
}

// In place: gate <- dh * up * silu'(gate), up <- dh * silu(gate)
__global__ void swiglu_backward_k(const float* dh, float* gate, float* up, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float z = gate[i], sig = 1.f / (1.f + expf(-z));
    gate[i] = dh[i] * up[i] * (sig * (1.f + z * (1.f - sig)));
    up[i] = dh[i] * z * sig;
  }
}

}  // namespace

extern "C" {

int pl_add_positions(float* x, const float* wpe, const int* positions, int rows, int C) {
  if (rows <= 0) return 0;
  add_positions_k<<<flat_blocks(1LL * rows * C), kFlatThreads>>>(x, wpe, positions, rows, C);
  return launched();
}

int pl_layer_norm(const float* x, const float* g, const float* b, float eps, float* out, float* xhat,
                  float* rstd, int rows, int C) {
  if (rows <= 0) return 0;
  layer_norm_k<<<rows, kRowThreads>>>(x, g, b, eps, out, xhat, rstd, C);
  return launched();
}

int pl_layer_norm_backward(const float* dout, const float* xhat, const float* rstd, const float* g,
                           float* dx, int rows, int C) {
  if (rows <= 0) return 0;
  layer_norm_backward_k<<<rows, kRowThreads>>>(dout, xhat, rstd, g, dx, C);
  return launched();
}

int pl_fill_bias(float* x, const float* bias, int rows, int n) {
  if (rows <= 0) return 0;
  bias_k<<<flat_blocks(1LL * rows * n), kFlatThreads>>>(x, bias, rows, n, n, false);
  return launched();
}

int pl_add_bias(float* x, const float* bias, int rows, int n, int ld) {
  if (rows <= 0) return 0;
  bias_k<<<flat_blocks(1LL * rows * n), kFlatThreads>>>(x, bias, rows, n, ld, true);
  return launched();
}

int pl_bias_activation(float* h, const float* bias, int rows, int n, int act, float* deriv) {
  if (rows <= 0) return 0;
  bias_activation_k<<<flat_blocks(1LL * rows * n), kFlatThreads>>>(h, bias, rows, n, act, deriv);
  return launched();
}

int pl_mul(float* a, const float* b, long long n) {
  if (n <= 0) return 0;
  mul_k<<<flat_blocks(n), kFlatThreads>>>(a, b, n);
  return launched();
}

int pl_causal_softmax(float* s, int T, int S, int past, int blocks) {
  if (T <= 0 || blocks <= 0) return 0;
  causal_softmax_k<<<dim3(T, blocks), kRowThreads>>>(s, T, S, past);
  return launched();
}

int pl_softmax_backward(const float* p, float* dp, int T, int S, int blocks) {
  if (T <= 0 || blocks <= 0) return 0;
  softmax_backward_k<<<dim3(T, blocks), kRowThreads>>>(p, dp, T, S);
  return launched();
}

int pl_cross_entropy(float* logits, const int* targets, float* losses, int rows, int V) {
  if (rows <= 0) return 0;
  cross_entropy_k<<<rows, kRowThreads>>>(logits, targets, losses, rows, V);
  return launched();
}

int pl_copy_rows(float* dst, int ldd, const float* src, int lds, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return 0;
  copy_rows_k<<<flat_blocks(1LL * rows * cols), kFlatThreads>>>(dst, ldd, src, lds, rows, cols);
  return launched();
}

int pl_gather_rows(float* dst, const float* src, const int* rows, int n, int C) {
  if (n <= 0) return 0;
  gather_rows_k<<<flat_blocks(1LL * n * C), kFlatThreads>>>(dst, src, rows, n, C);
  return launched();
}

int pl_scatter_add_rows(float* dst, const float* src, const int* rows, int n, int C) {
  if (n <= 0) return 0;
  scatter_add_rows_k<<<flat_blocks(1LL * n * C), kFlatThreads>>>(dst, src, rows, n, C);
  return launched();
}

int pl_convert(const float* src, void* dst, int dtype, long long n) {
  if (n <= 0) return 0;
  convert_k<<<flat_blocks(n), kFlatThreads>>>(src, dst, dtype, n);
  return launched();
}

int pl_rms_norm(const float* x, const float* g, float eps, float* out, float* xhat, float* rstd,
                int rows, int C) {
  if (rows <= 0) return 0;
  rms_norm_k<<<rows, kRowThreads>>>(x, g, eps, out, xhat, rstd, C);
  return launched();
}

int pl_rms_norm_backward(const float* dout, const float* xhat, const float* rstd, const float* g,
                         float* dx, int rows, int C) {
  if (rows <= 0) return 0;
  rms_norm_backward_k<<<rows, kRowThreads>>>(dout, xhat, rstd, g, dx, C);
  return launched();
}

int pl_rope(float* x, int ld, const float* cos_tab, const float* sin_tab, int rows, int heads, int D,
            int inverse) {
  if (rows <= 0 || heads <= 0 || D < 2) return 0;
  rope_k<<<flat_blocks(1LL * rows * heads * (D / 2)), kFlatThreads>>>(
      x, ld, cos_tab, sin_tab, rows, heads, D, inverse ? -1.f : 1.f);
  return launched();
}

int pl_swiglu(const float* gate, const float* up, float* h, long long n) {
  if (n <= 0) return 0;
  swiglu_k<<<flat_blocks(n), kFlatThreads>>>(gate, up, h, n);
  return launched();
}

int pl_swiglu_backward(const float* dh, float* gate, float* up, long long n) {
  if (n <= 0) return 0;
  swiglu_backward_k<<<flat_blocks(n), kFlatThreads>>>(dh, gate, up, n);
  return launched();
}

}  // extern "C"
