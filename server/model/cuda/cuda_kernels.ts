/**
 * The Kernels interface of device.ts over kernels.cu's FFI symbols: each DPtr becomes a device
 * pointer (with its byte offset), and a launch that fails throws, naming the kernel and the
 * CUDA error.
 */
import type { CudaDevice, KernelLib } from "./cuda_device.ts";
import { type DPtr, DTYPE_CODE, type Kernels } from "./device.ts";

/** The Kernels interface over the FFI symbols: DPtr -> pointer, a failed launch throws. */
export function bindKernels(d: CudaDevice, lib: KernelLib): Kernels {
  const k = lib.symbols;
  const p = (x: DPtr) => d.ptr(x);
  const run = (name: string, rc: number) => d.check(rc, name);
  return {
    addPositions: (x, wpe, pos, rows, C) =>
      run("pl_add_positions", k.pl_add_positions(p(x), p(wpe), p(pos), rows, C)),
    layerNorm: (x, g, b, eps, out, xhat, rstd, rows, C) =>
      run(
        "pl_layer_norm",
        k.pl_layer_norm(p(x), p(g), p(b), eps, p(out), d.opt(xhat), d.opt(rstd), rows, C),
      ),
    layerNormBackward: (dout, xhat, rstd, g, dx, rows, C) =>
      run(
        "pl_layer_norm_backward",
        k.pl_layer_norm_backward(p(dout), p(xhat), p(rstd), p(g), p(dx), rows, C),
      ),
    fillBias: (x, bias, rows, n) => run("pl_fill_bias", k.pl_fill_bias(p(x), p(bias), rows, n)),
    addBias: (x, bias, rows, n, ld) =>
      run("pl_add_bias", k.pl_add_bias(p(x), p(bias), rows, n, ld)),
    biasActivation: (h, bias, rows, n, act, deriv) =>
      run("pl_bias_activation", k.pl_bias_activation(p(h), p(bias), rows, n, act, d.opt(deriv))),
    mul: (a, b, n) => run("pl_mul", k.pl_mul(p(a), p(b), BigInt(n))),
    causalSoftmax: (s, T, S, past, blocks) =>
      run("pl_causal_softmax", k.pl_causal_softmax(p(s), T, S, past, blocks)),
    softmaxBackward: (pr, dp, T, S, blocks) =>
      run("pl_softmax_backward", k.pl_softmax_backward(p(pr), p(dp), T, S, blocks)),
    crossEntropy: (logits, targets, losses, rows, V) =>
      run("pl_cross_entropy", k.pl_cross_entropy(p(logits), p(targets), p(losses), rows, V)),
    copyRows: (dst, ldd, src, lds, rows, cols) =>
      run("pl_copy_rows", k.pl_copy_rows(p(dst), ldd, p(src), lds, rows, cols)),
    gatherRows: (dst, src, rows, n, C) =>
      run("pl_gather_rows", k.pl_gather_rows(p(dst), p(src), p(rows), n, C)),
    scatterAddRows: (dst, src, rows, n, C) =>
      run("pl_scatter_add_rows", k.pl_scatter_add_rows(p(dst), p(src), p(rows), n, C)),
    convert: (src, dst, n) =>
      run("pl_convert", k.pl_convert(p(src), p(dst), dtypeCode(dst), BigInt(n))),
    rmsNorm: (x, g, eps, out, xhat, rstd, rows, C) =>
      run(
        "pl_rms_norm",
        k.pl_rms_norm(p(x), p(g), eps, p(out), d.opt(xhat), d.opt(rstd), rows, C),
      ),
    rmsNormBackward: (dout, xhat, rstd, g, dx, rows, C) =>
      run(
        "pl_rms_norm_backward",
        k.pl_rms_norm_backward(p(dout), p(xhat), p(rstd), p(g), p(dx), rows, C),
      ),
    rope: (x, ld, cos, sin, rows, heads, D, inverse) =>
      run("pl_rope", k.pl_rope(p(x), ld, p(cos), p(sin), rows, heads, D, inverse ? 1 : 0)),
    swiglu: (gate, up, h, n) => run("pl_swiglu", k.pl_swiglu(p(gate), p(up), p(h), BigInt(n))),
    swigluBackward: (dh, gate, up, n) =>
      run("pl_swiglu_backward", k.pl_swiglu_backward(p(dh), p(gate), p(up), BigInt(n))),
  };
}

function dtypeCode(p: DPtr): number {
  const t = p.buf.dtype;
  if (t === "i32") throw new TypeError("an i32 buffer is not a float table");
  return DTYPE_CODE[t];
}
