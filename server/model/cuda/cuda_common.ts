/**
 * What the two cuda engines (GPT-2's cuda_engine.ts, the Llama family's cuda_llama_engine.ts) do
 * alike on their device: products against stored weights, index uploads, one call at a time,
 * their own caches, the read-back of a call's outputs, and their life cycle (`CudaEngineBase`).
 */
import {
  embedRows,
  type ForwardInput,
  type ForwardOutput,
  type KvCache,
  type LossInput,
  type LossOutput,
  ownCaches,
  type SeqSpan,
} from "../engine.ts";
import type { Matrix } from "../half.ts";
import type { ModelConfig } from "../model_config.ts";
import type { CudaPrecision } from "./cuda_engine.ts";
import { DeviceArena } from "./device_arena.ts";
import { at, type Device, type DeviceBuffer, type DPtr, type MathMode } from "./device.ts";
import type { WeightDType } from "./device_weights.ts";
import { CudaKvCache } from "./kv_cache.ts";

/** The weights' dtype and the activation products' math of a precision setting. */
function precisionModes(precision: CudaPrecision): { dtype: WeightDType; math: MathMode } {
  const dtype: WeightDType = precision === "bf16" ? "bf16" : precision === "fp16" ? "f16" : "f32";
  return { dtype, math: precision === "fp32" ? "fp32" : "tf32" };
}

/**
 * C [m, n] = alpha * act [m, k] @ op(W) + beta * C, act f32 contiguous (lda = k), W stored in the
 * weights' dtype.
 */
export type WeightMatmul = (
  transW: boolean,
  m: number,
  n: number,
  k: number,
  act: DPtr,
  w: DPtr,
  ldw: number,
  beta: number,
  c: DPtr,
  ldc: number,
) => void;

/**
 * The engines' product against a weight matrix: with half weights the activation is first cast
 * to the weights' dtype (fp32 accumulation either way); f32 weights multiply in `math`.
 */
function weightMatmul(
  d: Device,
  arena: DeviceArena,
  dtype: WeightDType,
  math: MathMode,
): WeightMatmul {
  return (transW, m, n, k, act, w, ldw, beta, c, ldc) => {
    let a = act;
    if (dtype !== "f32" && m > 0) {
      a = at(arena.get("halfAct", dtype, m * k));
      d.kernels.convert(act, a, m * k);
    }
    d.gemm({
      transA: false,
      transB: transW,
      m,
      n,
      k,
      alpha: 1,
      a,
      lda: k,
      b: w,
      ldb: ldw,
      beta,
      c,
      ldc,
      math: dtype === "f32" ? math : "fp32",
    });
  };
}

/**
 * Index arrays on the device, all uploaded before any kernel is queued: cudaMemcpy from the
 * host waits for the queued work, so an upload between kernels would stall the pipeline.
 */
export function uploadIndices(
  arena: DeviceArena,
  named: Record<string, Int32Array>,
): Record<string, DPtr> {
  const out: Record<string, DPtr> = {};
  for (const [name, values] of Object.entries(named)) out[name] = at(arena.ints(name, values));
  return out;
}

/**
 * Runs engine calls one after another. Why: a call yields while the GPU works (synchronize),
 * and a second call queued meanwhile (serving while a job trains) would reuse the arena's
 * buffers, the outputs included, before the first has read them back.
 */
function serialQueue(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<void> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn);
    tail = run.then(() => {}, () => {});
    return run;
  };
}

/** A forward call's logits [R, V] read back after the queued work. */
async function readForward(
  d: Device,
  r: { out: DPtr; logits: number },
): Promise<ForwardOutput> {
  await d.synchronize();
  const host = new Float32Array(r.logits); // [R, V]
  d.download(r.out, host);
  return { logits: host };
}

/** A loss call's input gradient [N, C] and mean loss read back after the queued work. */
async function readLoss(
  d: Device,
  r: { grad: DPtr; n: number; losses: DPtr; rows: number },
): Promise<LossOutput> {
  await d.synchronize();
  const gradEmbeds = new Float32Array(r.n); // [N, C]
  d.download(r.grad, gradEmbeds);
  const perRow = new Float32Array(r.rows);
  d.download(r.losses, perRow);
  let total = 0;
  for (const l of perRow) total += l;
  return { loss: total / r.rows, gradEmbeds };
}

/** A row norm over [rows, C] on the device, with its training form and input gradient. */
export interface DeviceFinalNorm {
  /** out = norm(x); with xhat and rstd (non-null), keeps them for `backward`. */
  forward(x: DPtr, out: DPtr, xhat: DPtr | null, rstd: DPtr | null, rows: number): void;
  /** dx += d(norm)/dx applied to dy. */
  backward(dy: DPtr, xhat: DPtr, rstd: DPtr, dx: DPtr, rows: number): void;
}

/** What the engines' end needs: the device, its arena, the norm and the head's product. */
export interface DeviceHead {
  d: Device;
  arena: DeviceArena;
  norm: DeviceFinalNorm;
  mm: WeightMatmul;
  /** [V, C] in the weights' dtype (wte when tied). */
  lmHead: DPtr;
  C: number;
  V: number;
}

/** Logits [R, V] into the arena's "logits" at x's rows `outRows` (R of them, on the device). */
export function deviceLogitsAt(h: DeviceHead, x: DPtr, outRows: DPtr, R: number): DPtr {
  const { d, arena: a, C, V } = h;
  const logits = at(a.f32("logits", R * V)); // [R, V]
  if (R === 0) return logits;
  const rows = at(a.f32("final", R * C)); // [R, C]
  d.kernels.gatherRows(rows, x, outRows, R, C);
  const hf = at(a.f32("finalNorm", R * C)); // [R, C]
  h.norm.forward(rows, hf, null, null, R);
  h.mm(true, R, V, C, hf, h.lmHead, C, 0, logits, V);
  return logits;
}

