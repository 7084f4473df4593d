/**
 * The fast CPU engine: GPT-2 on Float32Array with matrix products through `Sgemm` (OpenBLAS via
 * FFI, or the TypeScript fallback); 16-bit weights stay 16-bit (`half_linear.ts`). Packed rows,
 * per-sequence causal attention against an optional KV cache, logits only where asked, and a
 * hand-written backward pass to the input embeddings only (never a weight gradient). Scratch
 * memory comes from a grow-only arena per engine.
 *
 * Shapes: N packed rows, C = n_embd, H heads of D = C / H, F = n_inner, V = vocab.
 * Weights are in the checkpoint's Conv1D layout ([in, out]), so x @ W needs no transpose.
 */
import type { Gpt2Config } from "../gpt2_config.ts";
import {
  defaultPositions,
  type Engine,
  type ForwardInput,
  type ForwardOutput,
  type KvCache,
  type LossInput,
  type LossOutput,
  type SeqSpan,
  spanStarts,
  validateLoss,
  validatePacked,
} from "../engine.ts";
import { isPacked, type PackedKernels } from "../half.ts";
import { nativePackedKernels } from "../onednn/native_half.ts";
import {
  type Gpt2Model,
  type Gpt2Weights,
  isLlama,
  type LoadedModel,
  matrices,
} from "../weights.ts";
import { LlamaEngine } from "./llama_engine.ts";
import { FastEngineBase } from "./engine_base.ts";
import { type Blas, jsSgemm, loadBlas } from "./blas.ts";
import { type Activation, causalSoftmax, softmaxBackward } from "./kernels.ts";
import { FastKvCache } from "./kv_cache.ts";
import { type FinalNorm, logitsAt, lossAt } from "./lm_head.ts";
import { blasOps, type EngineOps, type FrozenLinear } from "./ops.ts";
import { makePlan, outRowOf, type RowPlan } from "../row_plan.ts";

export interface FastEngineOptions {
  /**
   * Native BLAS to use. Default: `loadBlas()` (OpenBLAS when installed, else the TypeScript
   * sgemm). Pass `null` to force the TypeScript sgemm.
   */
  blas?: Blas | null;
  /** BLAS threads (a process-wide OpenBLAS setting). Default: the library's own (all cores). */
  threads?: number;
  /** When given, milliseconds spent per phase are added to it (for benchmarks). */
  profile?: Map<string, number>;
  /**
   * Products on 16-bit weights. Default: the oneDNN shim's native kernels where it is built
   * (`nativePackedKernels`), else none (16-bit weights are widened a panel at a time in
   * TypeScript). Pass `null` to force that.
   */
  half?: PackedKernels | null;
}

/** Builds the fast engine over already-loaded weights (shared, never copied). */
export function createFastEngine(model: LoadedModel, opts: FastEngineOptions = {}): Engine {
  if (opts.threads !== undefined && (!Number.isInteger(opts.threads) || opts.threads < 1)) {
    throw new RangeError(`threads must be a positive integer: found ${opts.threads}`);
  }
  const owned = opts.blas === undefined;
  const blas = owned ? loadBlas() : opts.blas ?? null;
  if (blas && opts.threads !== undefined) blas.setThreads(opts.threads);
  // The native kernels only where some matrix is 16-bit (loading them sets OpenMP's policy).
  const half = matrices(model.weights).some(isPacked) ? opts.half ?? nativePackedKernels() : null;
  const ops = blasOps(blas ?? jsSgemm(), () => owned && blas?.close(), half);
  return engineOver("fast", model, ops, opts.profile ?? null);
}

/** The engine structure of `model`'s family over `ops` (the fast engine's, or oneDNN's). */
export function engineOver(
  kind: string,
  model: LoadedModel,
  ops: EngineOps,
  profile: Map<string, number> | null,
): Engine {
  return isLlama(model)
    ? new LlamaEngine(kind, model, ops)
    : new FastEngine(kind, model, ops, profile);
}

