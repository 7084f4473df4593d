/**
 * An engine that computes in a Web Worker, so the event loop that serves RPCs stays free while
 * the model works: health checks, event streams and new requests are answered in milliseconds
 * while a training step or a full inference batch runs (in process, one engine call can hold the
 * loop for seconds).
 *
 * The weights are shared with the worker, not copied (`shared_weights.ts`: SharedArrayBuffers, or
 * the same memory-mapped file pages viewed at their address): the model sits in memory once. The KV caches live in the worker; the proxy's caches stand for them
 * by number. The engine inside is any backend `createEngine` builds.
 */
import {
  checkForkRows,
  embedRows,
  type Engine,
  type ForwardInput,
  type ForwardOutput,
  type KvCache,
} from "./engine.ts";
import type { LossInput, LossOutput } from "./engine.ts";
import type { RowPick, RowPicked } from "./decoding/pick.ts";
import { toWire, type WireWeights } from "./shared_weights.ts";
import type { LoadedModel } from "./weights.ts";

export interface WorkerEngineOptions {
  backend?: string;
  threads?: number;
}

/** A loaded model as sent to the worker. */
export type WireModel = Omit<LoadedModel, "weights"> & { weights: WireWeights };

/** Messages to the worker. */
export type ToWorker =
  | { op: "init"; model: WireModel; backend?: string; threads?: number }
  | { op: "forward"; id: number; input: WireForward }
  | { op: "forwardPicked"; id: number; input: WireForward; picks: readonly RowPick[] }
  | { op: "lossAndGrad"; id: number; input: WireLoss }
  | { op: "disposeCache"; cache: number }
  | { op: "forkCache"; from: number; to: number; rows: number }
  | { op: "dispose" };

/** Messages from the worker. */
export type FromWorker =
  | { op: "ready"; name: string }
  | {
    op: "result";
    id: number;
    logits?: Float32Array;
    picked?: RowPicked[];
    loss?: number;
    gradEmbeds?: Float32Array;
  }
  | { op: "error"; id: number; name: string; message: string }
  | { op: "fatal"; message: string };

export interface WireSeq {
  length: number;
  /** A cache number (the proxy's), or absent for none. */
  cache?: number;
}

export interface WireForward {
  embeds: Float32Array;
  seqs: WireSeq[];
  positions?: Int32Array;
  logitRows: Int32Array;
}

export interface WireLoss {
  embeds: Float32Array;
  seqs: WireSeq[];
  positions?: Int32Array;
  lossRows: Int32Array;
  targets: Int32Array;
}

class WorkerCache implements KvCache {
  length = 0;
  disposed = false;
  constructor(readonly id: number, private readonly onDispose: (id: number) => void) {}
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.onDispose(this.id);
  }
}

