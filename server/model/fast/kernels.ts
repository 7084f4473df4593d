/**
 * The element-wise and row-wise pieces of GPT-2 on Float32Array: layer norm, activations,
 * causal softmax, cross-entropy, and their backward passes. Plain top-level functions over typed
 * arrays and integer offsets, so V8 keeps each loop monomorphic; none allocates.
 * Sums run in float64 (JS numbers) and are stored as float32.
 */

// exp for x <= 0 (softmax after subtracting the row max) as 2^(n/32) from a table times a
// degree-4 polynomial of the remainder |r| <= ln2/64: relative error < 2e-12, and about 3x faster
// than Math.exp in V8, which the vocabulary-wide softmax of the loss calls 50k times per row.
// The table is computed once and only read.
const EXP_MIN = -104; // float32 exp underflows to 0 below about -103.97
const EXP_OFF = Math.ceil((-EXP_MIN * 32) / Math.LN2) + 2;
const EXP_TABLE = new Float64Array(EXP_OFF + 1); // [i] = 2^((i - EXP_OFF) / 32)
for (let i = 0; i <= EXP_OFF; i++) EXP_TABLE[i] = Math.pow(2, (i - EXP_OFF) / 32);
const EXP_K = 32 / Math.LN2, EXP_R = Math.LN2 / 32;

/** exp(x) for x <= 0 (x > 0 falls back to Math.exp). */
export function expNeg(x: number): number {
  if (x > 0) return Math.exp(x);
  if (x < EXP_MIN) return 0;
  const n = (x * EXP_K - 0.5) | 0; // nearest integer (ties down) for x <= 0
  const r = x - n * EXP_R;
  return EXP_TABLE[n + EXP_OFF] * (1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24)))));
}

/** out[r] = (x[r] - mean) * rstd * g + b for `rows` rows of width C. */
export function layerNorm(
  x: Float32Array,
  rows: number,
  C: number,
  g: Float32Array,
  b: Float32Array,
  eps: number,
  out: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * C;
    // One pass for both moments: float64 sums keep E[x^2] - mean^2 exact enough for float32.
    let sum = 0, sumSq = 0;
    for (let c = 0; c < C; c++) {
      const v = x[base + c];
      sum += v;
      sumSq += v * v;
    }
    const mean = sum / C;
    const rstd = 1 / Math.sqrt(Math.max(sumSq / C - mean * mean, 0) + eps);
    for (let c = 0; c < C; c++) out[base + c] = (x[base + c] - mean) * rstd * g[c] + b[c];
  }
}

/** layerNorm that also keeps what the backward pass needs: xhat [rows, C] and rstd [rows]. */
export function layerNormTrain(
  x: Float32Array,
  rows: number,
  C: number,
  g: Float32Array,
  b: Float32Array,
  eps: number,
  out: Float32Array,
  xhat: Float32Array,
  rstdOut: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * C;
    // One pass for both moments: float64 sums keep E[x^2] - mean^2 exact enough for float32.
    let sum = 0, sumSq = 0;
    for (let c = 0; c < C; c++) {
      const v = x[base + c];
      sum += v;
      sumSq += v * v;
    }
    const mean = sum / C;
    const rstd = 1 / Math.sqrt(Math.max(sumSq / C - mean * mean, 0) + eps);
    rstdOut[r] = rstd;
    for (let c = 0; c < C; c++) {
      const h = (x[base + c] - mean) * rstd;
      xhat[base + c] = h;
      out[base + c] = h * g[c] + b[c];
    }
  }
}

/**
 * dx[r] += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * g.
 * Accumulates, because dx is the residual stream's gradient.
 */
export function layerNormBackward(
  dout: Float32Array,
  xhat: Float32Array,
  rstd: Float32Array,
  rows: number,
  C: number,
  g: Float32Array,
  dx: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * C;
    let m1 = 0, m2 = 0;
    for (let c = 0; c < C; c++) {
      const dh = dout[base + c] * g[c];
      m1 += dh;
      m2 += dh * xhat[base + c];
    }
    m1 /= C;
    m2 /= C;
    const s = rstd[r];
    for (let c = 0; c < C; c++) {
      dx[base + c] += s * (dout[base + c] * g[c] - m1 - xhat[base + c] * m2);
    }
  }
}

/** x[r, 0:n] += bias for rows r with row stride ld. */
export function addBias(x: Float32Array, rows: number, n: number, ld: number, bias: Float32Array) {
  for (let r = 0; r < rows; r++) {
    const base = r * ld;
    for (let j = 0; j < n; j++) x[base + j] += bias[j];
  }
}

