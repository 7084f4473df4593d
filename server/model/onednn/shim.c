/*
 * The oneDNN engine's native half, called from TypeScript through Deno FFI (onednn_lib.ts).
 *
 * - Frozen linear layers: a weight W (logical [K, N], stored [K, N] or transposed [N, K]) kept in
 *   the precision chosen at load (fp32: the caller's array, never copied; bf16: converted once),
 *   with oneDNN matmul primitives for out = x @ W (+ bias) (+ act) (+ out) and for the input
 *   gradient dx = dy @ W^T (the same stored weight read through a transposed descriptor, no second
 *   copy). Primitives are cached per handle by (rows, operation).
 * - Row-wise loops (layer norm and its backward, the MLP activation with its derivative, causal
 *   softmax and its backward) parallelised with OpenMP over rows.
 * - dnnl_sgemm passed through for the attention products (strided, per head).
 * - Products on frozen packed weights (f16/bf16 as stored, int8 with row scales) read in their
 *   stored width (pl_half_*, pl_int8_widen).
 *
 * Precision modes: 0 = fp32; 1 = bf16 (bf16 inputs and weights, fp32 accumulation and output;
 * needs a CPU oneDNN 2.6 has bf16 kernels for: avx512_core and up); 2 = bf16 emulated (inputs
 * and weights rounded to bf16 exactly as mode 1 rounds them, products in fp32: the same numbers
 * as mode 1 up to summation order, on any CPU; for tests).
 *
 * Every entry point returns a dnnl_status_t (0 = success) or -1 for a bad argument; the last
 * error's text is kept for pl_last_error().
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oneapi/dnnl/dnnl.h"

#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))

static dnnl_engine_t g_engine = NULL;
/* One stream per calling thread (Deno workers may each run an engine; a stream is not shared). */
static _Thread_local dnnl_stream_t g_stream = NULL;
static _Thread_local char g_error[512] = "";

static int fail(int status, const char *what) {
  snprintf(g_error, sizeof g_error, "%s: oneDNN status %d (%s)", what, status,
           status == dnnl_unimplemented ? "unimplemented on this CPU"
           : status == dnnl_out_of_memory ? "out of memory"
           : status == dnnl_invalid_arguments ? "invalid arguments"
                                               : "error");
  return status;
}

#define CHECK(call, what)                        \
  do {                                           \
    dnnl_status_t st_ = (call);                  \
    if (st_ != dnnl_success) return fail(st_, what); \
  } while (0)

const char *pl_last_error(void) { return g_error; }

int pl_init(void) {
  int status = 0;
#pragma omp critical(pl_init_engine)
  if (!g_engine) status = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
  if (status) return fail(status, "engine");
  if (!g_stream) CHECK(dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags), "stream");
  return 0;
}

void pl_set_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

int pl_max_threads(void) { return omp_get_max_threads(); }

/* ---------------------------------------------------------------------------------------- */
/* bf16                                                                                      */

static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
  return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

HOT static void round_to_bf16(const float *x, uint16_t *out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) out[i] = to_bf16(x[i]);
}

HOT static void round_through_bf16(const float *x, float *out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) out[i] = from_bf16(to_bf16(x[i]));
}

/* 1 when this CPU has oneDNN bf16 matmul kernels (a bf16 primitive can be created). */
int pl_bf16_supported(void) {
  if (pl_init() != 0) return 0;
  dnnl_memory_desc_t s, w, d;
  dnnl_dims_t sd = {64, 64}, wd = {64, 64};
  dnnl_memory_desc_init_by_tag(&s, 2, sd, dnnl_bf16, dnnl_ab);
  dnnl_memory_desc_init_by_tag(&w, 2, wd, dnnl_bf16, dnnl_ab);
  dnnl_memory_desc_init_by_tag(&d, 2, sd, dnnl_f32, dnnl_ab);
  dnnl_matmul_desc_t md;
  if (dnnl_matmul_desc_init(&md, &s, &w, NULL, &d) != dnnl_success) return 0;
  dnnl_primitive_desc_t pd;
  if (dnnl_primitive_desc_create(&pd, &md, NULL, g_engine, NULL) != dnnl_success) return 0;
  const char *impl = NULL;
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  /* A reference (non-JIT) implementation would be orders of magnitude slower: not "supported". */
  int ok = impl && strncmp(impl, "ref", 3) != 0;
  dnnl_primitive_desc_destroy(pd);
  return ok;
}

/* ---------------------------------------------------------------------------------------- */
/* Frozen linear layers                                                                      */

enum { OP_FWD = 0, OP_BWD = 1 };
enum { ACT_NONE = 0, ACT_GELU_TANH = 1, ACT_GELU_ERF = 2, ACT_RELU = 3 };
#define FLAG_BIAS 1
#define FLAG_ACCUMULATE 2
#define ACT_SHIFT 4
#define CACHE_SLOTS 16

typedef struct {
  int64_t m;
  int key; /* op | flags << 1 */
  dnnl_primitive_t prim;
  uint64_t used;
} slot_t;

typedef struct {
  int64_t K, N;
  int transposed; /* stored [N, K] */
  int mode;       /* 0 fp32, 1 bf16, 2 bf16 emulated */
  const float *w32; /* fp32 weights (the caller's, or owned in mode 2) */
  float *owned32;
  uint16_t *w16; /* bf16 weights (mode 1) */
  const float *bias; /* [N] or NULL (the caller's) */
  slot_t slots[CACHE_SLOTS];
  uint64_t clock;
} linear_t;

/* Scratch for inputs converted to bf16 (or rounded through it); grow-only, one per thread. */
static _Thread_local void *g_scratch = NULL;
static _Thread_local size_t g_scratch_size = 0;

static void *scratch(size_t bytes) {
  if (bytes > g_scratch_size) {
    free(g_scratch);
    g_scratch = aligned_alloc(64, (bytes + 63) / 64 * 64);
    g_scratch_size = g_scratch ? bytes : 0;
  }
  return g_scratch;
}

