/**
 * The worker side of `worker_engine.ts`: builds the engine over the shared weights and answers
 * forward, forwardPicked (the logits reduced to tokens and log-probabilities here) and lossAndGrad
 * calls in the order they arrive. KV caches are created on first use under
 * the proxy's numbers.
 */
/// <reference lib="deno.worker" />
import { type Engine, forwardPicked, type KvCache, type SeqSpan } from "./engine.ts";
import { createEngine } from "./mod.ts";
import { fromWire } from "./shared_weights.ts";
import type { FromWorker, ToWorker, WireSeq } from "./worker_engine.ts";
import type { LoadedModel } from "./weights.ts";

let engine: Engine | undefined;
const caches = new Map<number, KvCache>();

function spans(seqs: WireSeq[]): SeqSpan[] {
  return seqs.map((s) => {
    if (s.cache === undefined) return { length: s.length };
    let c = caches.get(s.cache);
    if (!c) {
      c = engine!.newCache();
      caches.set(s.cache, c);
    }
    return { length: s.length, cache: c };
  });
}

function reply(m: FromWorker, transfer: Transferable[] = []): void {
  self.postMessage(m, transfer);
}

self.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const m = ev.data;
  switch (m.op) {
    case "init":
      try {
        // The weights come back under the family the config names.
        const model = { ...m.model, weights: fromWire(m.model.weights) } as LoadedModel;
        engine = await createEngine(model, { backend: m.backend, threads: m.threads });
        reply({ op: "ready", name: engine.name });
      } catch (e) {
        reply({ op: "fatal", message: (e as Error).message });
      }
      return;
    case "forward":
      try {
        const { input } = m;
        const out = await engine!.forward({ ...input, seqs: spans(input.seqs) });
        // A copy is moved: the engine's own array may be a view of memory it reuses.
        const logits = out.logits.slice();
        reply({ op: "result", id: m.id, logits }, [logits.buffer as ArrayBuffer]);
      } catch (e) {
        reply({ op: "error", id: m.id, name: (e as Error).name, message: (e as Error).message });
      }
      return;
    case "forwardPicked":
      try {
        const { input, picks } = m;
        const picked = await forwardPicked(engine!, { ...input, seqs: spans(input.seqs) }, picks);
        reply({ op: "result", id: m.id, picked });
      } catch (e) {
        reply({ op: "error", id: m.id, name: (e as Error).name, message: (e as Error).message });
      }
      return;
    case "lossAndGrad":
      try {
        const { input } = m;
        const out = await engine!.lossAndGrad({ ...input, seqs: spans(input.seqs) });
        const gradEmbeds = out.gradEmbeds.slice();
        reply({ op: "result", id: m.id, loss: out.loss, gradEmbeds }, [
          gradEmbeds.buffer as ArrayBuffer,
        ]);
      } catch (e) {
        reply({ op: "error", id: m.id, name: (e as Error).name, message: (e as Error).message });
      }
      return;
    case "forkCache": {
      const from = caches.get(m.from);
      // A cache never fed is not made yet: its fork starts empty too.
      caches.set(m.to, from ? engine!.forkCache(from, m.rows) : engine!.newCache());
      return;
    }
    case "disposeCache":
      caches.get(m.cache)?.dispose();
      caches.delete(m.cache);
      return;
    case "dispose":
      for (const c of caches.values()) c.dispose();
      caches.clear();
      engine?.dispose();
      return;
  }
};
