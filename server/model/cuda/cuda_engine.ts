/**
 * The cuda engine: GPT-2 resident on an NVIDIA GPU behind the engine contract (engine.ts). The
 * same algorithm as the fast CPU engine (fast/fast_engine.ts), step for step: packed rows,
 * per-sequence causal attention against an optional KV cache (kept in GPU memory), logits only at
 * the rows asked for, and a hand-written backward pass to the input embeddings only. Matrix
 * products are cuBLAS strided-batched GEMMs (attention batches a sequence's heads); everything
 * else is kernels.cu. Only the input embeddings, row indices and the outputs cross the bus.
 *
 * Shapes: N packed rows, C = n_embd, H heads of D = C / H, F = n_inner, V = vocab.
 *
 * Precision (`precision`, or CUDA_PRECISION): "fp32" (default; exact fp32 products, the reference
 * tolerances hold), "tf32" (fp32 storage, TF32 tensor-core products), "bf16" / "fp16" (weight
 * matrices stored in half precision, activations cast to it for the products, fp32 accumulation
 * and fp32 everywhere else; attention products in TF32).
 */
import type { Gpt2Config } from "../gpt2_config.ts";
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
import { makePlan, outRowOf, type RowPlan } from "../row_plan.ts";
import { type Gpt2Model, isLlama, type LoadedModel } from "../weights.ts";
import { openCudaDevice } from "./cuda_device.ts";
import { ACTIVATION_CODE, at, type Device, type DeviceBuffer, type DPtr } from "./device.ts";
import { type DeviceWeights, uploadWeights } from "./device_weights.ts";
import { CudaKvCache } from "./kv_cache.ts";
import {
  CudaEngineBase,
  type DeviceHead,
  deviceLogitsAt,
  deviceLossAt,
  uploadIndices,
} from "./cuda_common.ts";
import { CudaLlamaEngine } from "./cuda_llama_engine.ts";

export type CudaPrecision = "fp32" | "tf32" | "bf16" | "fp16";
export const CUDA_PRECISIONS: readonly CudaPrecision[] = ["fp32", "tf32", "bf16", "fp16"];

export interface CudaEngineOptions {
  /** Default: CUDA_PRECISION, else "fp32". */
  precision?: CudaPrecision;
  /**
   * The device to run on; default `openCudaDevice()` (which fails saying what is missing). Tests
   * pass the CPU emulation (testing/emulated_cuda_device.ts) to run this engine's code anywhere.
   */
  device?: Device;
}

/**
 * Builds the cuda engine: opens the GPU and uploads the weights once. A Llama-family checkpoint
 * gets the Llama blocks (cuda_llama_engine.ts) over the same device code.
 */
export function createCudaEngine(model: LoadedModel, opts: CudaEngineOptions = {}): Engine {
  const precision = opts.precision ?? precisionFromEnv();
  if (!CUDA_PRECISIONS.includes(precision)) {
    throw new RangeError(
      `precision must be one of ${CUDA_PRECISIONS.join(", ")}: found ${JSON.stringify(precision)}`,
    );
  }
  const owned = !opts.device;
  const device = opts.device ?? openCudaDevice();
  try {
    if (isLlama(model)) return new CudaLlamaEngine(model, device, owned, precision);
    return new CudaEngine(model, device, owned, precision);
  } catch (e) {
    if (owned) device.dispose();
    throw e;
  }
}

function precisionFromEnv(): CudaPrecision {
  let v: string | undefined;
  try {
    v = Deno.env.get("CUDA_PRECISION");
  } catch {
    v = undefined;
  }
  return (v || "fp32") as CudaPrecision;
}

/** Per-layer activations kept by a training forward for the backward pass (device buffers). */
interface Saved {
  ln1x: DeviceBuffer[]; // [N, C] normalised LN1 input
  ln1r: DeviceBuffer[]; // [N]
  qkv: DeviceBuffer[]; // [N, 3C]
  probs: DeviceBuffer[]; // per sequence s: H blocks [Tq_s, T_s] at plan.probOff[s]
  ln2x: DeviceBuffer[]; // [M, C]
  ln2r: DeviceBuffer[]; // [M]
  dact: DeviceBuffer[]; // [M, F]
}

