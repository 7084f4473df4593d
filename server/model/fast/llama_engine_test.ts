/**
 * The Llama blocks' own consistency, on random weights at a grouped-query shape (8 heads over 2
 * key/value heads, q/k/v biases, Llama 3 rope scaling): KV-cached decoding equals the full
 * forward, a mixed batch equals each sequence alone, and the embedding gradient agrees with
 * central differences of the loss. The numbers themselves are checked against PyTorch in
 * test/llama_reference_test.ts.
 */
import { assert, assertAlmostEquals } from "../../../test/assert.ts";
import { createFastEngine } from "./fast_engine.ts";
import { GQA_TEST_SHAPE, randomLlama } from "../testing/random_llama.ts";
import type { Engine } from "../engine.ts";
import { createTestEngine } from "../testing/engine_probe.ts";

const model = randomLlama(GQA_TEST_SHAPE);
const C = model.config.nEmbd, V = model.config.vocabSize;

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert(a.length === b.length, `lengths ${a.length} and ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/**
 * The same structure over each engine's ops: the TypeScript sgemm, OpenBLAS, oneDNN in fp32
 * (where its shim is built; ONEDNN_TEST=required makes a missing one fail), the worker, and the
 * cuda engine's Llama blocks over the emulated device (testing/emulated_cuda_device.ts).
 */
const ENGINES: [string, () => Promise<Engine>][] = [
  ["fast (typescript sgemm)", () => Promise.resolve(createFastEngine(model, { blas: null }))],
  ["fast", () => createTestEngine("fast", model)],
  ["onednn", () => createTestEngine("onednn", model)],
  ["fast-worker", () => createTestEngine("fast-worker", model)],
  ["cuda-emulated", () => createTestEngine("cuda-emulated", model)],
];
const engines: [string, Engine][] = [];
for (const [name, make] of ENGINES) {
  try {
    engines.push([name, await make()]);
  } catch (e) {
    if (name !== "onednn" || Deno.env.get("ONEDNN_TEST") === "required") throw e;
    console.warn(`llama_engine_test: onednn skipped: ${(e as Error).message}`);
  }
}

async function withEngine(fn: (e: Engine) => Promise<void>): Promise<void> {
  for (const [name, e] of engines) {
    try {
      await fn(e);
    } catch (err) {
      throw new Error(`${name}: ${(err as Error).message}`, { cause: err });
    }
  }
}

globalThis.addEventListener("unload", () => engines.forEach(([, e]) => e.dispose()));

Deno.test("Llama blocks: cached decoding gives the full forward's logits, row by row", async () => {
  await withEngine(async (e) => {
    const ids = [3, 17, 42, 5, 9, 60, 11];
    const embeds = e.embed(ids);
    const all = Int32Array.from(ids.keys());
    const full = await e.forward({ embeds, seqs: [{ length: ids.length }], logitRows: all });
    const cache = e.newCache();
    const first = await e.forward({
      embeds: embeds.slice(0, 4 * C),
      seqs: [{ length: 4, cache }],
      logitRows: Int32Array.of(3),
    });
    assert(maxDiff(first.logits, full.logits.slice(3 * V, 4 * V)) < 1e-5, "prefill row");
    for (let t = 4; t < ids.length; t++) {
      const step = await e.forward({
        embeds: embeds.slice(t * C, (t + 1) * C),
        seqs: [{ length: 1, cache }],
        logitRows: Int32Array.of(0),
      });
      assert(maxDiff(step.logits, full.logits.slice(t * V, (t + 1) * V)) < 1e-5, `step ${t}`);
    }
    // A fork continues like the original.
    const fork = e.forkCache(cache, 5);
    const again = await e.forward({
      embeds: embeds.slice(5 * C, 6 * C),
      seqs: [{ length: 1, cache: fork }],
      logitRows: Int32Array.of(0),
    });
    assert(maxDiff(again.logits, full.logits.slice(5 * V, 6 * V)) < 1e-5, "forked cache");
  });
});

Deno.test("Llama blocks: a mixed batch gives each sequence's logits alone", async () => {
  await withEngine(async (e) => {
    const seqs = [[1, 2, 3], [40, 41, 42, 43, 44, 45], [7]];
    const alone = [];
    for (const s of seqs) {
      const out = await e.forward({
        embeds: e.embed(s),
        seqs: [{ length: s.length }],
        logitRows: Int32Array.of(s.length - 1),
      });
      alone.push(out.logits);
    }
    const flat = seqs.flat();
    let at = -1;
    const lastRows = Int32Array.from(seqs, (s) => (at += s.length));
    const mixed = await e.forward({
      embeds: e.embed(flat),
      seqs: seqs.map((s) => ({ length: s.length })),
      logitRows: lastRows,
    });
    for (let i = 0; i < seqs.length; i++) {
      assert(maxDiff(mixed.logits.slice(i * V, (i + 1) * V), alone[i]) < 1e-5, `sequence ${i}`);
    }
  });
});

Deno.test("Llama blocks: the embedding gradient agrees with central differences of the loss", async () => {
  await withEngine(async (e) => {
    const ids = [5, 6, 7, 8, 9, 10];
    const embeds = e.embed(ids);
    const input = {
      seqs: [{ length: 2 }, { length: 4 }],
      lossRows: Int32Array.of(0, 3, 4),
      targets: Int32Array.of(11, 12, 13),
    };
    const { loss, gradEmbeds } = await e.lossAndGrad({ ...input, embeds });
    assert(Number.isFinite(loss) && loss > 0, `loss ${loss}`);
    const h = 1e-2;
    // Entries in each sequence, including rows after the last loss row (gradient 0).
    for (const idx of [0, 7, C + 3, 2 * C + 5, 4 * C + 1, 5 * C + 2]) {
      const plus = embeds.slice(), minus = embeds.slice();
      plus[idx] += h;
      minus[idx] -= h;
      const lp = (await e.lossAndGrad({ ...input, embeds: plus })).loss;
      const lm = (await e.lossAndGrad({ ...input, embeds: minus })).loss;
      const numeric = (lp - lm) / (2 * h);
      assertAlmostEquals(gradEmbeds[idx], numeric, 1e-4 + 2e-3 * Math.abs(numeric), `entry ${idx}`);
    }
  });
});

Deno.test("Llama blocks with WEIGHTS=int8: every matrix quantised per output row, logits near the float ones", async () => {
  const { quantizeModel } = await import("../int8.ts");
  const { mapMatrices } = await import("../weights.ts");
  // A copy to quantise: quantising releases its source's arrays.
  const copy = {
    ...model,
    weights: mapMatrices(model.weights, (m) => (m as Float32Array).slice()),
  };
  const q = quantizeModel(copy);
  for (const m of [q.weights.wte, q.weights.layers[0].q, q.weights.layers[1].down]) {
    assert(!(m instanceof Float32Array) && m.dtype === "int8", "quantised");
  }
  const ids = [3, 17, 42, 5, 9];
  for (const blas of [undefined, null]) {
    const fe = createFastEngine(model, { blas }), qe = createFastEngine(q, { blas });
    try {
      // The same input rows for both: the float embedding.
      const run = (e: Engine) =>
        e.forward({ embeds: fe.embed(ids), seqs: [{ length: 5 }], logitRows: Int32Array.of(4) });
      const [a, b] = [await run(fe), await run(qe)];
      let scale = 0;
      for (const x of a.logits) scale = Math.max(scale, Math.abs(x));
      const err = maxDiff(a.logits, b.logits);
      assert(err > 0 && err < 0.05 * scale, `int8 error ${err} against scale ${scale}`);
    } finally {
      fe.dispose();
      qe.dispose();
    }
  }
});