void *pl_linear_new(const float *w, int K, int N, int transposed, int mode,
                    const float *bias) {
  if (pl_init() != 0 || K <= 0 || N <= 0 || mode < 0 || mode > 2) return NULL;
  linear_t *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->K = K;
  h->N = N;
  h->transposed = transposed;
  h->mode = mode;
  h->bias = bias;
  int64_t n = (int64_t)K * N;
  if (mode == 0) {
    h->w32 = w;
  } else if (mode == 1) {
    h->w16 = aligned_alloc(64, (n * 2 + 63) / 64 * 64);
    if (!h->w16) { free(h); return NULL; }
    round_to_bf16(w, h->w16, n);
  } else {
    h->owned32 = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    if (!h->owned32) { free(h); return NULL; }
    round_through_bf16(w, h->owned32, n);
    h->w32 = h->owned32;
  }
  return h;
}

void pl_linear_free(void *p) {
  linear_t *h = p;
  if (!h) return;
  for (int i = 0; i < CACHE_SLOTS; i++) {
    if (h->slots[i].prim) dnnl_primitive_destroy(h->slots[i].prim);
  }
  free(h->w16);
  free(h->owned32);
  free(h);
}

/* Bytes of weights the handle holds itself (0 in fp32 mode: the caller's array is used). */
int64_t pl_linear_bytes(void *p) {
  linear_t *h = p;
  return h->mode == 1 ? h->K * h->N * 2 : h->mode == 2 ? h->K * h->N * 4 : 0;
}

static dnnl_alg_kind_t act_alg(int act) {
  return act == ACT_GELU_TANH ? dnnl_eltwise_gelu_tanh
         : act == ACT_GELU_ERF ? dnnl_eltwise_gelu_erf
                               : dnnl_eltwise_relu;
}

/* The matmul for (m, op, flags), from the handle's cache or created now. */
static int get_prim(linear_t *h, int64_t m, int op, int flags, dnnl_primitive_t *out) {
  int key = op | (flags << 1);
  slot_t *victim = &h->slots[0];
  for (int i = 0; i < CACHE_SLOTS; i++) {
    slot_t *s = &h->slots[i];
    if (s->prim && s->m == m && s->key == key) {
      s->used = ++h->clock;
      *out = s->prim;
      return 0;
    }
    if (!s->prim || s->used < victim->used) victim = s;
  }
  /* fwd: [m, K] @ W[K, N]; bwd: [m, N] @ W^T[N, K]. W's memory is [K, N] (ab) or [N, K]. */
  int64_t in = op == OP_FWD ? h->K : h->N, outn = op == OP_FWD ? h->N : h->K;
  int w_ab = (op == OP_FWD) != (h->transposed != 0); /* row-major over the logical dims */
  dnnl_data_type_t in_t = h->mode == 1 ? dnnl_bf16 : dnnl_f32;
  dnnl_memory_desc_t s_md, w_md, b_md, d_md;
  dnnl_dims_t sd = {m, in}, wd = {in, outn}, bd = {1, outn}, dd = {m, outn};
  CHECK(dnnl_memory_desc_init_by_tag(&s_md, 2, sd, in_t, dnnl_ab), "src desc");
  CHECK(dnnl_memory_desc_init_by_tag(&w_md, 2, wd, in_t, w_ab ? dnnl_ab : dnnl_ba), "weights desc");
  CHECK(dnnl_memory_desc_init_by_tag(&b_md, 2, bd, dnnl_f32, dnnl_ab), "bias desc");
  CHECK(dnnl_memory_desc_init_by_tag(&d_md, 2, dd, dnnl_f32, dnnl_ab), "dst desc");
  dnnl_matmul_desc_t md;
  CHECK(dnnl_matmul_desc_init(&md, &s_md, &w_md, (flags & FLAG_BIAS) ? &b_md : NULL, &d_md),
        "matmul desc");
  dnnl_primitive_attr_t attr;
  dnnl_post_ops_t po;
  CHECK(dnnl_primitive_attr_create(&attr), "attr");
  CHECK(dnnl_post_ops_create(&po), "post-ops");
  if (flags & FLAG_ACCUMULATE) dnnl_post_ops_append_sum(po, 1.0f);
  int act = flags >> ACT_SHIFT;
  if (act) dnnl_post_ops_append_eltwise(po, 1.0f, act_alg(act), 0.0f, 0.0f);
  dnnl_primitive_attr_set_post_ops(attr, po);
  dnnl_primitive_desc_t pd;
  dnnl_status_t st = dnnl_primitive_desc_create(&pd, &md, attr, g_engine, NULL);
  dnnl_post_ops_destroy(po);
  dnnl_primitive_attr_destroy(attr);
  if (st != dnnl_success) return fail(st, "matmul primitive descriptor");
  dnnl_primitive_t prim;
  st = dnnl_primitive_create(&prim, pd);
  dnnl_primitive_desc_destroy(pd);
  if (st != dnnl_success) return fail(st, "matmul primitive");
  if (victim->prim) dnnl_primitive_destroy(victim->prim);
  victim->prim = prim;
  victim->m = m;
  victim->key = key;
  victim->used = ++h->clock;
  *out = prim;
  return 0;
}