/** Per-layer activations kept by a training forward for the backward pass. */
interface Saved {
  ln1x: Float32Array[]; // [N, C] normalised LN1 input (before gain and bias)
  ln1r: Float32Array[]; // [N]    1 / std of each row
  qkv: Float32Array[]; // [N, 3C]
  probs: Float32Array[]; // per sequence s, head h: [Tq_s, T_s] at plan.probOff[s] + h * Tq_s * T_s
  ln2x: Float32Array[]; // [M, C] (M = the block's output rows)
  ln2r: Float32Array[]; // [M]
  dact: Float32Array[]; // [M, F] activation derivative at the MLP pre-activation
}

/** The address of a typed array's first element, for descriptors read by native code. */
function address(a: Float32Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a as Float32Array<ArrayBuffer>)));
}

/** The frozen products of one block. */
interface LayerLinears {
  qkv: FrozenLinear; // [C, 3C] + bias
  attnProj: FrozenLinear; // [C, C] + bias
  fc: FrozenLinear; // [C, F] + bias
  fcProj: FrozenLinear; // [F, C] + bias
}

/**
 * The engine's structure over `EngineOps` (the fast engine's BLAS ops, or the oneDNN engine's);
 * `kind` names it (`fast`, `onednn`). The ops are disposed with the engine.
 */
export class FastEngine extends FastEngineBase implements Engine {
  readonly config: Gpt2Config;
  readonly #w: Gpt2Weights;
  readonly #layers: LayerLinears[];
  readonly #lmHead: FrozenLinear; // logical [C, V], stored [V, C]
  readonly #finalNorm: FinalNorm; // ln_f
  readonly #act: Activation;
  readonly #profile: Map<string, number> | null;
  #mark = 0;

