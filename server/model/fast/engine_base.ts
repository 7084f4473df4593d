/**
 * What the CPU engines over `EngineOps` (GPT-2's fast_engine.ts, the Llama family's
 * llama_engine.ts) share: their ops and row kernels, the scratch arena, cache ownership, the
 * token-embedding rows, settling a call as a promise, and their life cycle. A subclass builds its
 * blocks and computes `computeForward` / `computeLoss`.
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
  settled,
} from "../engine.ts";
import type { Matrix } from "../half.ts";
import type { ModelConfig } from "../model_config.ts";
import { Arena } from "./arena.ts";
import { FastKvCache } from "./kv_cache.ts";
import type { EngineOps, RowKernels } from "./ops.ts";

export abstract class FastEngineBase {
  readonly name: string;
  abstract readonly config: ModelConfig;
  protected readonly ops: EngineOps;
  /** The row kernels: the ops' own (native with oneDNN). */
  protected readonly k: RowKernels;
  protected readonly arena = new Arena();
  readonly #wte: Matrix;
  #disposed = false;

  /** `kind` names the engine (`fast`, `onednn`); the ops are disposed with it. */
  constructor(kind: string, wte: Matrix, ops: EngineOps) {
    this.#wte = wte;
    this.ops = ops;
    this.k = ops.kernels;
    this.name = `${kind}(${ops.name})`;
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
    return settled(() => this.computeForward(input));
  }

  lossAndGrad(input: LossInput): Promise<LossOutput> {
    return settled(() => this.computeLoss(input));
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.arena.clear();
    this.ops.dispose();
  }

  protected abstract computeForward(input: ForwardInput): ForwardOutput;
  protected abstract computeLoss(input: LossInput): LossOutput;

  /** Throws once the engine is disposed; every call starts with it. */
  protected checkLive(): void {
    if (this.#disposed) throw new Error(`engine ${this.name} was disposed`);
  }

  /** The seqs' caches, checked to be this engine's (null where a seq has none). */
  protected caches(seqs: SeqSpan[]): (FastKvCache | null)[] {
    return ownCaches(this, seqs, FastKvCache);
  }
}
