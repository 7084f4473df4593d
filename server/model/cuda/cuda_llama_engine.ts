/**
 * The cuda engine's Llama-family blocks (Llama, SmolLM2, Qwen2): fast/llama_engine.ts's algorithm
 * step for step, resident on the GPU as cuda_engine.ts runs GPT-2 (the same device, arena,
 * products against stored weights, one call at a time, KV cache in GPU memory). Packed rows,
 * per-sequence causal attention against an optional cache, logits only at the rows asked for, and
 * a hand-written backward pass to the input embeddings only.
 *
 * A block: x += o(attn(rope(q(n1)), rope(k(n1)), v(n1))) with n1 = RMSNorm(x), then
 * x += down(silu(gate(n2)) * up(n2)) with n2 = RMSNorm(x). The q, k and v projections are one
 * product into [N, QW + 2 KW] rows (device_weights.ts stacks their weights); the rotation tables
 * of the call's positions are computed on the host and uploaded with the indices. Grouped-query
 * attention reads key/value head g for query heads g * G .. g * G + G - 1 (G = H / KVH) without
 * repeating it: each attention product runs as G strided-batched GEMMs, the j-th over the KVH
 * groups' j-th query heads, and the key/value gradients of a group's G heads add up in place.
 *
 * Shapes: N packed rows, C = hidden, H query heads and KVH key/value heads of D = head_dim,
 * QW = H * D, KW = KVH * D, W3 = QW + 2 KW, F = intermediate size, V = vocab. Weights are
 * nn.Linear's [out, in], so a forward product multiplies by W^T and its backward by W.
 */
import {
  defaultPositions,
  type Engine,
  type ForwardInput,
  type KvCache,
  type LossInput,
  type SeqSpan,
  spanStarts,
  validateLoss,
  validatePacked,
} from "../engine.ts";
import { ropeInvFreq, ropeTables } from "../fast/llama_kernels.ts";
import type { LlamaConfig } from "../llama_config.ts";
import { makePlan, outRowOf, type RowPlan } from "../row_plan.ts";
import type { LlamaModel } from "../weights.ts";
import {
  CudaEngineBase,
  type DeviceHead,
  deviceLogitsAt,
  deviceLossAt,
  uploadIndices,
} from "./cuda_common.ts";
import type { CudaPrecision } from "./cuda_engine.ts";
import { at, type Device, type DeviceBuffer, type DPtr } from "./device.ts";
import { type DeviceLlamaWeights, uploadLlamaWeights } from "./device_weights.ts";
import { CudaKvCache } from "./kv_cache.ts";

/** Per-layer activations a training forward keeps for the backward pass (device buffers). */
interface Saved {
  x1hat: DeviceBuffer[]; // [N, C] input * rstd
  r1: DeviceBuffer[]; // [N]
  qkv: DeviceBuffer[]; // [N, W3] queries and keys rotated
  probs: DeviceBuffer[]; // per sequence s: H blocks [Tq_s, T_s] at plan.probOff[s]
  x2hat: DeviceBuffer[]; // [M, C]
  r2: DeviceBuffer[]; // [M]
  gate: DeviceBuffer[]; // [M, F] pre-activation
  up: DeviceBuffer[]; // [M, F]
}

/** The call's rotation tables on the device: cos and sin [N, D / 2], row r for packed row r. */
interface Rope {
  cos: DPtr;
  sin: DPtr;
}

export class CudaLlamaEngine extends CudaEngineBase implements Engine {
  readonly config: LlamaConfig;
  readonly #w: DeviceLlamaWeights;
  readonly #invFreq: Float32Array;
  /** The final norm and the head (cuda_common.ts). */
  readonly #head: DeviceHead;