static int run(linear_t *h, int64_t m, int op, int flags, const float *x, float *y) {
  if (!h || m < 0) return -1;
  if (m == 0) return 0;
  if (!g_stream && pl_init() != 0) return -1;
  int64_t in = op == OP_FWD ? h->K : h->N, outn = op == OP_FWD ? h->N : h->K;
  dnnl_primitive_t prim;
  int st = get_prim(h, m, op, flags, &prim);
  if (st) return st;
  const void *src = x, *wts = h->mode == 1 ? (const void *)h->w16 : (const void *)h->w32;
  if (h->mode == 1) {
    uint16_t *s = scratch((size_t)(m * in) * 2);
    if (!s) return fail(dnnl_out_of_memory, "bf16 input");
    round_to_bf16(x, s, m * in);
    src = s;
  } else if (h->mode == 2) {
    float *s = scratch((size_t)(m * in) * 4);
    if (!s) return fail(dnnl_out_of_memory, "bf16 input");
    round_through_bf16(x, s, m * in);
    src = s;
  }
  dnnl_data_type_t in_t = h->mode == 1 ? dnnl_bf16 : dnnl_f32;
  int w_ab = (op == OP_FWD) != (h->transposed != 0);
  dnnl_memory_desc_t s_md, w_md, b_md, d_md;
  dnnl_dims_t sd = {m, in}, wd = {in, outn}, bd = {1, outn}, dd = {m, outn};
  dnnl_memory_desc_init_by_tag(&s_md, 2, sd, in_t, dnnl_ab);
  dnnl_memory_desc_init_by_tag(&w_md, 2, wd, in_t, w_ab ? dnnl_ab : dnnl_ba);
  dnnl_memory_desc_init_by_tag(&b_md, 2, bd, dnnl_f32, dnnl_ab);
  dnnl_memory_desc_init_by_tag(&d_md, 2, dd, dnnl_f32, dnnl_ab);
  dnnl_memory_t ms, mw, mb = NULL, md;
  CHECK(dnnl_memory_create(&ms, &s_md, g_engine, (void *)src), "src memory");
  CHECK(dnnl_memory_create(&mw, &w_md, g_engine, (void *)wts), "weights memory");
  CHECK(dnnl_memory_create(&md, &d_md, g_engine, y), "dst memory");
  dnnl_exec_arg_t args[4] = {
      {DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}, {DNNL_ARG_BIAS, NULL}};
  int nargs = 3;
  if (flags & FLAG_BIAS) {
    CHECK(dnnl_memory_create(&mb, &b_md, g_engine, (void *)h->bias), "bias memory");
    args[3].memory = mb;
    nargs = 4;
  }
  dnnl_status_t ex = dnnl_primitive_execute(prim, g_stream, nargs, args);
  if (ex == dnnl_success) ex = dnnl_stream_wait(g_stream);
  dnnl_memory_destroy(ms);
  dnnl_memory_destroy(mw);
  dnnl_memory_destroy(md);
  if (mb) dnnl_memory_destroy(mb);
  return ex == dnnl_success ? 0 : fail(ex, "matmul execute");
}

/*
 * y [m, N] = act(x [m, K] @ W + bias) (+ y when accumulating: then act must be none).
 * flags: 1 bias, 2 accumulate, act << 4 (1 gelu tanh, 2 gelu erf, 3 relu).
 */
int pl_linear_fwd(void *h, int m, const float *x, float *y, int flags) {
  linear_t *l = h;
  if ((flags & FLAG_BIAS) && !l->bias) return -1;
  if ((flags & FLAG_ACCUMULATE) && (flags >> ACT_SHIFT)) return -1;
  return run(l, m, OP_FWD, flags, x, y);
}

/* dx [m, K] = dy [m, N] @ W^T (+ dx when accumulate). */
int pl_linear_bwd(void *h, int m, const float *dy, float *dx, int accumulate) {
  return run(h, m, OP_BWD, accumulate ? FLAG_ACCUMULATE : 0, dy, dx);
}

/* Row-major C = alpha op(A) op(B) + beta C (oneDNN's own sgemm). */
int pl_sgemm(int transa, int transb, int m, int n, int k, float alpha, const float *a, int lda,
             const float *b, int ldb, float beta, float *c, int ldc) {
  return dnnl_sgemm(transa ? 'T' : 'N', transb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta,
                    c, ldc);
}

/* ---------------------------------------------------------------------------------------- */
/* Row-wise loops (OpenMP over rows; sums in double as the TypeScript kernels do)            */

#define PAR_ROWS(rows, width) if ((int64_t)(rows) * (width) > 65536)

/* out = (x - mean) * rstd * g + b; xhat and rstd kept when non-NULL (training). */
HOT void pl_layernorm(const float *x, int rows, int C, const float *g, const float *b,
                      float eps, float *out, float *xhat, float *rstd_out) {
#pragma omp parallel for schedule(static) PAR_ROWS(rows, C)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * C;
    double sum = 0, sq = 0;
    for (int64_t c = 0; c < C; c++) {
      double v = xr[c];
      sum += v;
      sq += v * v;
    }
    double mean = sum / C, var = sq / C - mean * mean;
    float rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
    float fm = (float)mean;
    float *o = out + r * C;
    if (xhat) {
      float *xh = xhat + r * C;
      rstd_out[r] = rstd;
      for (int64_t c = 0; c < C; c++) {
        float h = (xr[c] - fm) * rstd;
        xh[c] = h;
        o[c] = h * g[c] + b[c];
      }
    } else {
      for (int64_t c = 0; c < C; c++) o[c] = (xr[c] - fm) * rstd * g[c] + b[c];
    }
  }
}

/* dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * g. */
HOT void pl_layernorm_backward(const float *dout, const float *xhat, const float *rstd,
                               int rows, int C, const float *g, float *dx) {
#pragma omp parallel for schedule(static) PAR_ROWS(rows, C)
  for (int64_t r = 0; r < rows; r++) {
    const float *d = dout + r * C, *xh = xhat + r * C;
    double m1 = 0, m2 = 0;
    for (int64_t c = 0; c < C; c++) {
      double dh = d[c] * g[c];
      m1 += dh;
      m2 += dh * xh[c];
    }
    float fm1 = (float)(m1 / C), fm2 = (float)(m2 / C), s = rstd[r];
    float *o = dx + r * C;
    for (int64_t c = 0; c < C; c++) o[c] += s * (d[c] * g[c] - fm1 - xh[c] * fm2);
  }
}

/*
 * gelu_new and its derivative tabulated on [-10, 10] in steps of 1/1024, interleaved [f, f'], read
 * with linear interpolation (error < 3e-7, as the TypeScript kernels' table): several times faster
 * than tanhf. Outside the range gelu_new is x (derivative 1) or 0 to float32 precision.
 */
#define GELU_STEPS 1024
#define GELU_LIM 10
#define GELU_N (2 * GELU_LIM * GELU_STEPS + 2)
static float g_gelu[2 * GELU_N];
static int g_gelu_ready = 0;

