/**
 * The row-wise pieces of a Llama block that GPT-2's do not have: RMSNorm, rotary position
 * embeddings (with Llama 3's frequency rescaling) and the SwiGLU gate, each with its backward.
 * The formulas are Hugging Face's (transformers, models/llama/modeling_llama.py: LlamaRMSNorm,
 * rotate_half / apply_rotary_pos_emb, LlamaMLP; modeling_rope_utils.py:
 * _compute_default_rope_parameters, _compute_llama3_parameters).
 */
import type { Llama3RopeScaling } from "../llama_config.ts";

/**
 * y [rows, C] = x * rsqrt(mean(x^2) + eps) * g. With `xhat` and `rstd`, also keeps x * rstd and
 * rstd per row for the backward pass.
 */
export function rmsNorm(
  x: Float32Array,
  rows: number,
  C: number,
  g: Float32Array,
  eps: number,
  y: Float32Array,
  xhat?: Float32Array,
  rstd?: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * C;
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[o + c] * x[o + c];
    const inv = 1 / Math.sqrt(ss / C + eps);
    if (rstd) rstd[r] = inv;
    for (let c = 0; c < C; c++) {
      const h = x[o + c] * inv;
      if (xhat) xhat[o + c] = h;
      y[o + c] = h * g[c];
    }
  }
}

/** dx [rows, C] += rstd * (dy * g - xhat * mean(dy * g * xhat)): RMSNorm's input gradient. */
export function rmsNormBackward(
  dy: Float32Array,
  xhat: Float32Array,
  rstd: Float32Array,
  rows: number,
  C: number,
  g: Float32Array,
  dx: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * C;
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dy[o + c] * g[c] * xhat[o + c];
    const m = dot / C, inv = rstd[r];
    for (let c = 0; c < C; c++) dx[o + c] += inv * (dy[o + c] * g[c] - xhat[o + c] * m);
  }
}

/**
 * The rotary inverse frequencies [D / 2]: 1 / theta^(2i / D), rescaled as Llama 3 does when
 * `scaling` is given (long wavelengths divided by the factor, short ones kept, a smooth blend
 * between). Float32, as Hugging Face computes them.
 */
export function ropeInvFreq(D: number, theta: number, scaling?: Llama3RopeScaling): Float32Array {
  const half = D / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / D);
  if (!scaling) return inv;
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions: old } = scaling;
  const lowWavelen = old / lowFreqFactor, highWavelen = old / highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen > lowWavelen) {
      inv[i] = inv[i] / factor;
    } else if (wavelen >= highWavelen) {
      const smooth = (old / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      inv[i] = (1 - smooth) * inv[i] / factor + smooth * inv[i];
    }
  }
  return inv;
}

/** cos and sin [N, D / 2] of each row's position times each frequency (float32, as HF). */
export function ropeTables(
  positions: Int32Array,
  invFreq: Float32Array,
): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length, N = positions.length;
  const cos = new Float32Array(N * half), sin = new Float32Array(N * half);
  const angle = new Float32Array(1);
  for (let r = 0; r < N; r++) {
    for (let i = 0; i < half; i++) {
      angle[0] = positions[r] * invFreq[i]; // rounded to float32 first, as torch's product is
      cos[r * half + i] = Math.cos(angle[0]);
      sin[r * half + i] = Math.sin(angle[0]);
    }
  }
  return { cos, sin };
}

/**
 * Rotates `heads` heads of D values in each of `rows` rows of x (row stride `ld`, from `off`):
 * x[i] * cos - x[i + D/2] * sin and x[i + D/2] * cos + x[i] * sin (rotate_half). `inverse`
 * applies the transpose (the backward pass: sin negated). Row r uses table row `r0 + r`.
 */
export function applyRope(
  x: Float32Array,
  off: number,
  ld: number,
  rows: number,
  heads: number,
  D: number,
  cos: Float32Array,
  sin: Float32Array,
  r0: number,
  inverse = false,
): void {
  const half = D / 2, sign = inverse ? -1 : 1;
  for (let r = 0; r < rows; r++) {
    const t = (r0 + r) * half;
    for (let h = 0; h < heads; h++) {
      const b = off + r * ld + h * D;
      for (let i = 0; i < half; i++) {
        const c = cos[t + i], s = sign * sin[t + i];
        const a1 = x[b + i], a2 = x[b + half + i];
        x[b + i] = a1 * c - a2 * s;
        x[b + half + i] = a2 * c + a1 * s;
      }
    }
  }
}

/** h [n] = silu(gate) * up, silu(z) = z / (1 + e^-z). */
export function swiglu(gate: Float32Array, up: Float32Array, n: number, h: Float32Array): void {
  for (let i = 0; i < n; i++) {
    const z = gate[i];
    h[i] = (z / (1 + Math.exp(-z))) * up[i];
  }
}

/**
 * From dh [n] (d loss / d h) and the saved gate and up: dgate = dh * up * silu'(gate) (written
 * over `gate`) and dup = dh * silu(gate) (written over `up`).
 */
export function swigluBackward(dh: Float32Array, gate: Float32Array, up: Float32Array, n: number) {
  for (let i = 0; i < n; i++) {
    const z = gate[i], sig = 1 / (1 + Math.exp(-z)), silu = z * sig;
    gate[i] = dh[i] * up[i] * (sig * (1 + z * (1 - sig)));
    up[i] = dh[i] * silu;
  }
}
