/**
 * Llama-family blocks (Llama, SmolLM2, Qwen2) behind the same engine contract as GPT-2's, over
 * the same `EngineOps` (BLAS in the fast engine, oneDNN primitives in the oneDNN one): packed rows,
 * per-sequence causal attention against an optional KV cache, logits only where asked, and a
 * hand-written backward pass to the input embeddings only.
 *
 * A block (Hugging Face's LlamaDecoderLayer): x += o(attn(rope(q(n1)), rope(k(n1)), v(n1))) with
 * n1 = RMSNorm(x), grouped-query attention (head h reads key/value head h / (H / KVH)); then
 * x += down(silu(gate(n2)) * up(n2)) with n2 = RMSNorm(x). No position table: positions enter
 * through the rotation of queries and keys, and the KV cache stores rotated keys.
 *
 * Shapes: N packed rows, C = hidden, H query heads and KVH key/value heads of D = head_dim,
 * QW = H * D, KW = KVH * D, F = intermediate size, V = vocab. Weights are nn.Linear's [out, in].
 */
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
import type { LlamaConfig } from "../llama_config.ts";
import type { LlamaModel, LlamaWeights } from "../weights.ts";
import { FastEngineBase } from "./engine_base.ts";
import { causalSoftmax, softmaxBackward } from "./kernels.ts";
import { FastKvCache } from "./kv_cache.ts";
import { type FinalNorm, logitsAt, lossAt } from "./lm_head.ts";
import { ropeInvFreq, ropeTables } from "./llama_kernels.ts";
import type { EngineOps, FrozenLinear } from "./ops.ts";
import { makePlan, outRowOf, type RowPlan } from "../row_plan.ts";

interface LayerLinears {
  q: FrozenLinear; // [C] -> [QW] + bias (Qwen2)
  k: FrozenLinear; // [C] -> [KW] + bias
  v: FrozenLinear; // [C] -> [KW] + bias
  o: FrozenLinear; // [QW] -> [C]
  gate: FrozenLinear; // [C] -> [F]
  up: FrozenLinear; // [C] -> [F]
  down: FrozenLinear; // [F] -> [C]
}

/** Per-layer activations a training forward keeps for the backward pass. */
interface Saved {
  x1hat: Float32Array[]; // [N, C] input * rstd
  r1: Float32Array[]; // [N]
  q: Float32Array[]; // [N, QW] rotated
  k: Float32Array[]; // [N, KW] rotated
  v: Float32Array[]; // [N, KW]
  probs: Float32Array[]; // per sequence and query head: [Tq, T] at plan.probOff
  /** With batched attention: [N, 3 QW] queries and keys/values repeated per query head. */
  qkvx: Float32Array[];
  x2hat: Float32Array[]; // [M, C]
  r2: Float32Array[]; // [M]
  gate: Float32Array[]; // [M, F] pre-activation
  up: Float32Array[]; // [M, F]
}

/** Positions' rotation tables for one call. */
interface Rope {
  cos: Float32Array;
  sin: Float32Array;
}

/** RMSNorm, rotary positions and SwiGLU come from the base's row kernels (native with oneDNN). */
export class LlamaEngine extends FastEngineBase implements Engine {
  readonly config: LlamaConfig;
  readonly #w: LlamaWeights;
  readonly #layers: LayerLinears[];
  readonly #lmHead: FrozenLinear;
  readonly #finalNorm: FinalNorm; // model.norm
  readonly #invFreq: Float32Array;