/** Fills `rows` rows of width n with the bias (so a following sgemm can use beta = 1). */
export function fillBias(x: Float32Array, rows: number, n: number, bias: Float32Array): void {
  for (let r = 0; r < rows; r++) x.set(bias, r * n);
}

export type Activation = "gelu_new" | "gelu" | "relu";

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_C = 0.044715;
const INV_SQRT_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** erf with |error| < 1.5e-7 (Abramowitz and Stegun 7.1.26), for the exact-GELU variant. */
export function erf(x: number): number {
  const s = x < 0 ? -1 : 1;
  const a = x < 0 ? -x : x;
  const t = 1 / (1 + 0.3275911 * a);
  const y = 1 -
    ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) *
      t * Math.exp(-a * a);
  return s * y;
}

/** h = act(h + bias) in place over [rows, n]. */
export function biasActivation(
  h: Float32Array,
  rows: number,
  n: number,
  bias: Float32Array,
  act: Activation,
): void {
  if (act === "gelu_new") geluNew(h, rows, n, bias);
  else if (act === "gelu") geluErf(h, rows, n, bias, null);
  else relu(h, rows, n, bias, null);
}

/** biasActivation that also stores act'(h + bias) in `deriv` [rows, n] for the backward pass. */
export function biasActivationTrain(
  h: Float32Array,
  rows: number,
  n: number,
  bias: Float32Array,
  act: Activation,
  deriv: Float32Array,
): void {
  if (act === "gelu_new") geluNewTrain(h, rows, n, bias, deriv);
  else if (act === "gelu") geluErf(h, rows, n, bias, deriv);
  else relu(h, rows, n, bias, deriv);
}

/** gelu_new(v) and its derivative, exactly (tanh form). */
export function geluNewExact(v: number): [number, number] {
  const v2 = v * v;
  const t = Math.tanh(SQRT_2_OVER_PI * v * (1 + GELU_C * v2));
  return [
    0.5 * v * (1 + t),
    0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * GELU_C * v2),
  ];
}

/**
 * act(v) and act'(v) computed directly (no table): the definition every engine's activation is
 * held to, and what the emulated GPU device computes.
 */
export function activationExact(v: number, act: Activation): [number, number] {
  if (act === "gelu_new") return geluNewExact(v);
  if (act === "gelu") {
    const cdf = 0.5 * (1 + erf(v * INV_SQRT_2));
    return [v * cdf, cdf + v * INV_SQRT_2PI * Math.exp(-0.5 * v * v)];
  }
  return v > 0 ? [v, 1] : [0, 0];
}

// gelu_new and its derivative tabulated on [-10, 10] in steps of 1/1024, interleaved [f, f'] so
// one cache line serves both, read with linear interpolation: error < 3e-7 (float32 rounding of
// values near 3 is 2.4e-7), twice as fast as the rational tanh. Outside the range gelu_new is x
// (derivative 1) or 0 to float32 precision. Computed once and only read.
const GELU_STEPS = 1024;
const GELU_LIM = 10;
const GELU_N = 2 * GELU_LIM * GELU_STEPS + 2;
const GELU_TABLE = new Float32Array(2 * GELU_N); // [i] -> f(x_i), f'(x_i); x_i = i / 1024 - 10
for (let i = 0; i < GELU_N; i++) {
  const [f, d] = geluNewExact(i / GELU_STEPS - GELU_LIM);
  GELU_TABLE[2 * i] = f;
  GELU_TABLE[2 * i + 1] = d;
}
const GELU_HI = GELU_LIM - 1 / GELU_STEPS;

function geluNew(h: Float32Array, rows: number, n: number, bias: Float32Array): void {
  const tab = GELU_TABLE;
  for (let r = 0; r < rows; r++) {
    const base = r * n;
    for (let j = 0; j < n; j++) {
      const v = h[base + j] + bias[j];
      if (v > -GELU_LIM && v < GELU_HI) {
        const u = (v + GELU_LIM) * GELU_STEPS;
        const i = u | 0;
        const f0 = tab[2 * i];
        h[base + j] = f0 + (u - i) * (tab[2 * i + 2] - f0);
      } else h[base + j] = v >= GELU_HI ? v : v * 0; // v * 0 keeps a NaN visible
    }
  }
}

