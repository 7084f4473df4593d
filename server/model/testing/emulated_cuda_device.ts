/**
 * The Device of cuda/device.ts on the CPU, for tests and the GPU check's dry run only: every
 * buffer a typed array, every kernel the loop that kernels.cu runs in parallel, every product
 * through an Sgemm. Not a fast path: it exists so the cuda engine's own logic (row plans, offsets,
 * strides, caches, the backward pass) runs against the reference vectors in the CPU test suite.
 * It rounds where the GPU rounds, with the project's one definition of each rounding: bf16/f16
 * buffers hold float32 values rounded to that dtype (half.ts), and TF32 products round their
 * inputs to TF32's 10-bit mantissa first, so the half-precision and TF32 settings show errors of
 * the size a GPU gives.
 */
import { jsSgemm, type Sgemm } from "../fast/blas.ts";
import { type Activation, activationExact } from "../fast/kernels.ts";
import {
  applyRope,
  rmsNorm,
  rmsNormBackward,
  swiglu,
  swigluBackward,
} from "../fast/llama_kernels.ts";
import { roundToHalf } from "../half.ts";
import {
  ACTIVATION_CODE,
  checkGemm,
  type Device,
  type DeviceBuffer,
  type DPtr,
  type DType,
  DTYPE_BYTES,
  type Gemm,
  type Kernels,
} from "../cuda/device.ts";

class EmuBuffer implements DeviceBuffer {
  freed = false;
  constructor(
    readonly dtype: DType,
    readonly length: number,
    readonly data: Float32Array | Int32Array,
  ) {}
}

const word = new Float32Array(1);
const bits = new Uint32Array(word.buffer);

/**
 * x with its mantissa rounded to 10 bits (ties to even), keeping float32's exponent range: the
 * TF32 inputs of a tensor-core product.
 */
export function roundTf32(x: number): number {
  word[0] = x;
  const b = bits[0];
  if ((b & 0x7f800000) === 0x7f800000) return word[0]; // infinity, NaN
  bits[0] = (b + 0xfff + ((b >>> 13) & 1)) & 0xffffe000;
  return word[0];
}

const ACTIVATIONS = Object.fromEntries(
  Object.entries(ACTIVATION_CODE).map(([name, code]) => [code, name as Activation]),
) as Record<number, Activation>;

function f32(p: DPtr): Float32Array {
  const b = p.buf as EmuBuffer;
  if (!(b instanceof EmuBuffer) || b.freed) throw new Error("device buffer is freed or foreign");
  if (!(b.data instanceof Float32Array)) throw new TypeError("expected a float buffer");
  return b.data;
}

function i32(p: DPtr): Int32Array {
  const b = p.buf as EmuBuffer;
  if (!(b instanceof EmuBuffer) || b.freed) throw new Error("device buffer is freed or foreign");
  if (!(b.data instanceof Int32Array)) throw new TypeError("expected an i32 buffer");
  return b.data;
}

/** The n float elements at p, as a view. */
function view(p: DPtr, n: number): Float32Array {
  return f32(p).subarray(p.off, p.off + n);
}

/** Throws unless elements [p.off, p.off + n) exist (a GPU would corrupt memory instead). */
function span(p: DPtr, n: number, what: string): void {
  if (p.off < 0 || p.off + n > p.buf.length) {
    throw new RangeError(`${what}: ${n} elements at ${p.off} outside a buffer of ${p.buf.length}`);
  }
}