  constructor(kind: string, model: LlamaModel, ops: EngineOps) {
    super(kind, model.weights.wte, ops);
    this.config = model.config;
    this.#w = model.weights;
    const { nEmbd: C, nInner: F, vocabSize: V, nHead: H, nKvHead: KVH, headDim: D } = this.config;
    const QW = H * D, KW = KVH * D;
    this.#layers = model.weights.layers.map((l) => ({
      q: ops.linear(l.q, C, QW, true, l.qB),
      k: ops.linear(l.k, C, KW, true, l.kB),
      v: ops.linear(l.v, C, KW, true, l.vB),
      o: ops.linear(l.o, QW, C, true, l.oB),
      gate: ops.linear(l.gate, C, F, true),
      up: ops.linear(l.up, C, F, true),
      down: ops.linear(l.down, F, C, true),
    }));
    this.#lmHead = ops.linear(model.weights.lmHead ?? model.weights.wte, C, V, true);
    const g = model.weights.norm, eps = this.config.rmsNormEps, k = this.k;
    this.#finalNorm = {
      forward: (x, rows, out, xhat, rstd) => k.rmsNorm(x, rows, C, g, eps, out, xhat, rstd),
      backward: (dy, xhat, rstd, rows, dx) => k.rmsNormBackward(dy, xhat, rstd, rows, C, g, dx),
    };
    this.#invFreq = ropeInvFreq(D, this.config.ropeTheta, this.config.ropeScaling);
  }

  newCache(): KvCache {
    this.checkLive();
    const { nLayer, nKvHead, headDim } = this.config;
    return new FastKvCache(this, nLayer, nKvHead * headDim);
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
    const rope = ropeTables(positions, this.#invFreq);
    let x = this.arena.f32("x", N * C);
    x.set(embeds.subarray(0, N * C));
    for (let l = 0; l < L; l++) {
      x = this.#block(l, x, N, seqs, starts, caches, null, l === L - 1 ? last : full, rope);
    }
    for (let s = 0; s < seqs.length; s++) caches[s]?.commit(seqs[s].length);

    const outRows = Int32Array.from(logitRows, (r) => outRowOf(last, seqs, starts, r));
    const logits = logitsAt(this.arena, this.#finalNorm, this.#lmHead, x, outRows, C, V);
    return { logits };
  }

  protected computeLoss(input: LossInput): LossOutput {
    this.checkLive();
    const { embeds, seqs, lossRows, targets } = input;
    const N = validateLoss(this.config, input);
    const { nEmbd: C, vocabSize: V, nLayer: L, nHead: H } = this.config;
    const { nKvHead: KVH, headDim: D, nInner: F } = this.config;
    const QW = H * D, KW = KVH * D;
    const positions = input.positions ?? defaultPositions(seqs);
    const starts = spanStarts(seqs);
    const a = this.arena;
    const full = makePlan(seqs, starts, N, H);
    const last = makePlan(seqs, starts, N, H, lossRows);
    const plans = Array.from({ length: L }, (_, l) => l === L - 1 ? last : full);
    const rope = ropeTables(positions, this.#invFreq);
    const saved: Saved = {
      x1hat: [],
      r1: [],
      q: [],
      k: [],
      v: [],
      probs: [],
      qkvx: [],
      x2hat: [],
      r2: [],
      gate: [],
      up: [],
    };
    for (let l = 0; l < L; l++) {
      const M = plans[l].M;
      saved.x1hat.push(a.f32(`x1hat.${l}`, N * C));
      saved.r1.push(a.f32(`r1.${l}`, N));
      saved.q.push(a.f32(`q.${l}`, N * QW));
      saved.k.push(a.f32(`k.${l}`, N * KW));
      saved.v.push(a.f32(`v.${l}`, N * KW));
      saved.probs.push(a.f32(`probs.${l}`, plans[l].probTotal));
      if (this.ops.attention) saved.qkvx.push(a.f32(`qkvx.${l}`, N * 3 * QW));
      saved.x2hat.push(a.f32(`x2hat.${l}`, M * C));
      saved.r2.push(a.f32(`r2.${l}`, M));
      saved.gate.push(a.f32(`gate.${l}`, M * F));
      saved.up.push(a.f32(`up.${l}`, M * F));
    }
    const noCaches = seqs.map(() => null);
    let x = a.f32("x", N * C);
    x.set(embeds.subarray(0, N * C));
    for (let l = 0; l < L; l++) {
      x = this.#block(l, x, N, seqs, starts, noCaches, saved, plans[l], rope);
    }

    const outRows = Int32Array.from(lossRows, (r) => outRowOf(last, seqs, starts, r));
    const { loss, dOut } = lossAt(a, this.#finalNorm, this.#lmHead, x, outRows, targets, {
      C,
      V,
      M: last.M,
    });
    let dx = dOut;
    for (let l = L - 1; l >= 0; l--) {
      dx = this.#blockBackward(l, dx, N, seqs, starts, saved, plans[l], rope);
    }
    return { loss, gradEmbeds: dx.slice(0, N * C) };
  }

  /**
   * One block on x [N, C]: a full plan updates x in place and returns it; a partial plan returns
   * the M output rows in a separate buffer. `saved` set means a training forward.
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
    rope: Rope,
  ): Float32Array {
    const { nEmbd: C, nHead: H, nKvHead: KVH, headDim: D, nInner: F, rmsNormEps: eps } =
      this.config;
    const QW = H * D, KW = KVH * D, M = plan.M;
    const w = this.#w.layers[l], lin = this.#layers[l];
    const a = this.arena;

    const xn = a.f32("xn", N * C); // [N, C]
    this.k.rmsNorm(x, N, C, w.inNorm, eps, xn, saved?.x1hat[l], saved?.r1[l]);
    const q = saved ? saved.q[l] : a.f32("q", N * QW);
    const k = saved ? saved.k[l] : a.f32("k", N * KW);
    const v = saved ? saved.v[l] : a.f32("v", N * KW);
    const bias = this.config.qkvBias;
    lin.q.forward(N, xn, q, { bias });
    lin.k.forward(N, xn, k, { bias });
    lin.v.forward(N, xn, v, { bias });
    this.k.applyRope(q, 0, QW, N, H, D, rope.cos, rope.sin, 0);
    this.k.applyRope(k, 0, KW, N, KVH, D, rope.cos, rope.sin, 0);

    const y = a.f32("attnOut", M * QW); // [M, QW]
    if (this.ops.attention) {
      this.#batchedAttention(l, q, k, v, y, N, seqs, starts, caches, saved, plan);
    } else {
      this.#headAttention(l, q, k, v, y, seqs, starts, caches, saved, plan);
    }

    let xo = x;
    if (!plan.full) {
      xo = a.f32("xOut", M * C);
      for (let i = 0; i < M; i++) {
        xo.set(x.subarray(plan.rows[i] * C, (plan.rows[i] + 1) * C), i * C);
      }
    }
    lin.o.forward(M, y, xo, { accumulate: true, bias: this.config.oBias });

    const xn2 = a.f32("xn2", M * C);
    this.k.rmsNorm(xo, M, C, w.postNorm, eps, xn2, saved?.x2hat[l], saved?.r2[l]);
    const gate = saved ? saved.gate[l] : a.f32("gate", M * F);
    const up = saved ? saved.up[l] : a.f32("up", M * F);
    lin.gate.forward(M, xn2, gate, {});
    lin.up.forward(M, xn2, up, {});
    const hidden = a.f32("hidden", M * F);
    this.k.swiglu(gate, up, M * F, hidden);
    lin.down.forward(M, hidden, xo, { accumulate: true });
    return xo;
  }

  /** Attention head by head through `gemm` (ops without a batched kernel: the fast engine). */
  #headAttention(
    l: number,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    y: Float32Array,
    seqs: SeqSpan[],
    starts: Int32Array,
    caches: (FastKvCache | null)[],
    saved: Saved | null,
    plan: RowPlan,
  ): void {
    const { nHead: H, nKvHead: KVH, headDim: D } = this.config;
    const QW = H * D, KW = KVH * D, G = H / KVH;
    const scale = 1 / Math.sqrt(D);
    const a = this.arena, g = this.ops.gemm;
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0;
      if (T === 0) continue;
      const r0 = starts[s], cache = caches[s];
      const P = cache ? cache.length : 0, S = P + T;
      let keys = k, kOff = r0 * KW, vals = v, vOff = r0 * KW;
      if (cache) {
        // Append this call's (rotated) keys and values; attend over [cache ; current].
        keys = vals = cache.data;
        kOff = cache.keyOffset(l);
        vOff = cache.valueOffset(l);
        keys.set(k.subarray(r0 * KW, (r0 + T) * KW), kOff + P * KW);
        vals.set(v.subarray(r0 * KW, (r0 + T) * KW), vOff + P * KW);
      }
      if (Tq === 0) continue;
      const probs = saved ? saved.probs[l] : a.f32("scores", Tq * S);
      const qOff = (r0 + q0) * QW, yOff = plan.outRow0[s] * QW;
      for (let h = 0; h < H; h++) {
        const pOff = saved ? plan.probOff[s] + h * Tq * S : 0;
        const hq = h * D, hk = Math.floor(h / G) * D;
        // scores [Tq, S] = q_h [Tq, D] @ k_(h/G)^T [D, S] * scale
        g.sgemm(
          false,
          true,
          Tq,
          S,
          D,
          scale,
          q,
          qOff + hq,
          QW,
          keys,
          kOff + hk,
          KW,
          0,
          probs,
          pOff,
          S,
        );
        causalSoftmax(probs, pOff, Tq, S, P + q0);
        // y_h [Tq, D] = p [Tq, S] @ v_(h/G) [S, D]
        g.sgemm(
          false,
          false,
          Tq,
          D,
          S,
          1,
          probs,
          pOff,
          S,
          vals,
          vOff + hk,
          KW,
          0,
          y,
          yOff + hq,
          QW,
        );
      }
    }
  }

  /** Backward of `#headAttention` (no caches): dq, dk, dv [N, *] from dy [M, QW]. */
  #headAttentionBackward(
    l: number,
    dy: Float32Array,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    seqs: SeqSpan[],
    starts: Int32Array,
    saved: Saved,
    plan: RowPlan,
  ): void {
    const { nHead: H, nKvHead: KVH, headDim: D } = this.config;
    const QW = H * D, KW = KVH * D, G = H / KVH;
    const scale = 1 / Math.sqrt(D);
    const a = this.arena, g = this.ops.gemm;
    const q = saved.q[l], k = saved.k[l], v = saved.v[l], probs = saved.probs[l];
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0, r0 = starts[s];
      if (T === 0 || Tq === 0) continue;
      const qOff = (r0 + q0) * QW, kvOff = r0 * KW, yOff = plan.outRow0[s] * QW;
      const dp = a.f32("dProbs", Tq * T);
      for (let h = 0; h < H; h++) {
        const pOff = plan.probOff[s] + h * Tq * T;
        const hq = h * D, hk = Math.floor(h / G) * D;
        // dP [Tq, T] = dY_h @ V_g^T; dV_g += P^T @ dY_h (the G heads of a group add up)
        g.sgemm(false, true, Tq, T, D, 1, dy, yOff + hq, QW, v, kvOff + hk, KW, 0, dp, 0, T);
        g.sgemm(
          true,
          false,
          T,
          D,
          Tq,
          1,
          probs,
          pOff,
          T,
          dy,
          yOff + hq,
          QW,
          1,
          dv,
          kvOff + hk,
          KW,
        );
        softmaxBackward(probs, pOff, dp, Tq, T); // dp now holds dS
        // dQ_h = dS @ K_g * scale; dK_g += dS^T @ Q_h * scale
        g.sgemm(false, false, Tq, D, T, scale, dp, 0, T, k, kvOff + hk, KW, 0, dq, qOff + hq, QW);
        g.sgemm(true, false, T, D, Tq, scale, dp, 0, T, q, qOff + hq, QW, 1, dk, kvOff + hk, KW);
      }
    }
  }

  /**
   * Attention through the ops' batched kernel (the oneDNN shim: every sequence and head in
   * parallel, softmax included). The kernel reads query head h's keys at head h, so each row's
   * key/value heads are repeated for the G query heads they serve (Hugging Face's repeat_kv) into
   * [N, 3 QW] rows beside the queries; a cached sequence's past rows are repeated from its cache
   * into scratch.
   */
  #batchedAttention(
    l: number,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    y: Float32Array,
    N: number,
    seqs: SeqSpan[],
    starts: Int32Array,
    caches: (FastKvCache | null)[],
    saved: Saved | null,
    plan: RowPlan,
  ): void {
    const { nHead: H, nKvHead: KVH, headDim: D } = this.config;
    const QW = H * D, KW = KVH * D, X = 3 * QW;
    const a = this.arena;
    const qkvx = saved ? saved.qkvx[l] : a.f32("qkvx", N * X);
    for (let r = 0; r < N; r++) {
      qkvx.set(q.subarray(r * QW, (r + 1) * QW), r * X);
      repeatKv(k, r * KW, qkvx, r * X + QW, H, KVH, D);
      repeatKv(v, r * KW, qkvx, r * X + 2 * QW, H, KVH, D);
    }
    // Cached sequences attend over their past rows too: repeated into scratch, [S, 2 QW] each.
    let past = 0;
    for (let s = 0; s < seqs.length; s++) {
      if (caches[s]) past += (caches[s]!.length + seqs[s].length) * 2 * QW;
    }
    const kvx = past > 0 ? a.f32("kvx", past) : null;
    const desc = new BigInt64Array(seqs.length * 9);
    const base = address(qkvx);
    let at = 0;
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0, r0 = starts[s];
      const cache = caches[s], P = cache ? cache.length : 0, S = P + T;
      let kAddr = base + BigInt((r0 * X + QW) * 4), ld = X;
      if (cache && kvx) {
        const kc = cache.data, kOff = cache.keyOffset(l), vOff = cache.valueOffset(l);
        // Append this call's (rotated) keys and values, then repeat rows 0..S-1.
        kc.set(k.subarray(r0 * KW, (r0 + T) * KW), kOff + P * KW);
        kc.set(v.subarray(r0 * KW, (r0 + T) * KW), vOff + P * KW);
        for (let t = 0; t < S; t++) {
          repeatKv(kc, kOff + t * KW, kvx, at + t * 2 * QW, H, KVH, D);
          repeatKv(kc, vOff + t * KW, kvx, at + t * 2 * QW + QW, H, KVH, D);
        }
        kAddr = address(kvx) + BigInt(at * 4);
        ld = 2 * QW;
        at += S * 2 * QW;
      }
      // Values follow keys by QW in both layouts.
      describe(desc, s, kAddr, kAddr + BigInt(QW * 4), ld, (r0 + q0) * X, plan, QW, Tq, S, P);
    }
    const probs = saved ? saved.probs[l] : a.f32("scores", plan.probTotal);
    this.ops.attention!.forward(seqs.length, desc, H, D, qkvx, X, y, QW, probs, 1 / Math.sqrt(D));
  }

  /** Backward of `#batchedAttention` (no caches): dq, dk, dv [N, *] from dy [M, QW]. */
  #batchedAttentionBackward(
    l: number,
    dy: Float32Array,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    N: number,
    seqs: SeqSpan[],
    starts: Int32Array,
    saved: Saved,
    plan: RowPlan,
  ): void {
    const { nHead: H, nKvHead: KVH, headDim: D } = this.config;
    const QW = H * D, KW = KVH * D, X = 3 * QW, G = H / KVH;
    const a = this.arena;
    const qkvx = saved.qkvx[l];
    const base = address(qkvx);
    const desc = new BigInt64Array(seqs.length * 9);
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, Tq = T - plan.qStart[s], r0 = starts[s];
      const kAddr = base + BigInt((r0 * X + QW) * 4);
      describe(
        desc,
        s,
        kAddr,
        kAddr + BigInt(QW * 4),
        X,
        (r0 + plan.qStart[s]) * X,
        plan,
        QW,
        Tq,
        T,
        0,
      );
    }
    // Rows the kernel does not write (no query computed, or a sequence with none) stay zero.
    const dqkvx = a.f32("dqkvx", N * X).fill(0, 0, N * X);
    const dp = a.f32("dProbs", plan.probTotal);
    this.ops.attention!.backward(
      seqs.length,
      desc,
      H,
      D,
      qkvx,
      X,
      dy,
      QW,
      saved.probs[l],
      dqkvx,
      dp,
      1 / Math.sqrt(D),
    );
    // Queries as they are; a key/value head's gradient is the sum over the heads it served.
    for (let r = 0; r < N; r++) {
      dq.set(dqkvx.subarray(r * X, r * X + QW), r * QW);
      for (let g = 0; g < KVH; g++) {
        for (let c = 0; c < D; c++) {
          let sk = 0, sv = 0;
          for (let j = 0; j < G; j++) {
            const o = r * X + QW + (g * G + j) * D + c;
            sk += dqkvx[o];
            sv += dqkvx[o + QW];
          }
          dk[r * KW + g * D + c] = sk;
          dv[r * KW + g * D + c] = sv;
        }
      }
    }
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
    rope: Rope,
  ): Float32Array {
    const { nEmbd: C, nHead: H, nKvHead: KVH, headDim: D, nInner: F } = this.config;
    const QW = H * D, KW = KVH * D, M = plan.M;
    const w = this.#w.layers[l], lin = this.#layers[l];
    const a = this.arena;

    // MLP: the residual passes dOut through; the branch adds RMSNorm'(gate^T dg + up^T du).
    const dh = a.f32("dHidden", M * F);
    lin.down.backward(M, dOut, dh);
    // The saved gate and up become dgate and dup (each layer's are used once).
    const dgate = saved.gate[l], dup = saved.up[l];
    this.k.swigluBackward(dh, dgate, dup, M * F);
    const dxn = a.f32("dxn", N * C);
    const tmp = a.f32("dxnPart", N * C);
    lin.gate.backward(M, dgate, dxn);
    lin.up.backward(M, dup, tmp);
    for (let i = 0; i < M * C; i++) dxn[i] += tmp[i];
    this.k.rmsNormBackward(dxn, saved.x2hat[l], saved.r2[l], M, C, w.postNorm, dOut);

    // Attention: dY = dOut @ Wo at the output rows, then per sequence and query head.
    const dy = a.f32("dAttnOut", M * QW);
    lin.o.backward(M, dOut, dy);
    const dq = a.f32("dq", N * QW).fill(0, 0, N * QW);
    const dk = a.f32("dk", N * KW).fill(0, 0, N * KW);
    const dv = a.f32("dv", N * KW).fill(0, 0, N * KW);
    if (this.ops.attention) {
      this.#batchedAttentionBackward(l, dy, dq, dk, dv, N, seqs, starts, saved, plan);
    } else {
      this.#headAttentionBackward(l, dy, dq, dk, dv, seqs, starts, saved, plan);
    }
    // Through the rotation (its transpose), then the three projections.
    this.k.applyRope(dq, 0, QW, N, H, D, rope.cos, rope.sin, 0, true);
    this.k.applyRope(dk, 0, KW, N, KVH, D, rope.cos, rope.sin, 0, true);
    lin.q.backward(N, dq, dxn);
    lin.k.backward(N, dk, tmp);
    for (let i = 0; i < N * C; i++) dxn[i] += tmp[i];
    lin.v.backward(N, dv, tmp);
    for (let i = 0; i < N * C; i++) dxn[i] += tmp[i];

    let dx = dOut;
    if (!plan.full) {
      dx = a.f32("dx", N * C).fill(0, 0, N * C);
      for (let i = 0; i < M; i++) {
        dx.set(dOut.subarray(i * C, (i + 1) * C), plan.rows[i] * C);
      }
    }
    this.k.rmsNormBackward(dxn, saved.x1hat[l], saved.r1[l], N, C, w.inNorm, dx);
    return dx;
  }
}