static void gelu_table(void) {
  if (__atomic_load_n(&g_gelu_ready, __ATOMIC_ACQUIRE)) return;
#pragma omp critical(pl_gelu_table)
  if (!g_gelu_ready) {
    for (int i = 0; i < GELU_N; i++) {
      double v = (double)i / GELU_STEPS - GELU_LIM, v2 = v * v;
      double t = tanh(0.7978845608028654 * v * (1 + 0.044715 * v2));
      g_gelu[2 * i] = (float)(0.5 * v * (1 + t));
      g_gelu[2 * i + 1] =
          (float)(0.5 * (1 + t) + 0.5 * v * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * v2));
    }
    __atomic_store_n(&g_gelu_ready, 1, __ATOMIC_RELEASE);
  }
}

HOT static void gelu_new_rows(float *h, int64_t rows, int64_t n, const float *bias,
                              float *deriv) {
  const float hi = GELU_LIM - 1.0f / GELU_STEPS;
#pragma omp parallel for schedule(static) PAR_ROWS(rows, n)
  for (int64_t r = 0; r < rows; r++) {
    float *hr = h + r * n;
    float *dr = deriv ? deriv + r * n : NULL;
    for (int64_t j = 0; j < n; j++) {
      float v = hr[j] + (bias ? bias[j] : 0.0f);
      if (v > -GELU_LIM && v < hi) {
        float u = (v + GELU_LIM) * GELU_STEPS;
        int i = (int)u;
        float f = u - (float)i, f0 = g_gelu[2 * i], d0 = g_gelu[2 * i + 1];
        hr[j] = f0 + f * (g_gelu[2 * i + 2] - f0);
        if (dr) dr[j] = d0 + f * (g_gelu[2 * i + 3] - d0);
      } else {
        hr[j] = v >= hi ? v : v * 0.0f; /* v * 0 keeps a NaN visible */
        if (dr) dr[j] = v >= hi ? 1.0f : v * 0.0f;
      }
    }
  }
}

/*
 * h = act(h + bias) in place over [rows, n]; deriv (when non-NULL) = act'(h + bias).
 * act: 1 gelu tanh (gelu_new), 2 gelu erf, 3 relu.
 */
HOT void pl_bias_act(float *h, int rows, int n, const float *bias, int act,
                     float *deriv) {
  if (act == 1) {
    gelu_table();
    gelu_new_rows(h, rows, n, bias, deriv);
    return;
  }
  const float k0 = 0.7978845608028654f, k1 = 0.044715f, rs2 = 0.7071067811865476f,
              rs2pi = 0.3989422804014327f;
#pragma omp parallel for schedule(static) PAR_ROWS(rows, n)
  for (int64_t r = 0; r < rows; r++) {
    float *hr = h + r * n;
    float *dr = deriv ? deriv + r * n : NULL;
    for (int64_t j = 0; j < n; j++) {
      float v = hr[j] + (bias ? bias[j] : 0.0f), y, dy;
      if (act == 1) {
        float v2 = v * v, t = tanhf(k0 * v * (1.0f + k1 * v2));
        y = 0.5f * v * (1.0f + t);
        dy = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k0 * (1.0f + 3.0f * k1 * v2);
      } else if (act == 2) {
        float cdf = 0.5f * (1.0f + erff(v * rs2));
        y = v * cdf;
        dy = cdf + v * rs2pi * expf(-0.5f * v * v);
      } else if (act == 3) {
        y = v > 0 ? v : 0;
        dy = v > 0 ? 1.0f : 0.0f;
      } else {
        y = v;
        dy = 1.0f;
      }
      hr[j] = y;
      if (dr) dr[j] = dy;
    }
  }
}

/* x[r, 0:n] += bias for rows r (row stride ld). */
HOT void pl_add_bias(float *x, int rows, int n, int ld, const float *bias) {
#pragma omp parallel for schedule(static) PAR_ROWS(rows, n)
  for (int64_t r = 0; r < rows; r++) {
    float *xr = x + r * ld;
    for (int64_t j = 0; j < n; j++) xr[j] += bias[j];
  }
}

/* a *= b elementwise. */
HOT void pl_mul(float *a, const float *b, int n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) a[i] *= b[i];
}

/* ---------------------------------------------------------------------------------------- */
/* The Llama blocks' row loops (server/model/fast/llama_kernels.ts has the same in TypeScript). */

/* out = x * rstd * g, rstd = 1 / sqrt(mean(x^2) + eps); xhat = x * rstd and rstd kept when
 * non-NULL (training). */
HOT void pl_rmsnorm(const float *x, int rows, int C, const float *g, float eps, float *out,
                    float *xhat, float *rstd_out) {
#pragma omp parallel for schedule(static) PAR_ROWS(rows, C)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * C;
    double sq = 0;
    for (int64_t c = 0; c < C; c++) sq += (double)xr[c] * xr[c];
    float rstd = (float)(1.0 / sqrt(sq / C + eps));
    float *o = out + r * C;
    if (xhat) {
      float *xh = xhat + r * C;
      rstd_out[r] = rstd;
      for (int64_t c = 0; c < C; c++) {
        float h = xr[c] * rstd;
        xh[c] = h;
        o[c] = h * g[c];
      }
    } else {
      for (int64_t c = 0; c < C; c++) o[c] = xr[c] * rstd * g[c];
    }
  }
}

/* dx += rstd * (dy * g - xhat * mean(dy * g * xhat)). */
HOT void pl_rmsnorm_backward(const float *dy, const float *xhat, const float *rstd, int rows,
                             int C, const float *g, float *dx) {
#pragma omp parallel for schedule(static) PAR_ROWS(rows, C)
  for (int64_t r = 0; r < rows; r++) {
    const float *d = dy + r * C, *xh = xhat + r * C;
    double dot = 0;
    for (int64_t c = 0; c < C; c++) dot += (double)d[c] * g[c] * xh[c];
    float m = (float)(dot / C), s = rstd[r];
    float *o = dx + r * C;
    for (int64_t c = 0; c < C; c++) o[c] += s * (d[c] * g[c] - xh[c] * m);
  }
}

/* h = silu(gate) * up, silu(z) = z / (1 + e^-z). */
HOT void pl_swiglu(const float *gate, const float *up, int n, float *h) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) {
    float z = gate[i];
    h[i] = z / (1.0f + expf(-z)) * up[i];
  }
}