  constructor(model: LlamaModel, device: Device, owned: boolean, precision: CudaPrecision) {
    super(model.weights.wte, device, owned, precision);
    this.config = model.config;
    const { headDim: D, ropeTheta, ropeScaling } = this.config;
    this.#invFreq = ropeInvFreq(D, ropeTheta, ropeScaling);
    this.#w = uploadLlamaWeights(device, model.weights, this.dtype);
    const k = device.kernels, g = this.#w.norm, eps = this.config.rmsNormEps;
    const C = this.config.nEmbd;
    this.#head = this.deviceHead(this.#w.lmHead, {
      forward: (x, out, xhat, rstd, rows) => k.rmsNorm(x, g, eps, out, xhat, rstd, rows, C),
      backward: (dy, xhat, rstd, dx, rows) => k.rmsNormBackward(dy, xhat, rstd, g, dx, rows, C),
    });
  }

  newCache(): KvCache {
    this.checkLive();
    const { nLayer, nKvHead, headDim } = this.config;
    return new CudaKvCache(this, this.d, nLayer, nKvHead * headDim);
  }

  protected weightBuffers(): readonly DeviceBuffer[] {
    return this.#w.buffers;
  }

  /**
   * The call's inputs on the device, all uploaded before any kernel is queued: the index arrays,
   * the rotation tables of `positions` and x [N, C] = embeds.
   */
  #upload(
    embeds: Float32Array,
    positions: Int32Array,
    N: number,
    named: Record<string, Int32Array>,
  ): { x: DeviceBuffer; idx: Record<string, DPtr>; rope: Rope } {
    const { nEmbd: C, headDim: D } = this.config;
    const a = this.arena, d = this.d;
    const idx = uploadIndices(a, named);
    const tables = ropeTables(positions.subarray(0, N), this.#invFreq);
    const cos = a.f32("ropeCos", N * (D / 2)), sin = a.f32("ropeSin", N * (D / 2));
    d.upload(at(cos), tables.cos);
    d.upload(at(sin), tables.sin);
    const x = a.f32("x", N * C); // [N, C]
    d.upload(at(x), embeds.subarray(0, N * C));
    return { x, idx, rope: { cos: at(cos), sin: at(sin) } };
  }

  protected computeForward(input: ForwardInput): { out: DPtr; logits: number } {
    this.checkLive();
    const { embeds, seqs, logitRows } = input;
    const N = validatePacked(this.config, embeds, seqs, input.positions, logitRows, "logitRows");
    const { vocabSize: V, nLayer: L, nHead: H } = this.config;
    const caches = this.caches(seqs);
    const positions = input.positions ?? defaultPositions(seqs);
    for (let s = 0; s < seqs.length; s++) caches[s]?.reserve(seqs[s].length);
    const starts = spanStarts(seqs);
    const full = makePlan(seqs, starts, N, H);
    const last = makePlan(seqs, starts, N, H, logitRows);
    const R = logitRows.length;
    if (N === 0) return { out: at(this.arena.f32("logits", R * V)), logits: R * V };
    const outRows = Int32Array.from(logitRows, (r) => outRowOf(last, seqs, starts, r));
    const up = this.#upload(embeds, positions, N, { planRows: last.rows, outRows });
    let x = up.x;
    for (let l = 0; l < L; l++) {
      const plan = l === L - 1 ? last : full;
      x = this.#block(l, x, N, seqs, starts, caches, null, plan, up.idx.planRows, up.rope);
    }
    for (let s = 0; s < seqs.length; s++) caches[s]?.commit(seqs[s].length);

    return { out: deviceLogitsAt(this.#head, at(x), up.idx.outRows, R), logits: R * V };
  }

  protected computeLoss(input: LossInput): { grad: DPtr; n: number; losses: DPtr; rows: number } {
    this.checkLive();
    const { embeds, seqs, lossRows, targets } = input;
    const N = validateLoss(this.config, input);
    const { nEmbd: C, nLayer: L, nHead: H } = this.config;
    const { nKvHead: KVH, headDim: D, nInner: F } = this.config;
    const W3 = (H + 2 * KVH) * D;
    const positions = input.positions ?? defaultPositions(seqs);
    const starts = spanStarts(seqs);
    const a = this.arena;
    const full = makePlan(seqs, starts, N, H);
    const last = makePlan(seqs, starts, N, H, lossRows);
    const plans = Array.from({ length: L }, (_, l) => l === L - 1 ? last : full);

    const saved: Saved = {
      x1hat: [],
      r1: [],
      qkv: [],
      probs: [],
      x2hat: [],
      r2: [],
      gate: [],
      up: [],
    };
    for (let l = 0; l < L; l++) {
      const M = plans[l].M;
      saved.x1hat.push(a.f32(`x1hat.${l}`, N * C));
      saved.r1.push(a.f32(`r1.${l}`, N));
      saved.qkv.push(a.f32(`qkv.${l}`, N * W3));
      saved.probs.push(a.f32(`probs.${l}`, plans[l].probTotal));
      saved.x2hat.push(a.f32(`x2hat.${l}`, M * C));
      saved.r2.push(a.f32(`r2.${l}`, M));
      saved.gate.push(a.f32(`gate.${l}`, M * F));
      saved.up.push(a.f32(`up.${l}`, M * F));
    }
    const noCaches = seqs.map(() => null);

    // Forward, keeping what backward needs.
    const up = this.#upload(embeds, positions, N, {
      planRows: last.rows,
      outRows: Int32Array.from(lossRows, (r) => outRowOf(last, seqs, starts, r)),
      targets,
    });
    const idx = up.idx;
    let x = up.x;
    for (let l = 0; l < L; l++) {
      x = this.#block(l, x, N, seqs, starts, noCaches, saved, plans[l], idx.planRows, up.rope);
    }

    // Final norm, logits at the loss rows only, loss and its gradient, back to the last block.
    const R = lossRows.length;
    const { losses, dOut } = deviceLossAt(this.#head, at(x), idx.outRows, idx.targets, R, last.M);

    let dx = dOut;
    for (let l = L - 1; l >= 0; l--) {
      dx = this.#blockBackward(l, dx, N, seqs, starts, saved, plans[l], idx.planRows, up.rope);
    }
    return { grad: at(dx), n: N * C, losses, rows: R };
  }

  /**
   * One block on x [N, C]. A full plan updates x in place and returns it; a partial plan returns
   * the M output rows in a separate buffer. `saved` set means a training forward.
   */
  #block(
    l: number,
    x: DeviceBuffer,
    N: number,
    seqs: SeqSpan[],
    starts: Int32Array,
    caches: (CudaKvCache | null)[],
    saved: Saved | null,
    plan: RowPlan,
    /** plan.rows on the device (partial plans). */
    planRows: DPtr,
    rope: Rope,
  ): DeviceBuffer {
    const { nEmbd: C, nHead: H, nKvHead: KVH, headDim: D, nInner: F, rmsNormEps: eps } =
      this.config;
    const QW = H * D, KW = KVH * D, W3 = QW + 2 * KW, G = H / KVH, M = plan.M;
    const scale = 1 / Math.sqrt(D);
    const w = this.#w.layers[l];
    const a = this.arena, k = this.d.kernels, d = this.d;

    // Queries, keys and values of every row in one product; queries and keys rotated (their
    // H + KVH heads lie side by side at the start of each row).
    const xn = a.f32("xn", N * C); // [N, C]
    k.rmsNorm(
      at(x),
      w.inNorm,
      eps,
      at(xn),
      saved ? at(saved.x1hat[l]) : null,
      saved ? at(saved.r1[l]) : null,
      N,
      C,
    );
    const qkv = saved ? saved.qkv[l] : a.f32("qkv", N * W3); // [N, W3]
    if (w.qkvB) k.fillBias(at(qkv), w.qkvB, N, W3);
    this.mm(true, N, W3, C, at(xn), w.qkv, C, w.qkvB ? 1 : 0, at(qkv), W3);
    k.rope(at(qkv), W3, rope.cos, rope.sin, N, H + KVH, D, false);

    const y = a.f32("attnOut", M * QW); // [M, QW]
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0;
      if (T === 0) continue;
      const r0 = starts[s];
      const cache = caches[s];
      const P = cache ? cache.length : 0;
      const S = P + T;
      let keys = qkv, kOff = r0 * W3 + QW, vals = qkv, vOff = r0 * W3 + QW + KW, ld = W3;
      if (cache) {
        // Append this call's (rotated) keys and values; attend over [cache ; current].
        keys = vals = cache.data; // [L, 2, cap, KW]
        kOff = cache.keyOffset(l);
        vOff = cache.valueOffset(l);
        ld = KW;
        k.copyRows(at(keys, kOff + P * KW), KW, at(qkv, r0 * W3 + QW), W3, T, KW);
        k.copyRows(at(vals, vOff + P * KW), KW, at(qkv, r0 * W3 + QW + KW), W3, T, KW);
      }
      if (Tq === 0) continue; // keys and values only (the cache needs them)
      const probs = saved ? saved.probs[l] : a.f32("scores", H * Tq * S); // H x [Tq, S]
      const pOff = saved ? plan.probOff[s] : 0;
      const qOff = (r0 + q0) * W3, yOff = plan.outRow0[s] * QW;
      // Head h = g * G + j: its query at h * D, its key/value head at g * D, its block at h.
      for (let j = 0; j < G; j++) {
        // scores_h [Tq, S] = q_h [Tq, D] @ k_g^T [D, S] * scale, over the groups g
        d.gemm({
          transA: false,
          transB: true,
          m: Tq,
          n: S,
          k: D,
          alpha: scale,
          a: at(qkv, qOff + j * D),
          lda: W3,
          strideA: G * D,
          b: at(keys, kOff),
          ldb: ld,
          strideB: D,
          beta: 0,
          c: at(probs, pOff + j * Tq * S),
          ldc: S,
          strideC: G * Tq * S,
          batch: KVH,
          math: this.math,
        });
      }
      k.causalSoftmax(at(probs, pOff), Tq, S, P + q0, H);
      for (let j = 0; j < G; j++) {
        // y_h [Tq, D] = p_h [Tq, S] @ v_g [S, D]
        d.gemm({
          transA: false,
          transB: false,
          m: Tq,
          n: D,
          k: S,
          alpha: 1,
          a: at(probs, pOff + j * Tq * S),
          lda: S,
          strideA: G * Tq * S,
          b: at(vals, vOff),
          ldb: ld,
          strideB: D,
          beta: 0,
          c: at(y, yOff + j * D),
          ldc: QW,
          strideC: G * D,
          batch: KVH,
          math: this.math,
        });
      }
    }

    // The residual stream of the output rows: x itself, or the rows gathered.
    let xo = x;
    if (!plan.full) {
      xo = a.f32("xOut", M * C); // [M, C]
      k.gatherRows(at(xo), at(x), planRows, M, C);
    }
    this.mm(true, M, C, QW, at(y), w.o, QW, 1, at(xo), C);
    if (w.oB) k.addBias(at(xo), w.oB, M, C, C);

    // MLP: xo += down(silu(gate(n2)) * up(n2)), n2 = RMSNorm(xo).
    k.rmsNorm(
      at(xo),
      w.postNorm,
      eps,
      at(xn),
      saved ? at(saved.x2hat[l]) : null,
      saved ? at(saved.r2[l]) : null,
      M,
      C,
    );
    const gate = saved ? saved.gate[l] : a.f32("gate", M * F); // [M, F]
    const up = saved ? saved.up[l] : a.f32("up", M * F); // [M, F]
    this.mm(true, M, F, C, at(xn), w.gate, C, 0, at(gate), F);
    this.mm(true, M, F, C, at(xn), w.up, C, 0, at(up), F);
    const hidden = a.f32("hidden", M * F); // [M, F]
    k.swiglu(at(gate), at(up), at(hidden), M * F);
    this.mm(true, M, C, F, at(hidden), w.down, F, 1, at(xo), C);
    return xo;
  }

  /**
   * Backward of one block: dOut [M, C] is d(loss)/d(block output rows); returns d/d(block input)
   * [N, C] (dOut itself, updated in place, for a full plan).
   */
  #blockBackward(
    l: number,
    dOut: DeviceBuffer,
    N: number,
    seqs: SeqSpan[],
    starts: Int32Array,
    saved: Saved,
    plan: RowPlan,
    /** plan.rows on the device (partial plans). */
    planRows: DPtr,
    rope: Rope,
  ): DeviceBuffer {
    const { nEmbd: C, nHead: H, nKvHead: KVH, headDim: D, nInner: F } = this.config;
    const QW = H * D, KW = KVH * D, W3 = QW + 2 * KW, G = H / KVH, M = plan.M;
    const scale = 1 / Math.sqrt(D);
    const w = this.#w.layers[l];
    const a = this.arena, k = this.d.kernels, d = this.d;

    // MLP: the residual passes dOut through; the branch adds RMSNorm'(dgate @ Wgate + dup @ Wup).
    const dh = a.f32("dHidden", M * F); // [M, F] = dOut @ Wdown
    this.mm(false, M, F, C, at(dOut), w.down, F, 0, at(dh), F);
    // The saved gate and up become dgate and dup (each layer's are used once).
    const dgate = saved.gate[l], dup = saved.up[l];
    k.swigluBackward(at(dh), at(dgate), at(dup), M * F);
    const dxn = a.f32("dxn", N * C); // [N, C] (M rows used here)
    this.mm(false, M, C, F, at(dgate), w.gate, C, 0, at(dxn), C);
    this.mm(false, M, C, F, at(dup), w.up, C, 1, at(dxn), C);
    k.rmsNormBackward(at(dxn), at(saved.x2hat[l]), at(saved.r2[l]), w.postNorm, at(dOut), M, C);

    // Attention branch: dY = dOut @ Wo at the output rows.
    const dy = a.f32("dAttnOut", M * QW); // [M, QW]
    this.mm(false, M, QW, C, at(dOut), w.o, QW, 0, at(dy), QW);
    const qkv = saved.qkv[l]; // [N, W3]
    const probs = saved.probs[l];
    const dqkv = a.f32("dqkv", N * W3); // [N, W3]
    // Rows whose queries were not computed get no query gradient; empty spans none at all. The
    // key/value gradients of a group's G query heads add up here (beta 1).
    d.zero(at(dqkv), N * W3);
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0, r0 = starts[s];
      if (T === 0 || Tq === 0) continue;
      const dp = a.f32("dProbs", H * Tq * T); // H x [Tq, T]
      const pOff = plan.probOff[s];
      const qOff = (r0 + q0) * W3, k0 = r0 * W3 + QW, v0 = k0 + KW;
      const yOff = plan.outRow0[s] * QW;
      const grouped = { batch: KVH, math: this.math };
      for (let j = 0; j < G; j++) {
        // dP_h [Tq, T] = dY_h [Tq, D] @ V_g^T
        d.gemm({
          ...grouped,
          transA: false,
          transB: true,
          m: Tq,
          n: T,
          k: D,
          alpha: 1,
          a: at(dy, yOff + j * D),
          lda: QW,
          strideA: G * D,
          b: at(qkv, v0),
          ldb: W3,
          strideB: D,
          beta: 0,
          c: at(dp, j * Tq * T),
          ldc: T,
          strideC: G * Tq * T,
        });
        // dV_g [T, D] += P_h^T @ dY_h
        d.gemm({
          ...grouped,
          transA: true,
          transB: false,
          m: T,
          n: D,
          k: Tq,
          alpha: 1,
          a: at(probs, pOff + j * Tq * T),
          lda: T,
          strideA: G * Tq * T,
          b: at(dy, yOff + j * D),
          ldb: QW,
          strideB: G * D,
          beta: 1,
          c: at(dqkv, v0),
          ldc: W3,
          strideC: D,
        });
      }
      k.softmaxBackward(at(probs, pOff), at(dp), Tq, T, H); // dp now holds dS
      for (let j = 0; j < G; j++) {
        // dQ_h [Tq, D] = dS_h @ K_g * scale
        d.gemm({
          ...grouped,
          transA: false,
          transB: false,
          m: Tq,
          n: D,
          k: T,
          alpha: scale,
          a: at(dp, j * Tq * T),
          lda: T,
          strideA: G * Tq * T,
          b: at(qkv, k0),
          ldb: W3,
          strideB: D,
          beta: 0,
          c: at(dqkv, qOff + j * D),
          ldc: W3,
          strideC: G * D,
        });
        // dK_g [T, D] += dS_h^T @ Q_h * scale
        d.gemm({
          ...grouped,
          transA: true,
          transB: false,
          m: T,
          n: D,
          k: Tq,
          alpha: scale,
          a: at(dp, j * Tq * T),
          lda: T,
          strideA: G * Tq * T,
          b: at(qkv, qOff + j * D),
          ldb: W3,
          strideB: G * D,
          beta: 1,
          c: at(dqkv, k0),
          ldc: W3,
          strideC: D,
        });
      }
    }
    // Through the rotation (its transpose), then the stacked projections in one product.
    k.rope(at(dqkv), W3, rope.cos, rope.sin, N, H + KVH, D, true);
    this.mm(false, N, C, W3, at(dqkv), w.qkv, C, 0, at(dxn), C);

    // d(block input) = residual part (dOut at the output rows) + RMSNorm backward at every row.
    let dx = dOut;
    if (!plan.full) {
      dx = a.f32("dx", N * C); // [N, C]
      d.zero(at(dx), N * C);
      k.scatterAddRows(at(dx), at(dOut), planRows, M, C);
    }
    k.rmsNormBackward(at(dxn), at(saved.x1hat[l]), at(saved.r1[l]), w.inNorm, at(dx), N, C);
    return dx;
  }
}