function geluNewTrain(
  h: Float32Array,
  rows: number,
  n: number,
  bias: Float32Array,
  deriv: Float32Array,
): void {
  const tab = GELU_TABLE;
  for (let r = 0; r < rows; r++) {
    const base = r * n;
    for (let j = 0; j < n; j++) {
      const v = h[base + j] + bias[j];
      if (v > -GELU_LIM && v < GELU_HI) {
        const u = (v + GELU_LIM) * GELU_STEPS;
        const i = u | 0;
        const f = u - i;
        const f0 = tab[2 * i], d0 = tab[2 * i + 1];
        h[base + j] = f0 + f * (tab[2 * i + 2] - f0);
        deriv[base + j] = d0 + f * (tab[2 * i + 3] - d0);
      } else {
        h[base + j] = v >= GELU_HI ? v : v * 0; // v * 0 keeps a NaN visible
        deriv[base + j] = v >= GELU_HI ? 1 : v * 0;
      }
    }
  }
}

function geluErf(
  h: Float32Array,
  rows: number,
  n: number,
  bias: Float32Array,
  deriv: Float32Array | null,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * n;
    for (let j = 0; j < n; j++) {
      const v = h[base + j] + bias[j];
      const cdf = 0.5 * (1 + erf(v * INV_SQRT_2));
      h[base + j] = v * cdf;
      if (deriv) deriv[base + j] = cdf + v * INV_SQRT_2PI * Math.exp(-0.5 * v * v);
    }
  }
}

function relu(
  h: Float32Array,
  rows: number,
  n: number,
  bias: Float32Array,
  deriv: Float32Array | null,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * n;
    for (let j = 0; j < n; j++) {
      const v = h[base + j] + bias[j];
      h[base + j] = v > 0 ? v : 0;
      if (deriv) deriv[base + j] = v > 0 ? 1 : 0;
    }
  }
}

/** a[i] *= b[i] for i < n. */
export function mulInPlace(a: Float32Array, b: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) a[i] *= b[i];
}

/**
 * Causal softmax over a [T, S] score block whose row i sits at absolute position past + i and may
 * attend to keys 0..past + i; the masked tail of each row is set to 0 so p @ v can use all S.
 */
export function causalSoftmax(s: Float32Array, off: number, T: number, S: number, past: number) {
  for (let i = 0; i < T; i++) {
    const base = off + i * S;
    const end = past + i + 1; // keys visible to this row
    let max = -Infinity;
    for (let j = 0; j < end; j++) if (s[base + j] > max) max = s[base + j];
    let sum = 0;
    for (let j = 0; j < end; j++) {
      const e = expNeg(s[base + j] - max);
      s[base + j] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let j = 0; j < end; j++) s[base + j] *= inv;
    for (let j = end; j < S; j++) s[base + j] = 0;
  }
}

/** dS = P * (dP - rowsum(dP * P)) in place in dp ([T, S] blocks, causal: zeros stay zero). */
export function softmaxBackward(
  p: Float32Array,
  pOff: number,
  dp: Float32Array,
  T: number,
  S: number,
): void {
  for (let i = 0; i < T; i++) {
    const pb = pOff + i * S, db = i * S;
    let dot = 0;
    for (let j = 0; j < S; j++) dot += p[pb + j] * dp[db + j];
    for (let j = 0; j < S; j++) dp[db + j] = p[pb + j] * (dp[db + j] - dot);
  }
}

/**
 * Mean softmax cross-entropy of `rows` logit rows [rows, V] against `targets`; replaces the logits
 * with d(loss)/d(logits) = (softmax - onehot) / rows. Returns the loss.
 */
export function crossEntropyGrad(
  logits: Float32Array,
  rows: number,
  V: number,
  targets: Int32Array,
): number {
  let total = 0;
  const invRows = 1 / rows;
  for (let r = 0; r < rows; r++) {
    const base = r * V;
    const t = targets[r];
    const target = logits[base + t];
    let max = -Infinity;
    for (let v = 0; v < V; v++) if (logits[base + v] > max) max = logits[base + v];
    let sum = 0;
    for (let v = 0; v < V; v++) {
      const e = expNeg(logits[base + v] - max);
      logits[base + v] = e;
      sum += e;
    }
    total += Math.log(sum) + max - target; // log-sum-exp minus the target's logit
    const scale = invRows / sum;
    for (let v = 0; v < V; v++) logits[base + v] *= scale;
    logits[base + t] -= invRows;
  }
  return total * invRows;
}