/* From dh and the saved gate and up: gate <- dh * up * silu'(gate), up <- dh * silu(gate). */
HOT void pl_swiglu_backward(const float *dh, float *gate, float *up, int n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) {
    float z = gate[i], sig = 1.0f / (1.0f + expf(-z));
    gate[i] = dh[i] * up[i] * (sig * (1.0f + z * (1.0f - sig)));
    up[i] = dh[i] * z * sig;
  }
}

/* Rotates `heads` heads of D values in each row of x (row stride ld) by the row's cos/sin
 * [rows, D/2] (rotate_half: pairs i and i + D/2); inverse != 0 applies the transpose. */
HOT void pl_rope(float *x, int ld, int rows, int heads, int D, const float *cos_t,
                 const float *sin_t, int inverse) {
  int64_t half = D / 2;
  float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) PAR_ROWS(rows, (int64_t)heads * D)
  for (int64_t r = 0; r < rows; r++) {
    const float *cr = cos_t + r * half, *sr = sin_t + r * half;
    for (int64_t h = 0; h < heads; h++) {
      float *b = x + r * ld + h * D;
      for (int64_t i = 0; i < half; i++) {
        float c = cr[i], sn = sign * sr[i], a1 = b[i], a2 = b[half + i];
        b[i] = a1 * c - a2 * sn;
        b[half + i] = a2 * c + a1 * sn;
      }
    }
  }
}

/* Sum of n floats, read once by every thread's share (the bench's memory bandwidth probe). */
HOT double pl_sum(const float *a, int64_t n) {
  double total = 0;
  int64_t blocks = n / 16;
#pragma omp parallel reduction(+ : total)
  {
    float acc[16] = {0}; /* 16 independent lanes: vectorised without reassociating a sum */
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
      for (int j = 0; j < 16; j++) acc[j] += a[b * 16 + j];
    }
    for (int j = 0; j < 16; j++) total += acc[j];
  }
  for (int64_t i = blocks * 16; i < n; i++) total += a[i];
  return total;
}

/* ---------------------------------------------------------------------------------------- */
/* Attention: every (sequence, head) pair in parallel, products through dnnl_sgemm (which runs */
/* single-threaded inside the parallel region), causal softmax and its backward in C.         */

/*
 * One sequence's attention, as 9 int64 per sequence in `desc`:
 *   k, v: addresses of its first key/value row of head 0 (the packed qkv rows, or a KV cache);
 *   ldkv: their row stride; q_off: element offset of its first query row in qkv (row stride ldq);
 *   y_off: element offset of its first output row in y (row stride ldy);
 *   p_off: element offset of its H blocks of [tq, s] probabilities in probs;
 *   tq: query rows; s: key rows; past: keys visible to the first query row, minus one
 *   (query i sees keys 0..past + i).
 */
enum { D_K, D_V, D_LD, D_Q, D_Y, D_P, D_TQ, D_S, D_PAST, D_N };

static void causal_softmax(float *p, int64_t tq, int64_t s, int64_t past) {
  for (int64_t i = 0; i < tq; i++) {
    float *row = p + i * s;
    int64_t end = past + i + 1;
    if (end > s) end = s;
    float mx = -INFINITY;
    for (int64_t j = 0; j < end; j++) mx = row[j] > mx ? row[j] : mx;
    double sum = 0;
    for (int64_t j = 0; j < end; j++) {
      float e = expf(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < end; j++) row[j] *= inv;
    for (int64_t j = end; j < s; j++) row[j] = 0;
  }
}

int pl_attn_fwd(int nseq, const int64_t *desc, int H, int D, const float *qkv, int ldq,
                float *y, int ldy, float *probs, float scale) {
  int64_t pairs = (int64_t)nseq * H;
  int status = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : status)
  for (int64_t ph = 0; ph < pairs; ph++) {
    const int64_t *d = desc + (ph / H) * D_N;
    int64_t h = ph % H, tq = d[D_TQ], s = d[D_S];
    if (tq == 0 || s == 0) continue;
    const float *k = (const float *)(intptr_t)d[D_K] + h * D;
    const float *v = (const float *)(intptr_t)d[D_V] + h * D;
    float *p = probs + d[D_P] + h * tq * s;
    status |= dnnl_sgemm('N', 'T', tq, s, D, scale, qkv + d[D_Q] + h * D, ldq, k, d[D_LD], 0.0f,
                         p, s);
    causal_softmax(p, tq, s, d[D_PAST]);
    status |= dnnl_sgemm('N', 'N', tq, D, s, 1.0f, p, s, v, d[D_LD], 0.0f, y + d[D_Y] + h * D,
                         ldy);
  }
  return status ? fail(status, "attention sgemm") : 0;
}

/*
 * Backward of pl_attn_fwd for sequences without a cache (training): the same desc (k and v
 * point into qkv), dy [rows, ldy]; writes dQ at q_off and dK, dV at the key and value rows of
 * dqkv (laid out as qkv). dp is scratch laid out like probs.
 */