export function emulatedDevice(sgemm: Sgemm = jsSgemm()): Device {
  const live = new Set<EmuBuffer>();
  let bytes = 0, peak = 0;
  const kernels: Kernels = {
    addPositions(x, wpe, pos, rows, C) {
      span(x, rows * C, "addPositions x");
      const xs = f32(x), w = f32(wpe), ps = i32(pos);
      for (let r = 0; r < rows; r++) {
        const p = ps[pos.off + r];
        span(wpe, (p + 1) * C, "addPositions wpe");
        for (let c = 0; c < C; c++) xs[x.off + r * C + c] += w[wpe.off + p * C + c];
      }
    },
    layerNorm(x, g, b, eps, out, xhat, rstd, rows, C) {
      span(x, rows * C, "layerNorm x");
      span(out, rows * C, "layerNorm out");
      const xs = f32(x), gs = f32(g), bs = f32(b), os = f32(out);
      for (let r = 0; r < rows; r++) {
        const base = r * C;
        let sum = 0;
        for (let c = 0; c < C; c++) sum += xs[x.off + base + c];
        const mean = sum / C;
        let sq = 0;
        for (let c = 0; c < C; c++) sq += (xs[x.off + base + c] - mean) ** 2;
        const rs = 1 / Math.sqrt(sq / C + eps);
        if (rstd) f32(rstd)[rstd.off + r] = rs;
        for (let c = 0; c < C; c++) {
          const h = (xs[x.off + base + c] - mean) * rs;
          if (xhat) f32(xhat)[xhat.off + base + c] = h;
          os[out.off + base + c] = h * gs[g.off + c] + bs[b.off + c];
        }
      }
    },
    layerNormBackward(dout, xhat, rstd, g, dx, rows, C) {
      span(dout, rows * C, "layerNormBackward dout");
      span(dx, rows * C, "layerNormBackward dx");
      const d = f32(dout), xh = f32(xhat), rs = f32(rstd), gs = f32(g), o = f32(dx);
      for (let r = 0; r < rows; r++) {
        const base = r * C;
        let m1 = 0, m2 = 0;
        for (let c = 0; c < C; c++) {
          const dh = d[dout.off + base + c] * gs[g.off + c];
          m1 += dh;
          m2 += dh * xh[xhat.off + base + c];
        }
        m1 /= C;
        m2 /= C;
        const s = rs[rstd.off + r];
        for (let c = 0; c < C; c++) {
          o[dx.off + base + c] += s *
            (d[dout.off + base + c] * gs[g.off + c] - m1 - xh[xhat.off + base + c] * m2);
        }
      }
    },
    fillBias(x, bias, rows, n) {
      span(x, rows * n, "fillBias");
      const xs = f32(x), bs = f32(bias);
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < n; j++) xs[x.off + r * n + j] = bs[bias.off + j];
      }
    },
    addBias(x, bias, rows, n, ld) {
      if (rows > 0) span(x, (rows - 1) * ld + n, "addBias");
      const xs = f32(x), bs = f32(bias);
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < n; j++) xs[x.off + r * ld + j] += bs[bias.off + j];
      }
    },
    biasActivation(h, bias, rows, n, act, deriv) {
      span(h, rows * n, "biasActivation");
      const hs = f32(h), bs = f32(bias), ds = deriv ? f32(deriv) : null;
      for (let i = 0; i < rows * n; i++) {
        const [f, d] = activationExact(hs[h.off + i] + bs[bias.off + (i % n)], ACTIVATIONS[act]);
        hs[h.off + i] = f;
        if (ds && deriv) ds[deriv.off + i] = d;
      }
    },
    mul(a, b, n) {
      span(a, n, "mul a");
      span(b, n, "mul b");
      const as = f32(a), bs = f32(b);
      for (let i = 0; i < n; i++) as[a.off + i] *= bs[b.off + i];
    },
    causalSoftmax(s, T, S, past, blocks) {
      span(s, blocks * T * S, "causalSoftmax");
      const ss = f32(s);
      for (let z = 0; z < blocks; z++) {
        for (let i = 0; i < T; i++) {
          const base = s.off + (z * T + i) * S, end = past + i + 1;
          let mx = -Infinity;
          for (let j = 0; j < end; j++) mx = Math.max(mx, ss[base + j]);
          let sum = 0;
          for (let j = 0; j < end; j++) {
            ss[base + j] = Math.exp(ss[base + j] - mx);
            sum += ss[base + j];
          }
          for (let j = 0; j < S; j++) ss[base + j] = j < end ? ss[base + j] / sum : 0;
        }
      }
    },
    softmaxBackward(p, dp, T, S, blocks) {
      span(p, blocks * T * S, "softmaxBackward p");
      span(dp, blocks * T * S, "softmaxBackward dp");
      const ps = f32(p), ds = f32(dp);
      for (let row = 0; row < blocks * T; row++) {
        const pb = p.off + row * S, db = dp.off + row * S;
        let dot = 0;
        for (let j = 0; j < S; j++) dot += ps[pb + j] * ds[db + j];
        for (let j = 0; j < S; j++) ds[db + j] = ps[pb + j] * (ds[db + j] - dot);
      }
    },
    crossEntropy(logits, targets, losses, rows, V) {
      span(logits, rows * V, "crossEntropy");
      const ls = f32(logits), ts = i32(targets), out = f32(losses);
      for (let r = 0; r < rows; r++) {
        const base = logits.off + r * V, t = ts[targets.off + r];
        let mx = -Infinity;
        for (let v = 0; v < V; v++) mx = Math.max(mx, ls[base + v]);
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(ls[base + v] - mx);
        out[losses.off + r] = Math.log(sum) + mx - ls[base + t];
        for (let v = 0; v < V; v++) {
          ls[base + v] = Math.exp(ls[base + v] - mx) / (sum * rows) - (v === t ? 1 / rows : 0);
        }
      }
    },
    copyRows(dst, ldd, src, lds, rows, cols) {
      if (rows === 0 || cols === 0) return;
      span(dst, (rows - 1) * ldd + cols, "copyRows dst");
      span(src, (rows - 1) * lds + cols, "copyRows src");
      const d = f32(dst), s = f32(src);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) d[dst.off + r * ldd + c] = s[src.off + r * lds + c];
      }
    },
    gatherRows(dst, src, rows, n, C) {
      span(dst, n * C, "gatherRows dst");
      const d = f32(dst), s = f32(src), rs = i32(rows);
      for (let i = 0; i < n; i++) {
        const r = rs[rows.off + i];
        span(src, (r + 1) * C, "gatherRows src");
        for (let c = 0; c < C; c++) d[dst.off + i * C + c] = s[src.off + r * C + c];
      }
    },
    scatterAddRows(dst, src, rows, n, C) {
      span(src, n * C, "scatterAddRows src");
      const d = f32(dst), s = f32(src), rs = i32(rows);
      for (let i = 0; i < n; i++) {
        const r = rs[rows.off + i];
        span(dst, (r + 1) * C, "scatterAddRows dst");
        for (let c = 0; c < C; c++) d[dst.off + r * C + c] += s[src.off + i * C + c];
      }
    },
    convert(src, dst, n) {
      span(src, n, "convert src");
      span(dst, n, "convert dst");
      const s = f32(src), d = f32(dst);
      const round = rounding(dst.buf.dtype);
      for (let i = 0; i < n; i++) d[dst.off + i] = round(s[src.off + i]);
    },
    // The Llama kernels: the fast engine's TypeScript ones (fast/llama_kernels.ts) on the spans.
    rmsNorm(x, g, eps, out, xhat, rstd, rows, C) {
      span(x, rows * C, "rmsNorm x");
      span(g, C, "rmsNorm g");
      span(out, rows * C, "rmsNorm out");
      if (xhat) span(xhat, rows * C, "rmsNorm xhat");
      if (rstd) span(rstd, rows, "rmsNorm rstd");
      rmsNorm(
        view(x, rows * C),
        rows,
        C,
        view(g, C),
        eps,
        view(out, rows * C),
        xhat ? view(xhat, rows * C) : undefined,
        rstd ? view(rstd, rows) : undefined,
      );
    },
    rmsNormBackward(dout, xhat, rstd, g, dx, rows, C) {
      span(dout, rows * C, "rmsNormBackward dout");
      span(xhat, rows * C, "rmsNormBackward xhat");
      span(rstd, rows, "rmsNormBackward rstd");
      span(g, C, "rmsNormBackward g");
      span(dx, rows * C, "rmsNormBackward dx");
      rmsNormBackward(
        view(dout, rows * C),
        view(xhat, rows * C),
        view(rstd, rows),
        rows,
        C,
        view(g, C),
        view(dx, rows * C),
      );
    },
    rope(x, ld, cos, sin, rows, heads, D, inverse) {
      if (rows === 0 || heads === 0) return;
      span(x, (rows - 1) * ld + heads * D, "rope x");
      span(cos, rows * (D / 2), "rope cos");
      span(sin, rows * (D / 2), "rope sin");
      const n = rows * (D / 2);
      applyRope(f32(x), x.off, ld, rows, heads, D, view(cos, n), view(sin, n), 0, inverse);
    },
    swiglu(gate, up, h, n) {
      span(gate, n, "swiglu gate");
      span(up, n, "swiglu up");
      span(h, n, "swiglu h");
      swiglu(view(gate, n), view(up, n), n, view(h, n));
    },
    swigluBackward(dh, gate, up, n) {
      span(dh, n, "swigluBackward dh");
      span(gate, n, "swigluBackward gate");
      span(up, n, "swigluBackward up");
      swigluBackward(view(dh, n), view(gate, n), view(up, n), n);
    },
  };

  return {
    name: `emulated(${sgemm.name})`,
    kernels,
    get allocatedBytes() {
      return bytes;
    },
    get peakBytes() {
      return peak;
    },
    alloc(dtype, length) {
      const b = new EmuBuffer(
        dtype,
        length,
        dtype === "i32" ? new Int32Array(length) : new Float32Array(length),
      );
      // A fresh cudaMalloc is not zeroed: NaN makes a read of never-written memory visible.
      if (b.data instanceof Float32Array) b.data.fill(NaN);
      live.add(b);
      bytes += length * DTYPE_BYTES[dtype];
      peak = Math.max(peak, bytes);
      return b;
    },
    free(buf) {
      const b = buf as EmuBuffer;
      if (b.freed || !live.has(b)) return;
      b.freed = true;
      live.delete(b);
      bytes -= b.length * DTYPE_BYTES[b.dtype];
    },
    upload(dst, src) {
      span(dst, src.length, "upload");
      const want = src instanceof Int32Array ? "i32" : "f32";
      if (dst.buf.dtype !== want) throw new TypeError(`upload of ${want} into ${dst.buf.dtype}`);
      (dst.buf as EmuBuffer).data.set(src, dst.off);
    },
    download(src, out) {
      span(src, out.length, "download");
      if (src.buf.dtype !== "f32") throw new TypeError(`download of a ${src.buf.dtype} buffer`);
      out.set(f32(src).subarray(src.off, src.off + out.length));
    },
    zero(dst, n) {
      span(dst, n, "zero");
      (dst.buf as EmuBuffer).data.fill(0, dst.off, dst.off + n);
    },
    copy(dst, src, n) {
      span(dst, n, "copy dst");
      span(src, n, "copy src");
      if (dst.buf.dtype !== src.buf.dtype) throw new TypeError("copy between dtypes");
      const s = (src.buf as EmuBuffer).data;
      (dst.buf as EmuBuffer).data.set(s.subarray(src.off, src.off + n), dst.off);
    },
    gemm(g: Gemm) {
      checkGemm(g);
      const batch = g.batch ?? 1;
      // TF32: each input rounded to TF32 first, as the tensor cores read it.
      const input = (
        p: DPtr,
        trans: boolean,
        rows: number,
        cols: number,
        ld: number,
        stride = 0,
      ) => {
        if (g.math !== "tf32" || rows === 0 || cols === 0) return { data: f32(p), off: p.off };
        const [r, c] = trans ? [cols, rows] : [rows, cols];
        const n = (batch - 1) * stride + (r - 1) * ld + c;
        const src = f32(p), data = new Float32Array(n);
        for (let i = 0; i < n; i++) data[i] = roundTf32(src[p.off + i]);
        return { data, off: 0 };
      };
      const a = input(g.a, g.transA, g.m, g.k, g.lda, g.strideA);
      const b = input(g.b, g.transB, g.k, g.n, g.ldb, g.strideB);
      const c = f32(g.c);
      for (let z = 0; z < batch; z++) {
        sgemm.sgemm(
          g.transA,
          g.transB,
          g.m,
          g.n,
          g.k,
          g.alpha,
          a.data,
          a.off + z * (g.strideA ?? 0),
          g.lda,
          b.data,
          b.off + z * (g.strideB ?? 0),
          g.ldb,
          g.beta,
          c,
          g.c.off + z * (g.strideC ?? 0),
          g.ldc,
        );
      }
    },
    // Yields a macrotask, as waiting for a GPU does, so other calls can interleave as they would.
    synchronize: () => new Promise((resolve) => setTimeout(resolve, 0)),
    // The emulation computes each kernel on this thread as it is queued.
    waitsOffThread: false,
    dispose() {
      for (const b of [...live]) this.free(b);
    },
  };
}

function rounding(dtype: DType): (x: number) => number {
  if (dtype === "bf16" || dtype === "f16") return (x) => roundToHalf(dtype, x);
  return Math.fround;
}