/** A typed array's address, for the batched kernel's descriptors. */
function address(a: Float32Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a as Float32Array<ArrayBuffer>)));
}

/** Copies one row's KVH heads of D from `src` into H heads of `dst`, each repeated H / KVH times. */
function repeatKv(
  src: Float32Array,
  from: number,
  dst: Float32Array,
  to: number,
  H: number,
  KVH: number,
  D: number,
): void {
  const G = H / KVH;
  for (let g = 0; g < KVH; g++) {
    const head = src.subarray(from + g * D, from + (g + 1) * D);
    for (let j = 0; j < G; j++) dst.set(head, to + (g * G + j) * D);
  }
}

/**
 * Sequence `s`'s descriptor for the batched kernel (`BatchedAttention`): key and value addresses
 * and their row stride, its first query's offset, its output and probability offsets, query and
 * key rows, and `past` cached rows before this call's first one.
 */
function describe(
  desc: BigInt64Array,
  s: number,
  kAddr: bigint,
  vAddr: bigint,
  ld: number,
  qOff: number,
  plan: RowPlan,
  QW: number,
  Tq: number,
  S: number,
  past: number,
): void {
  const d = s * 9;
  desc[d] = kAddr;
  desc[d + 1] = vAddr;
  desc[d + 2] = BigInt(ld);
  desc[d + 3] = BigInt(qOff);
  desc[d + 4] = BigInt(plan.outRow0[s] * QW);
  desc[d + 5] = BigInt(plan.probOff[s]);
  desc[d + 6] = BigInt(Tq);
  desc[d + 7] = BigInt(S);
  desc[d + 8] = BigInt(past + plan.qStart[s]);
}