int pl_attn_bwd(int nseq, const int64_t *desc, int H, int D, const float *qkv, int ldq,
                const float *dy, int ldy, const float *probs, float *dqkv, float *dp,
                float scale) {
  int64_t pairs = (int64_t)nseq * H;
  int status = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : status)
  for (int64_t ph = 0; ph < pairs; ph++) {
    const int64_t *d = desc + (ph / H) * D_N;
    int64_t h = ph % H, tq = d[D_TQ], s = d[D_S], ld = d[D_LD];
    if (tq == 0 || s == 0) continue;
    const float *k = (const float *)(intptr_t)d[D_K] + h * D;
    const float *v = (const float *)(intptr_t)d[D_V] + h * D;
    float *dk = dqkv + (k - qkv), *dv = dqkv + (v - qkv);
    const float *q = qkv + d[D_Q] + h * D, *g = dy + d[D_Y] + h * D;
    const float *p = probs + d[D_P] + h * tq * s;
    float *ds = dp + d[D_P] + h * tq * s;
    /* dP = dY_h @ V_h^T; dV_h = P^T @ dY_h */
    status |= dnnl_sgemm('N', 'T', tq, s, D, 1.0f, g, ldy, v, ld, 0.0f, ds, s);
    status |= dnnl_sgemm('T', 'N', s, D, tq, 1.0f, p, s, g, ldy, 0.0f, dv, ld);
    /* dS = P * (dP - rowsum(dP * P)) */
    for (int64_t i = 0; i < tq; i++) {
      const float *pr = p + i * s;
      float *dr = ds + i * s;
      double dot = 0;
      for (int64_t j = 0; j < s; j++) dot += pr[j] * dr[j];
      float fd = (float)dot;
      for (int64_t j = 0; j < s; j++) dr[j] = pr[j] * (dr[j] - fd);
    }
    /* dQ_h = dS @ K_h * scale; dK_h = dS^T @ Q_h * scale */
    status |= dnnl_sgemm('N', 'N', tq, D, s, scale, ds, s, k, ld, 0.0f, dqkv + d[D_Q] + h * D, ldq);
    status |= dnnl_sgemm('T', 'N', s, D, tq, scale, ds, s, q, ldq, 0.0f, dk, ld);
  }
  return status ? fail(status, "attention backward sgemm") : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Packed weights kept narrow: 16-bit (f16 / bf16) as stored (issue 12), and int8 with one     */
/* float scale per stored row (WEIGHTS=int8, issue 25). Decoding multiplies one to four rows   */
/* by every frozen matrix, so its cost is reading the weights: these read each weight once per */
/* call in its stored width, widen it in registers (16-bit exactly; int8 times its row's scale)*/
/* and accumulate in fp32, instead of widening whole matrices into float32 copies. oneDNN 2.x  */
/* has no f16- or int8-weight matmul with fp32 activations for these CPUs.                      */
/* dtype: 0 = f16, 1 = bf16, 2 = int8 (with scales: one per stored row).                        */

static int half_bad(const char *what) {
  snprintf(g_error, sizeof g_error, "%s", what);
  return -1;
}

static int g_half_simd = -1; /* -1: not yet probed; 0: scalar; 1: AVX2 + F16C + FMA */

static int half_simd(void) {
  if (g_half_simd < 0) {
    __builtin_cpu_init();
    g_half_simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                  __builtin_cpu_supports("fma");
  }
  return g_half_simd;
}

/* Whether the packed kernels use AVX2 (1) or the scalar fallback (0); on = 0 forces the
 * fallback, on = 1 restores the CPU's choice, on < 0 only asks (for tests). */
int pl_half_simd(int on) {
  if (on >= 0) g_half_simd = -1;
  int has = half_simd();
  if (on == 0) g_half_simd = has = 0;
  return has;
}