/**
 * Per-row cross-entropy of `targets` at x's rows `outRows` (R of them), and the gradient with
 * respect to the last block's M output rows, summed where rows repeat.
 */
export function deviceLossAt(
  h: DeviceHead,
  x: DPtr,
  outRows: DPtr,
  targets: DPtr,
  R: number,
  M: number,
): { losses: DPtr; dOut: DeviceBuffer } {
  const { d, arena: a, C, V } = h;
  const k = d.kernels;
  const rows = at(a.f32("final", R * C)); // [R, C]
  k.gatherRows(rows, x, outRows, R, C);
  const hf = at(a.f32("finalNorm", R * C)); // [R, C]
  const fx = at(a.f32("finalXhat", R * C)); // [R, C]
  const fr = at(a.f32("finalRstd", R)); // [R]
  h.norm.forward(rows, hf, fx, fr, R);
  const logits = at(a.f32("logits", R * V)); // [R, V]
  h.mm(true, R, V, C, hf, h.lmHead, C, 0, logits, V);
  const losses = at(a.f32("losses", R)); // [R]
  k.crossEntropy(logits, targets, losses, R, V); // logits now hold dlogits

  const dhf = at(a.f32("dFinalNorm", R * C)); // [R, C] = dlogits [R, V] @ lmHead [V, C]
  h.mm(false, R, C, V, logits, h.lmHead, C, 0, dhf, C);
  const drows = at(a.f32("dFinal", R * C)); // [R, C]
  d.zero(drows, R * C);
  h.norm.backward(dhf, fx, fr, drows, R);
  const dOut = a.f32("dLastOut", M * C); // [M, C]
  d.zero(at(dOut), M * C);
  k.scatterAddRows(at(dOut), drows, outRows, R, C);
  return { losses, dOut };
}

/**
 * The cuda engines' common part: the device and its arena, the products against the weights, one
 * call at a time, cache ownership, the host copy of the token embeddings, and disposal. A subclass
 * uploads its weights, builds its blocks and computes `computeForward` / `computeLoss` (queued
 * device work whose outputs are read back here).
 */
export abstract class CudaEngineBase {
  readonly name: string;
  abstract readonly config: ModelConfig;
  protected readonly d: Device;
  protected readonly arena: DeviceArena;
  protected readonly dtype: WeightDType;
  /** Activation x activation products. */
  protected readonly math: MathMode;
  /** Products against the weights. */
  protected readonly mm: WeightMatmul;
  readonly #wte: Matrix; // host copy for embed(): [V, C]
  readonly #owned: boolean;
  readonly #serial = serialQueue();
  #disposed = false;

  constructor(wte: Matrix, device: Device, owned: boolean, precision: CudaPrecision) {
    this.#wte = wte;
    this.d = device;
    this.#owned = owned;
    this.arena = new DeviceArena(device);
    const { dtype, math } = precisionModes(precision);
    this.dtype = dtype;
    this.math = math;
    this.mm = weightMatmul(device, this.arena, dtype, math);
    this.name = `cuda(${device.name}, ${precision})`;
  }

  /** Between kernel launches the engine waits for the GPU on FFI's thread (ordinal 0). */
  get offThread(): boolean {
    return this.d.waitsOffThread;
  }

  embed(ids: ArrayLike<number>): Float32Array {
    return embedRows(this.#wte, this.config.nEmbd, ids);
  }

  abstract newCache(): KvCache;

  forkCache(cache: KvCache, rows?: number): KvCache {
    this.checkLive();
    return this.caches([{ length: 0, cache }])[0]!.fork(rows);
  }

  forward(input: ForwardInput): Promise<ForwardOutput> {
    return this.#serial(() => readForward(this.d, this.computeForward(input)));
  }

  lossAndGrad(input: LossInput): Promise<LossOutput> {
    return this.#serial(() => readLoss(this.d, this.computeLoss(input)));
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.arena.clear();
    for (const b of this.weightBuffers()) this.d.free(b);
    if (this.#owned) this.d.dispose();
  }

  /** Queues a forward call's work: its logits [R, V] at `out` once the device is done. */
  protected abstract computeForward(input: ForwardInput): { out: DPtr; logits: number };
  /** Queues a loss call's work: the input gradient [N, C] (n values) and the per-row losses. */
  protected abstract computeLoss(
    input: LossInput,
  ): { grad: DPtr; n: number; losses: DPtr; rows: number };
  /** The device buffers holding the weights, freed with the engine. */
  protected abstract weightBuffers(): readonly DeviceBuffer[];

  protected checkLive(): void {
    if (this.#disposed) throw new Error(`engine ${this.name} was disposed`);
  }

  /** The seqs' caches, checked to be this engine's (null where a seq has none). */
  protected caches(seqs: SeqSpan[]): (CudaKvCache | null)[] {
    return ownCaches(this, seqs, CudaKvCache);
  }

  /** The final norm and the head over this engine's device, arena and products. */
  protected deviceHead(lmHead: DPtr, norm: DeviceFinalNorm): DeviceHead {
    const { nEmbd: C, vocabSize: V } = this.config;
    return { d: this.d, arena: this.arena, mm: this.mm, lmHead, C, V, norm };
  }
}