/** Starts the worker, builds the engine in it, and returns its proxy. */
export async function createWorkerEngine(
  model: LoadedModel,
  opts: WorkerEngineOptions = {},
): Promise<Engine> {
  const wire: WireModel = { ...model, weights: toWire(model.weights) };
  const worker = new Worker(new URL("./worker_main.ts", import.meta.url).href, {
    type: "module",
  });
  const pending = new Map<
    number,
    { resolve: (m: FromWorker) => void; reject: (e: Error) => void }
  >();
  let nextId = 1;
  let nextCache = 1;
  let failed: Error | null = null;
  const ready = new Promise<string>((resolve, reject) => {
    worker.onmessage = (ev: MessageEvent<FromWorker>) => {
      const m = ev.data;
      if (m.op === "ready") return resolve(m.name);
      if (m.op === "fatal") {
        failed = new Error(`the engine worker failed: ${m.message}`);
        reject(failed);
        for (const p of pending.values()) p.reject(failed);
        pending.clear();
        return;
      }
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.op === "error") {
        const e = m.name === "RangeError" ? new RangeError(m.message) : new Error(m.message);
        p.reject(e);
      } else {
        p.resolve(m);
      }
    };
    worker.onerror = (ev) => {
      ev.preventDefault();
      failed = new Error(`the engine worker failed: ${ev.message}`);
      reject(failed);
      for (const p of pending.values()) p.reject(failed);
      pending.clear();
    };
  });
  worker.postMessage(
    { op: "init", model: wire, backend: opts.backend, threads: opts.threads } satisfies ToWorker,
  );
  const name = await ready;

  const call = (msg: ToWorker & { id: number }, transfer: Transferable[]): Promise<FromWorker> => {
    if (failed) return Promise.reject(failed);
    return new Promise((resolve, reject) => {
      pending.set(msg.id, { resolve, reject });
      worker.postMessage(msg, transfer);
    });
  };
  const wireSeqs = (seqs: ForwardInput["seqs"]): WireSeq[] =>
    seqs.map((s) => {
      if (s.cache && !(s.cache instanceof WorkerCache)) {
        throw new TypeError("the worker engine's seqs must use caches from its own newCache()");
      }
      if ((s.cache as WorkerCache | undefined)?.disposed) {
        throw new Error("forward on a disposed cache");
      }
      return s.cache
        ? { length: s.length, cache: (s.cache as WorkerCache).id }
        : { length: s.length };
    });
  // Copies: the caller keeps its arrays; the copies are moved, not cloned, to the worker.
  const wireForward = (input: ForwardInput) => {
    const embeds = input.embeds.slice();
    const logitRows = input.logitRows.slice();
    const wire: WireForward = {
      embeds,
      seqs: wireSeqs(input.seqs),
      positions: input.positions,
      logitRows,
    };
    return { wire, transfer: [embeds.buffer as ArrayBuffer, logitRows.buffer as ArrayBuffer] };
  };
  const grow = (seqs: ForwardInput["seqs"]) => {
    for (const s of seqs) if (s.cache) (s.cache as WorkerCache).length += s.length;
  };
  const { config } = model;
  const C = config.nEmbd;

  return {
    name: `${name} (worker)`,
    config,
    offThread: true,
    embed: (ids) => embedRows(model.weights.wte, C, ids),
    newCache: () =>
      new WorkerCache(nextCache++, (id) => {
        if (!failed) worker.postMessage({ op: "disposeCache", cache: id } satisfies ToWorker);
      }),
    forkCache(cache, rows = cache.length) {
      if (!(cache instanceof WorkerCache)) {
        throw new TypeError("the worker engine forks only caches from its own newCache()");
      }
      if (cache.disposed) throw new Error("forkCache on a disposed cache");
      checkForkRows(rows, cache.length);
      const copy = new WorkerCache(nextCache++, (id) => {
        if (!failed) worker.postMessage({ op: "disposeCache", cache: id } satisfies ToWorker);
      });
      copy.length = rows;
      // Messages are handled in order: the fork sees every forward sent before it.
      if (!failed) {
        worker.postMessage(
          { op: "forkCache", from: cache.id, to: copy.id, rows } satisfies ToWorker,
        );
      }
      return copy;
    },
    async forward(input: ForwardInput): Promise<ForwardOutput> {
      const { wire, transfer } = wireForward(input);
      const r = await call({ op: "forward", id: nextId++, input: wire }, transfer);
      grow(input.seqs);
      return { logits: (r as { logits: Float32Array }).logits };
    },
    // Sampling and scoring run in the worker, on the logits where they are: only the tokens and
    // log-probabilities come back (a row of logits is the vocabulary's size, 200 KB for GPT-2).
    async forwardPicked(input: ForwardInput, picks: readonly RowPick[]): Promise<RowPicked[]> {
      const { wire, transfer } = wireForward(input);
      const r = await call({ op: "forwardPicked", id: nextId++, input: wire, picks }, transfer);
      grow(input.seqs);
      return (r as { picked: RowPicked[] }).picked;
    },
    async lossAndGrad(input: LossInput): Promise<LossOutput> {
      const embeds = input.embeds.slice();
      const r = await call({
        op: "lossAndGrad",
        id: nextId++,
        input: {
          embeds,
          seqs: wireSeqs(input.seqs),
          positions: input.positions,
          lossRows: input.lossRows,
          targets: input.targets,
        },
      }, [embeds.buffer as ArrayBuffer]);
      const m = r as { loss: number; gradEmbeds: Float32Array };
      return { loss: m.loss, gradEmbeds: m.gradEmbeds };
    },
    dispose() {
      worker.postMessage({ op: "dispose" } satisfies ToWorker);
      worker.terminate();
    },
  };
}