/* Exact f16 -> f32, subnormals, infinities and NaN included. */
static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000 | (mant << 13);
  } else if (exp) {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (!mant) {
    u = sign;
  } else { /* subnormal: mant * 2^-24, normalised */
    uint32_t e = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      e--;
    }
    u = sign | (e << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Element i of a packed weight, unscaled (an int8 weight's row scale is applied by the caller). */
static inline float packed_at(const void *w, int64_t i, int dt) {
  if (dt == 3) return ((const float *)w)[i];
  if (dt == 2) return (float)((const int8_t *)w)[i];
  uint16_t h = ((const uint16_t *)w)[i];
  return dt ? from_bf16(h) : f16_to_f32(h);
}

/* The address of element i. */
static inline const void *packed_ptr(const void *w, int64_t i, int dt) {
  if (dt == 3) return (const void *)((const float *)w + i);
  return dt == 2 ? (const void *)((const int8_t *)w + i) : (const void *)((const uint16_t *)w + i);
}

#define SIMD __attribute__((target("avx2,f16c,fma")))
#define SIMD_INLINE static inline __attribute__((always_inline, target("avx2,f16c,fma")))

/* Elements i..i+8 as float32 (int8 unscaled). */
SIMD_INLINE __m256 widen8(const void *w, int64_t i, int dt) {
  if (dt == 3) return _mm256_loadu_ps((const float *)w + i);
  if (dt == 2) {
    __m128i q = _mm_loadl_epi64((const __m128i *)((const int8_t *)w + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
  }
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
  if (dt == 1) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

SIMD static void widen_simd(const uint16_t *src, int64_t n, int bf, float *out) {
  int64_t i = 0;
  if (bf)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, widen8(src, i, 1));
  else
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, widen8(src, i, 0));
  for (; i < n; i++) out[i] = packed_at(src, i, bf);
}

static void widen_scalar(const uint16_t *src, int64_t n, int bf, float *out) {
  for (int64_t i = 0; i < n; i++) out[i] = packed_at(src, i, bf);
}

/* out[0..n) = float32 of src[0..n) (exact). dtype 0 or 1. */
void pl_half_widen(const uint16_t *src, int64_t n, int dtype, float *out) {
  if (n <= 0 || (dtype != 0 && dtype != 1)) return;
  const int64_t chunk = 16384, chunks = (n + chunk - 1) / chunk;
  const int simd = half_simd();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t a = c * chunk, len = n - a < chunk ? n - a : chunk;
    if (simd) widen_simd(src + a, len, dtype, out + a);
    else widen_scalar(src + a, len, dtype, out + a);
  }
}

SIMD static void int8_row_simd(const int8_t *q, int64_t width, float s, float *out) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= width; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(widen8(q, i, 2), vs));
  for (; i < width; i++) out[i] = (float)q[i] * s;
}

/* out[r * width + i] = src[r * width + i] * scales[r] for `rows` whole rows: the int8 weight's
 * values as the products see them (float32 rounding of q * s). */
void pl_int8_widen(const int8_t *src, int64_t rows, int64_t width, const float *scales,
                   float *out) {
  if (rows <= 0 || width <= 0) return;
  const int simd = half_simd();
#pragma omp parallel for schedule(static) if (rows * width > 65536)
  for (int64_t r = 0; r < rows; r++) {
    if (simd) int8_row_simd(src + r * width, width, scales[r], out + r * width);
    else
      for (int64_t i = 0; i < width; i++) out[r * width + i] = (float)src[r * width + i] * scales[r];
  }
}

/*
 * W stored [K, N]: y[r, a..b) += sum_k x[r, k] W[k, a..b) for R rows, streaming the row segments
 * W[k, a..b) four rows k at a time (axpy form; the R rows of y over [a, b) stay in cache). For
 * int8, `sc` holds the KU rows' scales, folded into the broadcast x values.
 */
SIMD_INLINE void kn_rows(int R, int KU, int dt, int64_t ldx, int64_t N, const float *x,
                         const void *w, const float *sc, int64_t a, int64_t b, float *y) {
  int64_t vb = a + ((b - a) & ~(int64_t)7);
  __m256 xb[4][8];
  float xs[4][8];
  for (int r = 0; r < R; r++)
    for (int u = 0; u < KU; u++) {
      xs[r][u] = dt == 2 ? x[r * ldx + u] * sc[u] : x[r * ldx + u];
      xb[r][u] = _mm256_set1_ps(xs[r][u]);
    }
  /* Row segments shorter than a page (N = 1024: two rows a page, read interleaved) defeat the
   * hardware prefetcher (~30% slower measured): prefetch the next KU rows, a line per row ahead.
   * Longer segments stream well on their own (prefetching there measured ~10% slower). Rows of
   * int8 are half as long in bytes, so the threshold doubles. */
  const int pf = b - a < (dt == 2 ? 4096 : dt == 3 ? 1024 : 2048);
  const int64_t line = dt == 2 ? 63 : dt == 3 ? 15 : 31; /* elements per 64-byte line, minus one */
  for (int64_t j = a; j < vb; j += 8) {
    if (pf && ((j - a) & line) == 0)
      for (int u = 0; u < KU; u++)
        _mm_prefetch((const char *)packed_ptr(w, (KU + u) * N + j, dt), _MM_HINT_T0);
    __m256 v[8];
    for (int u = 0; u < KU; u++) v[u] = widen8(w, u * N + j, dt);
    for (int r = 0; r < R; r++) {
      float *yr = y + r * N + j;
      __m256 acc = _mm256_loadu_ps(yr);
      for (int u = 0; u < KU; u++) acc = _mm256_fmadd_ps(xb[r][u], v[u], acc);
      _mm256_storeu_ps(yr, acc);
    }
  }
  for (int64_t j = vb; j < b; j++) {
    float h[8];
    for (int u = 0; u < KU; u++) h[u] = packed_at(w, u * N + j, dt);
    for (int r = 0; r < R; r++) {
      float t = y[r * N + j];
      for (int u = 0; u < KU; u++) t += xs[r][u] * h[u];
      y[r * N + j] = t;
    }
  }
}

SIMD_INLINE void kn_block(int R, int dt, int64_t K, int64_t ldx, int64_t N, const float *x,
                          const void *w, const float *sc, int64_t a, int64_t b, float *y) {
  int64_t k = 0;
#define KN_AT(KU) kn_rows(R, KU, dt, ldx, N, x + k, packed_ptr(w, k * N, dt), sc ? sc + k : sc, a, b, y)
  if (R <= 2)
    for (; k + 8 <= K; k += 8) KN_AT(8);
  for (; k + 4 <= K; k += 4) KN_AT(4);
  for (; k < K; k++) KN_AT(1);
#undef KN_AT
}

SIMD_INLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* W stored [N, K]: out[r] = x[r, :] . W[n, :] for R rows (the weight row read once; int8
 * unscaled: the caller multiplies by the row's scale). */
SIMD_INLINE void nk_dot(int R, int dt, int64_t K, const float *x, const void *wr, float *out) {
  enum { NA = 4 };
  __m256 acc[4][NA];
  for (int r = 0; r < R; r++)
    for (int u = 0; u < NA; u++) acc[r][u] = _mm256_setzero_ps();
  int64_t k = 0;
  if (R <= 2) {
    for (; k + 32 <= K; k += 32) {
      /* int8 rows are converted more slowly than they stream in: the hardware prefetcher alone
       * left one thread at half its read rate on the LM head; 2 KiB ahead measured ~30% faster. */
      if (dt == 2 && (k & 63) == 0) _mm_prefetch((const char *)wr + k + 2048, _MM_HINT_T0);
      __m256 v[4];
      for (int u = 0; u < 4; u++) v[u] = widen8(wr, k + 8 * u, dt);
      for (int r = 0; r < R; r++)
        for (int u = 0; u < 4; u++)
          acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k + 8 * u), v[u], acc[r][u]);
    }
  }
  for (; k + 16 <= K; k += 16) {
    __m256 v0 = widen8(wr, k, dt), v1 = widen8(wr, k + 8, dt);
    for (int r = 0; r < R; r++) {
      acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k), v0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k + 8), v1, acc[r][1]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    __m256 v0 = widen8(wr, k, dt);
    for (int r = 0; r < R; r++)
      acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k), v0, acc[r][0]);
  }
  for (int r = 0; r < R; r++) {
    __m256 s = _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]),
                             _mm256_add_ps(acc[r][2], acc[r][3]));
    float t = hsum8(s);
    for (int64_t j = k; j < K; j++) t += x[r * K + j] * packed_at(wr, j, dt);
    out[r] = t;
  }
}

/* call(R, DT) with R and the dtype as compile-time constants (each pair its own inlined copy). */
#define BY_R_DT(R, dt, call)                                                              \
  switch ((R) * 4 + (dt)) {                                                               \
    case 4: call(1, 0); break;  case 5: call(1, 1); break;  case 6: call(1, 2); break;  case 7: call(1, 3); break;   \
    case 8: call(2, 0); break;  case 9: call(2, 1); break;  case 10: call(2, 2); break; case 11: call(2, 3); break;  \
    case 12: call(3, 0); break; case 13: call(3, 1); break; case 14: call(3, 2); break; case 15: call(3, 3); break; \
    case 16: call(4, 0); break; case 17: call(4, 1); break; case 18: call(4, 2); break; default: call(4, 3); break;  \
  }