class CudaEngine extends CudaEngineBase implements Engine {
  readonly config: Gpt2Config;
  readonly #w: DeviceWeights;
  readonly #act: number;
  /** The final norm and the head (cuda_common.ts). */
  readonly #head: DeviceHead;

  constructor(model: Gpt2Model, device: Device, owned: boolean, precision: CudaPrecision) {
    super(model.weights.wte, device, owned, precision);
    this.config = model.config;
    this.#act = ACTIVATION_CODE[model.config.activation];
    this.#w = uploadWeights(device, model.weights, this.dtype);
    const k = device.kernels, { lnFG: g, lnFB: b } = this.#w, eps = this.config.layerNormEpsilon;
    const C = this.config.nEmbd;
    this.#head = this.deviceHead(this.#w.lmHead, {
      forward: (x, out, xhat, rstd, rows) => k.layerNorm(x, g, b, eps, out, xhat, rstd, rows, C),
      backward: (dy, xhat, rstd, dx, rows) => k.layerNormBackward(dy, xhat, rstd, g, dx, rows, C),
    });
  }

  newCache(): KvCache {
    this.checkLive();
    return new CudaKvCache(this, this.d, this.config.nLayer, this.config.nEmbd);
  }

  protected weightBuffers(): readonly DeviceBuffer[] {
    return this.#w.buffers;
  }

  /** x [N, C] = embeds + wpe[positions], on the device. */
  #embedInput(embeds: Float32Array, positions: DPtr, N: number): DeviceBuffer {
    const C = this.config.nEmbd;
    const x = this.arena.f32("x", N * C); // [N, C]
    this.d.upload(at(x), embeds.subarray(0, N * C));
    this.d.kernels.addPositions(at(x), this.#w.wpe, positions, N, C);
    return x;
  }

  #indices(named: Record<string, Int32Array>): Record<string, DPtr> {
    return uploadIndices(this.arena, named);
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
    const idx = this.#indices({ positions, planRows: last.rows, outRows });
    let x = this.#embedInput(embeds, idx.positions, N);
    for (let l = 0; l < L; l++) {
      const plan = l === L - 1 ? last : full;
      x = this.#block(l, x, N, seqs, starts, caches, null, plan, idx.planRows);
    }
    for (let s = 0; s < seqs.length; s++) caches[s]?.commit(seqs[s].length);

    return { out: deviceLogitsAt(this.#head, at(x), idx.outRows, R), logits: R * V };
  }

  protected computeLoss(input: LossInput): { grad: DPtr; n: number; losses: DPtr; rows: number } {
    this.checkLive();
    const { embeds, seqs, lossRows, targets } = input;
    const N = validateLoss(this.config, input);
    const { nEmbd: C, nLayer: L, nHead: H } = this.config;
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
    const idx = this.#indices({
      positions,
      planRows: last.rows,
      outRows: Int32Array.from(lossRows, (r) => outRowOf(last, seqs, starts, r)),
      targets,
    });
    let x = this.#embedInput(embeds, idx.positions, N);
    for (let l = 0; l < L; l++) {
      x = this.#block(l, x, N, seqs, starts, noCaches, saved, plans[l], idx.planRows);
    }

    // Final norm, logits at the loss rows only, loss and its gradient, back to the last block.
    const R = lossRows.length;
    const { losses, dOut } = deviceLossAt(this.#head, at(x), idx.outRows, idx.targets, R, last.M);

    let dx = dOut;
    for (let l = L - 1; l >= 0; l--) {
      dx = this.#blockBackward(l, dx, N, seqs, starts, saved, plans[l], idx.planRows);
    }
    return { grad: at(dx), n: N * C, losses, rows: R };
  }

  /**
   * One transformer block on x [N, C]. A full plan updates x in place and returns it; a partial
   * plan returns the M output rows in a separate buffer. `saved` set means a training forward.
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
  ): DeviceBuffer {
    const { nEmbd: C, nHead: H, nInner: F, layerNormEpsilon: eps } = this.config;
    const C3 = 3 * C, D = C / H, M = plan.M;
    const scale = 1 / Math.sqrt(D);
    const w = this.#w.layers[l];
    const a = this.arena, k = this.d.kernels, d = this.d;

    // Keys and values of every row; queries of the plan's rows.
    const xn = a.f32("xn", N * C); // [N, C]
    k.layerNorm(
      at(x),
      w.ln1G,
      w.ln1B,
      eps,
      at(xn),
      saved ? at(saved.ln1x[l]) : null,
      saved ? at(saved.ln1r[l]) : null,
      N,
      C,
    );
    const qkv = saved ? saved.qkv[l] : a.f32("qkv", N * C3); // [N, 3C]
    k.fillBias(at(qkv), w.attnB, N, C3);
    this.mm(false, N, C3, C, at(xn), w.attnW, C3, 1, at(qkv), C3);

    const y = a.f32("attnOut", M * C); // [M, C]
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
        k.copyRows(at(keys, kOff + P * C), C, at(qkv, r0 * C3 + C), C3, T, C);
        k.copyRows(at(vals, vOff + P * C), C, at(qkv, r0 * C3 + 2 * C), C3, T, C);
      }
      if (Tq === 0) continue; // keys and values only (the cache needs them)
      const probs = saved ? saved.probs[l] : a.f32("scores", H * Tq * S); // H x [Tq, S]
      const pOff = saved ? plan.probOff[s] : 0;
      const qOff = (r0 + q0) * C3, yOff = plan.outRow0[s] * C;
      // scores_h [Tq, S] = q_h [Tq, D] @ k_h^T [D, S] * scale, all heads in one batch
      d.gemm({
        transA: false,
        transB: true,
        m: Tq,
        n: S,
        k: D,
        alpha: scale,
        a: at(qkv, qOff),
        lda: C3,
        strideA: D,
        b: at(keys, kOff),
        ldb: ld,
        strideB: D,
        beta: 0,
        c: at(probs, pOff),
        ldc: S,
        strideC: Tq * S,
        batch: H,
        math: this.math,
      });
      k.causalSoftmax(at(probs, pOff), Tq, S, P + q0, H);
      // y_h [Tq, D] = p_h [Tq, S] @ v_h [S, D]
      d.gemm({
        transA: false,
        transB: false,
        m: Tq,
        n: D,
        k: S,
        alpha: 1,
        a: at(probs, pOff),
        lda: S,
        strideA: Tq * S,
        b: at(vals, vOff),
        ldb: ld,
        strideB: D,
        beta: 0,
        c: at(y, yOff),
        ldc: C,
        strideC: D,
        batch: H,
        math: this.math,
      });
    }

    // The residual stream of the output rows: x itself, or the rows gathered.
    let xo = x;
    if (!plan.full) {
      xo = a.f32("xOut", M * C); // [M, C]
      k.gatherRows(at(xo), at(x), planRows, M, C);
    }
    this.mm(false, M, C, C, at(y), w.attnProjW, C, 1, at(xo), C);
    k.addBias(at(xo), w.attnProjB, M, C, C);

    // MLP: xo += act(LN2(xo) @ Wfc + bfc) @ Wproj + bproj.
    k.layerNorm(
      at(xo),
      w.ln2G,
      w.ln2B,
      eps,
      at(xn),
      saved ? at(saved.ln2x[l]) : null,
      saved ? at(saved.ln2r[l]) : null,
      M,
      C,
    );
    const hidden = a.f32("hidden", M * F); // [M, F]
    this.mm(false, M, F, C, at(xn), w.fcW, F, 0, at(hidden), F);
    k.biasActivation(at(hidden), w.fcB, M, F, this.#act, saved ? at(saved.dact[l]) : null);
    this.mm(false, M, C, F, at(hidden), w.fcProjW, C, 1, at(xo), C);
    k.addBias(at(xo), w.fcProjB, M, C, C);
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
  ): DeviceBuffer {
    const { nEmbd: C, nHead: H, nInner: F } = this.config;
    const C3 = 3 * C, D = C / H, M = plan.M;
    const scale = 1 / Math.sqrt(D);
    const w = this.#w.layers[l];
    const a = this.arena, k = this.d.kernels, d = this.d;

    // MLP: the residual passes dOut through; the branch adds LN2'((dOut @ Wproj^T) * act') @ Wfc^T.
    const dh = a.f32("dHidden", M * F); // [M, F]
    this.mm(true, M, F, C, at(dOut), w.fcProjW, C, 0, at(dh), F);
    k.mul(at(dh), at(saved.dact[l]), M * F);
    const dxn = a.f32("dxn", N * C); // [N, C] (M rows used here)
    this.mm(true, M, C, F, at(dh), w.fcW, F, 0, at(dxn), C);
    k.layerNormBackward(at(dxn), at(saved.ln2x[l]), at(saved.ln2r[l]), w.ln2G, at(dOut), M, C);

    // Attention branch: dY = dOut @ Wproj^T at the output rows.
    const dy = a.f32("dAttnOut", M * C); // [M, C]
    this.mm(true, M, C, C, at(dOut), w.attnProjW, C, 0, at(dy), C);
    const qkv = saved.qkv[l]; // [N, 3C]
    const probs = saved.probs[l];
    const dqkv = a.f32("dqkv", N * C3); // [N, 3C]
    // Rows whose queries were not computed get no query gradient; empty spans none at all.
    d.zero(at(dqkv), N * C3);
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s].length, q0 = plan.qStart[s], Tq = T - q0, r0 = starts[s];
      if (T === 0 || Tq === 0) continue;
      const dp = a.f32("dProbs", H * Tq * T); // H x [Tq, T]
      const pOff = plan.probOff[s];
      const qOff = (r0 + q0) * C3, k0 = r0 * C3 + C, v0 = r0 * C3 + 2 * C;
      const yOff = plan.outRow0[s] * C;
      const batched = {
        batch: H,
        math: this.math,
      };
      // dP_h [Tq, T] = dY_h [Tq, D] @ V_h^T
      d.gemm({
        ...batched,
        transA: false,
        transB: true,
        m: Tq,
        n: T,
        k: D,
        alpha: 1,
        a: at(dy, yOff),
        lda: C,
        strideA: D,
        b: at(qkv, v0),
        ldb: C3,
        strideB: D,
        beta: 0,
        c: at(dp),
        ldc: T,
        strideC: Tq * T,
      });
      // dV_h [T, D] = P_h^T @ dY_h
      d.gemm({
        ...batched,
        transA: true,
        transB: false,
        m: T,
        n: D,
        k: Tq,
        alpha: 1,
        a: at(probs, pOff),
        lda: T,
        strideA: Tq * T,
        b: at(dy, yOff),
        ldb: C,
        strideB: D,
        beta: 0,
        c: at(dqkv, v0),
        ldc: C3,
        strideC: D,
      });
      k.softmaxBackward(at(probs, pOff), at(dp), Tq, T, H); // dp now holds dS
      // dQ_h [Tq, D] = dS_h @ K_h * scale
      d.gemm({
        ...batched,
        transA: false,
        transB: false,
        m: Tq,
        n: D,
        k: T,
        alpha: scale,
        a: at(dp),
        lda: T,
        strideA: Tq * T,
        b: at(qkv, k0),
        ldb: C3,
        strideB: D,
        beta: 0,
        c: at(dqkv, qOff),
        ldc: C3,
        strideC: D,
      });
      // dK_h [T, D] = dS_h^T @ Q_h * scale
      d.gemm({
        ...batched,
        transA: true,
        transB: false,
        m: T,
        n: D,
        k: Tq,
        alpha: scale,
        a: at(dp),
        lda: T,
        strideA: Tq * T,
        b: at(qkv, qOff),
        ldb: C3,
        strideB: D,
        beta: 0,
        c: at(dqkv, k0),
        ldc: C3,
        strideC: D,
      });
    }
    this.mm(true, N, C, C3, at(dqkv), w.attnW, C3, 0, at(dxn), C);

    // d(block input) = residual part (dOut at the output rows) + LN1 backward at every row.
    let dx = dOut;
    if (!plan.full) {
      dx = a.f32("dx", N * C); // [N, C]
      d.zero(at(dx), N * C);
      k.scatterAddRows(at(dx), at(dOut), planRows, M, C);
    }
    k.layerNormBackward(at(dxn), at(saved.ln1x[l]), at(saved.ln1r[l]), w.ln1G, at(dx), N, C);
    return dx;
  }
}