  constructor(
    kind: string,
    model: Gpt2Model,
    ops: EngineOps,
    profile: Map<string, number> | null,
  ) {
    super(kind, model.weights.wte, ops);
    this.#profile = profile;
    this.config = model.config;
    this.#w = model.weights;
    const { nEmbd: C, nInner: F, vocabSize: V } = model.config;
    this.#layers = model.weights.layers.map((w) => ({
      qkv: ops.linear(w.attnW, C, 3 * C, false, w.attnB),
      attnProj: ops.linear(w.attnProjW, C, C, false, w.attnProjB),
      fc: ops.linear(w.fcW, C, F, false, w.fcB),
      fcProj: ops.linear(w.fcProjW, F, C, false, w.fcProjB),
    }));
    this.#lmHead = ops.linear(model.weights.lmHead ?? model.weights.wte, C, V, true);
    const { lnFG: g, lnFB: b } = model.weights, eps = model.config.layerNormEpsilon;
    const k = this.k;
    this.#finalNorm = {
      forward: (x, rows, out, xhat, rstd) =>
        xhat && rstd
          ? k.layerNormTrain(x, rows, C, g, b, eps, out, xhat, rstd)
          : k.layerNorm(x, rows, C, g, b, eps, out),
      backward: (dy, xhat, rstd, rows, dx) => k.layerNormBackward(dy, xhat, rstd, rows, C, g, dx),
    };
    this.#act = model.config.activation;
  }

  newCache(): KvCache {
    this.checkLive();
    return new FastKvCache(this, this.config.nLayer, this.config.nEmbd);
  }

  /** Also starts the profile's clock for the call. */
  protected override checkLive(): void {
    super.checkLive();
    if (this.#profile) this.#mark = performance.now();
  }

  /** Charges the time since the previous mark to `phase` (profiling only). */
  #lap(phase: string): void {
    const p = this.#profile;
    if (!p) return;
    const now = performance.now();
    p.set(phase, (p.get(phase) ?? 0) + now - this.#mark);
    this.#mark = now;
  }

  /** x [N, C] = embeds + wpe[positions]. */
  #embedInput(embeds: Float32Array, positions: Int32Array, N: number): Float32Array {
    const C = this.config.nEmbd;
    const wpe = this.#w.wpe;
    const x = this.arena.f32("x", N * C); // [N, C]
    for (let r = 0; r < N; r++) {
      const xb = r * C, pb = positions[r] * C;
      for (let c = 0; c < C; c++) x[xb + c] = embeds[xb + c] + wpe[pb + c];
    }
    return x;
  }

  protected computeForward(input: ForwardInput): ForwardOutput {
    this.checkLive();
    const { embeds, seqs, logitRows } = input;
    const N = validatePacked(this.config, embeds, seqs, input.positions, logitRows, "logitRows");
    const { nEmbd: C, vocabSize: V, nLayer: L, nHead: H } = this.config;
    const caches = this.caches(seqs);
    const positions = input.positions ?? defaultPositions(seqs);
    for (let s = 0; s < seqs.length; s++) caches[s]?.reserve(seqs[s].length);
    const starts = spanStarts(seqs);
    const full = makePlan(seqs, starts, N, H);
    const last = makePlan(seqs, starts, N, H, logitRows);
    let x = this.#embedInput(embeds, positions, N);
    this.#lap("embed");
    for (let l = 0; l < L; l++) {
      x = this.#block(l, x, N, seqs, starts, caches, null, l === L - 1 ? last : full);
    }
    for (let s = 0; s < seqs.length; s++) caches[s]?.commit(seqs[s].length);

    const outRows = Int32Array.from(logitRows, (r) => outRowOf(last, seqs, starts, r));
    const logits = logitsAt(this.arena, this.#finalNorm, this.#lmHead, x, outRows, C, V);
    this.#lap("logits");
    return { logits };
  }

  protected computeLoss(input: LossInput): LossOutput {
    this.checkLive();
    const { embeds, seqs, lossRows, targets } = input;
    const N = validateLoss(this.config, input);
    const { nEmbd: C, vocabSize: V, nLayer: L, nHead: H } = this.config;
    const positions = input.positions ?? defaultPositions(seqs);
    const starts = spanStarts(seqs);
    const F = this.config.nInner;
    const a = this.arena;
    const full = makePlan(seqs, starts, N, H);
    const last = makePlan(seqs, starts, N, H, lossRows);
    const plans = Array.from({ length: L }, (_, l) => l === L - 1 ? last : full);

    const saved: Saved = { ln1x: [], ln1r: [], qkv: [], probs: [], ln2x: [], ln2r: [], dact: [] };
    for (let l = 0; l < L; l++) {
      const M = plans[l].M;
      saved.ln1x.push(a.f32(`ln1x.${l}`, N * C));
      saved.ln1r.push(a.f32(`ln1r.${l}`, N));
      saved.qkv.push(a.f32(`qkv.${l}`, N * 3 * C));
      saved.probs.push(a.f32(`probs.${l}`, plans[l].probTotal));
      saved.ln2x.push(a.f32(`ln2x.${l}`, M * C));
      saved.ln2r.push(a.f32(`ln2r.${l}`, M));
      saved.dact.push(a.f32(`dact.${l}`, M * F));
    }
    const noCaches = seqs.map(() => null);

    // Forward, keeping what backward needs.
    this.#lap("setup");
    let x = this.#embedInput(embeds, positions, N);
    this.#lap("embed");
    for (let l = 0; l < L; l++) x = this.#block(l, x, N, seqs, starts, noCaches, saved, plans[l]);

    // Final norm and logits at the loss rows only, the loss, and back to the last block's rows.
    const outRows = Int32Array.from(lossRows, (r) => outRowOf(last, seqs, starts, r));
    const { loss, dOut } = lossAt(
      a,
      this.#finalNorm,
      this.#lmHead,
      x,
      outRows,
      targets,
      { C, V, M: last.M },
      (phase) => this.#lap(phase),
    );

    let dx = dOut;
    for (let l = L - 1; l >= 0; l--) {
      dx = this.#blockBackward(l, dx, N, seqs, starts, saved, plans[l]);
    }
    const gradEmbeds = dx.slice(0, N * C);
    this.#lap("output");
    return { loss, gradEmbeds };
  }

  /**
   * One transformer block on x [N, C]. A full plan updates x in place and returns it; a partial
   * plan returns the M output rows in a separate buffer. `saved` set means a training forward.
   */
  #block(
    l: number,
    x: Float32Array,
    N: number,
    seqs: SeqSpan[],
    starts: Int32Array,
    caches: (FastKvCache | null)[],
    saved: Saved | null,
    plan: RowPlan,
  ): Float32Array {
    const { nEmbd: C, nHead: H, nInner: F, layerNormEpsilon: eps } = this.config;
    const C3 = 3 * C, D = C / H, M = plan.M;
    const scale = 1 / Math.sqrt(D);
    const w = this.#w.layers[l], lin = this.#layers[l];
    const a = this.arena, g = this.ops.gemm, k = this.k;

    // Keys and values of every row; queries of the plan's rows.
    const xn = a.f32("xn", N * C); // [N, C]
    if (saved) k.layerNormTrain(x, N, C, w.ln1G, w.ln1B, eps, xn, saved.ln1x[l], saved.ln1r[l]);
    else k.layerNorm(x, N, C, w.ln1G, w.ln1B, eps, xn);
    this.#lap("layernorm");
    const qkv = saved ? saved.qkv[l] : a.f32("qkv", N * C3); // [N, 3C]
    lin.qkv.forward(N, xn, qkv, { bias: true });
    this.#lap("gemm.qkv");

    const y = a.f32("attnOut", M * C); // [M, C]
    const batched = this.ops.attention;
    // Batched attention: one descriptor per sequence (see BatchedAttention), probabilities at the
    // plan's offsets (kept for backward when training).
    const desc = batched ? new BigInt64Array(seqs.length * 9) : null;
    const allProbs = saved ? saved.probs[l] : batched ? a.f32("scores", plan.probTotal) : null;
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0;
      if (T === 0) continue;
      const r0 = starts[s];
      const cache = caches[s];
      const P = cache ? cache.length : 0;
      const S = P + T;
      let keys = qkv, kOff = r0 * C3 + C, vals = qkv, vOff = r0 * C3 + 2 * C, ld = C3;
      if (cache) {
        // Append this call's keys and values; attend over [cache ; current] from the cache.
        keys = vals = cache.data; // [L, 2, cap, C]
        kOff = cache.keyOffset(l);
        vOff = cache.valueOffset(l);
        ld = C;
        for (let t = 0; t < T; t++) {
          const src = (r0 + t) * C3, kd = kOff + (P + t) * C, vd = vOff + (P + t) * C;
          for (let c = 0; c < C; c++) {
            keys[kd + c] = qkv[src + C + c];
            vals[vd + c] = qkv[src + 2 * C + c];
          }
        }
      }
      if (Tq === 0) continue; // keys and values only (the cache needs them)
      if (desc) {
        const d = s * 9;
        desc[d] = address(keys) + BigInt(kOff * 4);
        desc[d + 1] = address(vals) + BigInt(vOff * 4);
        desc[d + 2] = BigInt(ld);
        desc[d + 3] = BigInt((r0 + q0) * C3);
        desc[d + 4] = BigInt(plan.outRow0[s] * C);
        desc[d + 5] = BigInt(plan.probOff[s]);
        desc[d + 6] = BigInt(Tq);
        desc[d + 7] = BigInt(S);
        desc[d + 8] = BigInt(P + q0);
        continue;
      }
      const probs = saved ? saved.probs[l] : a.f32("scores", Tq * S);
      const qOff = (r0 + q0) * C3, yOff = plan.outRow0[s] * C;
      for (let h = 0; h < H; h++) {
        const pOff = saved ? plan.probOff[s] + h * Tq * S : 0;
        const hd = h * D;
        // scores [Tq, S] = q_h [Tq, D] @ k_h^T [D, S] * scale
        g.sgemm(
          false,
          true,
          Tq,
          S,
          D,
          scale,
          qkv,
          qOff + hd,
          C3,
          keys,
          kOff + hd,
          ld,
          0,
          probs,
          pOff,
          S,
        );
        causalSoftmax(probs, pOff, Tq, S, P + q0);
        // y_h [Tq, D] = p [Tq, S] @ v_h [S, D]
        g.sgemm(false, false, Tq, D, S, 1, probs, pOff, S, vals, vOff + hd, ld, 0, y, yOff + hd, C);
      }
    }
    if (batched) batched.forward(seqs.length, desc!, H, D, qkv, C3, y, C, allProbs!, scale);
    this.#lap("attention");

    // The residual stream of the output rows: x itself, or the rows gathered.
    let xo = x;
    if (!plan.full) {
      xo = a.f32("xOut", M * C); // [M, C]
      for (let i = 0; i < M; i++) {
        xo.set(x.subarray(plan.rows[i] * C, (plan.rows[i] + 1) * C), i * C);
      }
    }
    lin.attnProj.forward(M, y, xo, { bias: true, accumulate: true });
    this.#lap("gemm.attnProj");

    // MLP: xo += act(LN2(xo) @ Wfc + bfc) @ Wproj + bproj.
    if (saved) k.layerNormTrain(xo, M, C, w.ln2G, w.ln2B, eps, xn, saved.ln2x[l], saved.ln2r[l]);
    else k.layerNorm(xo, M, C, w.ln2G, w.ln2B, eps, xn);
    this.#lap("layernorm");
    const hidden = a.f32("hidden", M * F); // [M, F]
    if (saved) {
      lin.fc.forward(M, xn, hidden, {});
      this.#lap("gemm.fc");
      k.biasActivationTrain(hidden, M, F, w.fcB, this.#act, saved.dact[l]);
    } else {
      lin.fc.forward(M, xn, hidden, { bias: true, act: this.#act });
      this.#lap("gemm.fc");
    }
    this.#lap("activation");
    lin.fcProj.forward(M, hidden, xo, { bias: true, accumulate: true });
    this.#lap("gemm.fcProj");
    return xo;
  }

  /**
   * Backward of one block: dOut [M, C] is d(loss)/d(block output rows); returns d/d(block input)
   * [N, C] (dOut itself, updated in place, for a full plan).
   */
  #blockBackward(
    l: number,
    dOut: Float32Array,
    N: number,
    seqs: SeqSpan[],
    starts: Int32Array,
    saved: Saved,
    plan: RowPlan,
  ): Float32Array {
    const { nEmbd: C, nHead: H, nInner: F } = this.config;
    const C3 = 3 * C, D = C / H, M = plan.M;
    const scale = 1 / Math.sqrt(D);
    const w = this.#w.layers[l], lin = this.#layers[l];
    const a = this.arena, g = this.ops.gemm, k = this.k;

    // MLP: the residual passes dOut through; the branch adds LN2'((dOut @ Wproj^T) * act') @ Wfc^T.
    const dh = a.f32("dHidden", M * F); // [M, F]
    lin.fcProj.backward(M, dOut, dh);
    this.#lap("back.gemm.fcProj");
    k.mulInPlace(dh, saved.dact[l], M * F);
    this.#lap("back.activation");
    const dxn = a.f32("dxn", N * C); // [N, C] (M rows used here)
    lin.fc.backward(M, dh, dxn);
    this.#lap("back.gemm.fc");
    k.layerNormBackward(dxn, saved.ln2x[l], saved.ln2r[l], M, C, w.ln2G, dOut);
    this.#lap("back.layernorm");

    // Attention branch: dY = dOut @ Wproj^T at the output rows.
    const dy = a.f32("dAttnOut", M * C); // [M, C]
    lin.attnProj.backward(M, dOut, dy);
    this.#lap("back.gemm.attnProj");
    const qkv = saved.qkv[l]; // [N, 3C]
    const probs = saved.probs[l];
    const dqkv = a.f32("dqkv", N * C3); // [N, 3C]
    const batched = this.ops.attention;
    const desc = batched ? new BigInt64Array(seqs.length * 9) : null;
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0, r0 = starts[s];
      // Rows whose queries were not computed get no query gradient.
      for (let t = 0; t < q0; t++) dqkv.fill(0, (r0 + t) * C3, (r0 + t) * C3 + C);
      if (T === 0) continue;
      if (Tq === 0) {
        for (let t = 0; t < T; t++) dqkv.fill(0, (r0 + t) * C3 + C, (r0 + t + 1) * C3);
        continue;
      }
      const qOff = (r0 + q0) * C3, k0 = r0 * C3 + C, v0 = r0 * C3 + 2 * C;
      const yOff = plan.outRow0[s] * C;
      if (desc) {
        const d = s * 9, base = address(qkv);
        desc[d] = base + BigInt(k0 * 4);
        desc[d + 1] = base + BigInt(v0 * 4);
        desc[d + 2] = BigInt(C3);
        desc[d + 3] = BigInt(qOff);
        desc[d + 4] = BigInt(yOff);
        desc[d + 5] = BigInt(plan.probOff[s]);
        desc[d + 6] = BigInt(Tq);
        desc[d + 7] = BigInt(T);
        desc[d + 8] = BigInt(q0);
        continue;
      }
      const dp = a.f32("dProbs", Tq * T); // [Tq, T]
      for (let h = 0; h < H; h++) {
        const pOff = plan.probOff[s] + h * Tq * T;
        const hd = h * D;
        // dP [Tq, T] = dY_h [Tq, D] @ V_h^T
        g.sgemm(false, true, Tq, T, D, 1, dy, yOff + hd, C, qkv, v0 + hd, C3, 0, dp, 0, T);
        // dV_h [T, D] = P^T @ dY_h
        g.sgemm(true, false, T, D, Tq, 1, probs, pOff, T, dy, yOff + hd, C, 0, dqkv, v0 + hd, C3);
        softmaxBackward(probs, pOff, dp, Tq, T); // dp now holds dS
        // dQ_h [Tq, D] = dS @ K_h * scale; dK_h [T, D] = dS^T @ Q_h * scale
        g.sgemm(false, false, Tq, D, T, scale, dp, 0, T, qkv, k0 + hd, C3, 0, dqkv, qOff + hd, C3);
        g.sgemm(true, false, T, D, Tq, scale, dp, 0, T, qkv, qOff + hd, C3, 0, dqkv, k0 + hd, C3);
      }
    }
    if (batched) {
      const dp = a.f32("dProbs", plan.probTotal);
      batched.backward(seqs.length, desc!, H, D, qkv, C3, dy, C, probs, dqkv, dp, scale);
    }
    this.#lap("back.attention");
    lin.qkv.backward(N, dqkv, dxn);
    this.#lap("back.gemm.qkv");

    // d(block input) = residual part (dOut at the output rows) + LN1 backward at every row.
    let dx = dOut;
    if (!plan.full) {
      dx = a.f32("dx", N * C).fill(0, 0, N * C); // [N, C]
      for (let i = 0; i < M; i++) {
        const src = i * C, dst = plan.rows[i] * C;
        for (let c = 0; c < C; c++) dx[dst + c] = dOut[src + c];
      }
    }
    k.layerNormBackward(dxn, saved.ln1x[l], saved.ln1r[l], N, C, w.ln1G, dx);
    this.#lap("back.layernorm");
    return dx;
  }
}
