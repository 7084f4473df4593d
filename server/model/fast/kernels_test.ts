import { assert, assertAlmostEquals } from "../../../test/assert.ts";
import {
  type Activation,
  biasActivation,
  biasActivationTrain,
  causalSoftmax,
  crossEntropyGrad,
  erf,
  expNeg,
  geluNewExact,
  layerNorm,
  layerNormBackward,
  layerNormTrain,
  softmaxBackward,
} from "./kernels.ts";
import { uniform as filled } from "../testing/random.ts";

Deno.test("expNeg() matches Math.exp to 1e-11 relative over the float32 range", () => {
  for (let x = -103.9; x <= 0; x += 0.0137) {
    const want = Math.exp(x);
    assert(Math.abs(expNeg(x) - want) <= 1e-11 * want, `x = ${x}`);
  }
  assert(expNeg(-200) === 0);
  assert(expNeg(0) === 1);
  assertAlmostEquals(expNeg(1.5), Math.exp(1.5), 1e-12);
});

Deno.test("erf() is within 2e-7 of reference values", () => {
  const ref: Array<[number, number]> = [[0, 0], [0.5, 0.5204998778], [1, 0.8427007929], [
    -2,
    -0.9953222650,
  ]];
  for (const [x, want] of ref) assertAlmostEquals(erf(x), want, 2e-7);
});

Deno.test("tabulated gelu_new and its derivative are within 5e-7 of the tanh formula", () => {
  const n = 20000;
  const h = new Float32Array(n);
  for (let i = 0; i < n; i++) h[i] = -12 + 24 * i / n + 1e-4;
  const bias = new Float32Array(n).fill(0);
  const fwd = h.slice(), train = h.slice(), deriv = new Float32Array(n);
  biasActivation(fwd, 1, n, bias, "gelu_new");
  biasActivationTrain(train, 1, n, bias, "gelu_new", deriv);
  for (let i = 0; i < n; i++) {
    const [f, d] = geluNewExact(h[i]);
    assert(Math.abs(fwd[i] - f) < 5e-7 * Math.max(1, Math.abs(f)), `gelu(${h[i]})`);
    assert(train[i] === fwd[i], `train and inference forward differ at ${h[i]}`);
    assert(Math.abs(deriv[i] - d) < 5e-7, `gelu'(${h[i]}): ${deriv[i]} vs ${d}`);
  }
  const nan = Float32Array.of(NaN);
  biasActivation(nan, 1, 1, Float32Array.of(0), "gelu_new");
  assert(Number.isNaN(nan[0]), "a NaN input must stay NaN");
});

Deno.test("activation derivatives match central differences for every activation", () => {
  for (const act of ["gelu_new", "gelu", "relu"] as Activation[]) {
    const x = Float32Array.of(-3.1, -0.7, 0.3, 1.9, 4.2);
    const bias = Float32Array.of(0.1, -0.2, 0.05, 0, 0.3);
    const deriv = new Float32Array(5);
    biasActivationTrain(x.slice(), 1, 5, bias, act, deriv);
    for (let j = 0; j < 5; j++) {
      const eps = 1e-3;
      const up = Float32Array.of(x[j] + eps), down = Float32Array.of(x[j] - eps);
      biasActivation(up, 1, 1, bias.subarray(j, j + 1), act);
      biasActivation(down, 1, 1, bias.subarray(j, j + 1), act);
      assertAlmostEquals(deriv[j], (up[0] - down[0]) / (2 * eps), 2e-3, `${act}'(${x[j]})`);
    }
  }
});

Deno.test("layerNorm backward matches central differences of a weighted sum", () => {
  const C = 16, rows = 3;
  const x = filled(rows * C, 5, 2), g = filled(C, 6), b = filled(C, 7), w = filled(rows * C, 8);
  const out = new Float32Array(rows * C), xhat = new Float32Array(rows * C);
  const rstd = new Float32Array(rows);
  layerNormTrain(x, rows, C, g, b, 1e-5, out, xhat, rstd);
  const plain = new Float32Array(rows * C);
  layerNorm(x, rows, C, g, b, 1e-5, plain);
  for (let i = 0; i < out.length; i++) assert(plain[i] === out[i]);
  const dx = new Float32Array(rows * C);
  layerNormBackward(w, xhat, rstd, rows, C, g, dx);
  const f = (xs: Float64Array) => {
    const o = new Float32Array(rows * C);
    layerNorm(Float32Array.from(xs), rows, C, g, b, 1e-5, o);
    let s = 0;
    for (let i = 0; i < o.length; i++) s += o[i] * w[i];
    return s;
  };
  for (const i of [0, 5, 17, 40]) {
    const eps = 1e-2;
    const up = Float64Array.from(x), down = Float64Array.from(x);
    up[i] += eps;
    down[i] -= eps;
    assertAlmostEquals(dx[i], (f(up) - f(down)) / (2 * eps), 2e-3, `dx[${i}]`);
  }
});

Deno.test("causalSoftmax masks the future and its backward matches central differences", () => {
  const T = 3, past = 2, S = past + T;
  const scores = filled(T * S, 9, 3);
  const p = scores.slice();
  causalSoftmax(p, 0, T, S, past);
  for (let i = 0; i < T; i++) {
    let sum = 0;
    for (let j = 0; j < S; j++) {
      if (j > past + i) assert(p[i * S + j] === 0, `row ${i} sees key ${j}`);
      sum += p[i * S + j];
    }
    assertAlmostEquals(sum, 1, 1e-6);
  }
  // Backward without a past (the training case).
  const T2 = 4, w = filled(T2 * T2, 10);
  const s2 = filled(T2 * T2, 11, 2), p2 = s2.slice();
  causalSoftmax(p2, 0, T2, T2, 0);
  const ds = w.slice();
  softmaxBackward(p2, 0, ds, T2, T2);
  const f = (s: Float32Array) => {
    const q = s.slice();
    causalSoftmax(q, 0, T2, T2, 0);
    let t = 0;
    for (let i = 0; i < q.length; i++) t += q[i] * w[i];
    return t;
  };
  for (let i = 0; i < T2; i++) {
    for (let j = 0; j <= i; j++) {
      const eps = 1e-2, up = s2.slice(), down = s2.slice();
      up[i * T2 + j] += eps;
      down[i * T2 + j] -= eps;
      assertAlmostEquals(ds[i * T2 + j], (f(up) - f(down)) / (2 * eps), 1e-3, `dS[${i},${j}]`);
    }
  }
});

Deno.test("crossEntropyGrad returns the mean loss and (softmax - onehot) / rows", () => {
  const V = 7, rows = 2;
  const logits = filled(rows * V, 12, 4);
  const targets = Int32Array.of(3, 0);
  let want = 0;
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[r * V + v]);
    want += Math.log(sum) - logits[r * V + targets[r]];
  }
  want /= rows;
  const grad = logits.slice();
  assertAlmostEquals(crossEntropyGrad(grad, rows, V, targets), want, 1e-6);
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    for (let v = 0; v < V; v++) sum += grad[r * V + v];
    assertAlmostEquals(sum, 0, 1e-7, `row ${r} of the gradient sums to 0`);
  }
  // A target the model finds impossible still gives a finite loss.
  const extreme = Float32Array.of(0, -1000, 0);
  assertAlmostEquals(crossEntropyGrad(extreme, 1, 3, Int32Array.of(1)), 1000 + Math.log(2), 1e-3);
});