SIMD static void product_simd(int64_t m, int64_t K, int64_t N, const float *x, const void *w,
                              const float *scales, int dt, int transposed, int accumulate,
                              float *y) {
  if (transposed) {
#pragma omp parallel for schedule(static) if (K * N > 65536)
    for (int64_t n = 0; n < N; n++) {
      const void *wr = packed_ptr(w, n * K, dt);
      const float s = dt == 2 ? scales[n] : 1.0f;
      for (int64_t r0 = 0; r0 < m; r0 += 4) {
        int R = m - r0 < 4 ? (int)(m - r0) : 4;
        float out[4];
        const float *xr = x + r0 * K;
#define NK(RR, DT) nk_dot(RR, DT, K, xr, wr, out)
        BY_R_DT(R, dt, NK)
#undef NK
        for (int r = 0; r < R; r++) {
          float *yr = y + (r0 + r) * N + n, v = dt == 2 ? out[r] * s : out[r];
          *yr = accumulate ? *yr + v : v;
        }
      }
    }
    return;
  }
  /*
   * [K, N]. When the R rows of y fit in L2, each thread takes a contiguous range of rows k (one
   * sequential stream of whole rows) into its own partial y, summed at the end; otherwise each
   * thread owns a contiguous column range of whole 64-byte weight lines, in chunks whose R rows of
   * y stay in cache.
   */
  const int maxT = omp_get_max_threads();
  const int64_t R0 = m < 4 ? m : 4;
  float *part = NULL;
  if (maxT > 1 && K >= 64 * maxT && N * R0 * 4 <= 256 * 1024 && K * N > 65536)
    part = malloc((size_t)(maxT - 1) * m * N * sizeof(float));
  if (part) {
#pragma omp parallel num_threads(maxT)
    {
      int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
      int64_t k0 = K * t / T, k1 = K * (t + 1) / T;
      float *yt = t == 0 ? y : part + (t - 1) * m * N;
      if (t > 0 || !accumulate) memset(yt, 0, (size_t)m * N * sizeof(float));
      for (int64_t r0 = 0; r0 < m; r0 += 4) {
        int R = m - r0 < 4 ? (int)(m - r0) : 4;
        const float *xr = x + r0 * K + k0;
        const void *wk = packed_ptr(w, k0 * N, dt);
        const float *sk = scales ? scales + k0 : scales;
        float *yr = yt + r0 * N;
#define KN(RR, DT) kn_block(RR, DT, k1 - k0, K, N, xr, wk, sk, 0, N, yr)
        BY_R_DT(R, dt, KN)
#undef KN
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < m * N; i++) {
        float v = y[i];
        for (int64_t p = 0; p < T - 1; p++) v += part[p * m * N + i];
        y[i] = v;
      }
    }
    free(part);
    return;
  }
  const int64_t units = (N + 31) / 32;
#pragma omp parallel if (K * N > 65536)
  {
    int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t c0 = (units * t / T) * 32, c1 = (units * (t + 1) / T) * 32;
    if (c1 > N) c1 = N;
    for (int64_t r0 = 0; r0 < m; r0 += 4) {
      int R = m - r0 < 4 ? (int)(m - r0) : 4;
      const int64_t cw = 8192 / R; /* the R rows of y over a chunk: 32 KiB */
      const float *xr = x + r0 * K;
      float *yr = y + r0 * N;
      for (int64_t a = c0; a < c1; a += cw) {
        int64_t b = a + cw < c1 ? a + cw : c1;
        if (!accumulate)
          for (int r = 0; r < R; r++) memset(yr + r * N + a, 0, (b - a) * sizeof(float));
#define KN(RR, DT) kn_block(RR, DT, K, K, N, xr, w, scales, a, b, yr)
        BY_R_DT(R, dt, KN)
#undef KN
      }
    }
  }
}

static void product_scalar(int64_t m, int64_t K, int64_t N, const float *x, const void *w,
                           const float *scales, int dt, int transposed, int accumulate,
                           float *y) {
  if (transposed) {
#pragma omp parallel for schedule(static) if (K * N > 65536)
    for (int64_t n = 0; n < N; n++) {
      for (int64_t r = 0; r < m; r++) {
        float t = 0;
        for (int64_t k = 0; k < K; k++) t += x[r * K + k] * packed_at(w, n * K + k, dt);
        if (dt == 2) t *= scales[n];
        y[r * N + n] = accumulate ? y[r * N + n] + t : t;
      }
    }
    return;
  }
  const int64_t cols = 256, blocks = (N + cols - 1) / cols;
#pragma omp parallel for schedule(static) if (K * N > 65536)
  for (int64_t c = 0; c < blocks; c++) {
    int64_t a = c * cols, b = a + cols < N ? a + cols : N;
    for (int64_t r = 0; r < m; r++) {
      float *yr = y + r * N;
      if (!accumulate) memset(yr + a, 0, (b - a) * sizeof(float));
      for (int64_t k = 0; k < K; k++) {
        float xv = dt == 2 ? x[r * K + k] * scales[k] : x[r * K + k];
        for (int64_t j = a; j < b; j++) yr[j] += xv * packed_at(w, k * N + j, dt);
      }
    }
  }
}

/*
 * y[m, N] = x[m, K] @ W (+ y when accumulate); W logical [K, N], stored [K, N], or [N, K] when
 * transposed (an embedding used as the LM head). Each weight is read once per four rows of x.
 * dtype 2 (int8) needs `scales`, one per stored row (K of them, or N when transposed).
 */
int pl_half_product(int m, int K, int N, const float *x, const void *w, int dtype,
                    const float *scales, int transposed, int accumulate, float *y) {
  if (m < 0 || K < 0 || N < 0) return half_bad("packed product: negative size");
  if (dtype < 0 || dtype > 3)
    return half_bad("packed product: dtype must be 0 (f16), 1 (bf16), 2 (int8) or 3 (f32)");
  if (m == 0 || N == 0) return 0;
  if (!y || (K > 0 && (!x || !w))) return half_bad("packed product: null operand");
  if (dtype == 2 && K > 0 && !scales) return half_bad("packed product: int8 needs scales");
  if (dtype != 2) scales = NULL;
  if (half_simd()) product_simd(m, K, N, x, w, scales, dtype, transposed, accumulate, y);
  else product_scalar(m, K, N, x, w, scales, dtype, transposed, accumulate, y);
  return 0;
}
