/**
 * The fast engine against the reference vectors in test/fixtures/golden.safetensors (transformers
 * on models/tiny-gpt2; see test/fixtures/README.md), with OpenBLAS when installed and with the
 * TypeScript sgemm always.
 */
import { assert, assertAlmostEquals, assertEquals, assertRejects } from "../../../test/assert.ts";
import type { Engine } from "../engine.ts";
import { loadModel } from "../loader.ts";
import { parseSafetensors, readFloat32, readInt32 } from "../safetensors.ts";
import { loadBlas } from "./blas.ts";
import { createFastEngine } from "./fast_engine.ts";

const root = new URL("../../../", import.meta.url).pathname;
const golden = parseSafetensors(
  await Deno.readFile(`${root}test/fixtures/golden.safetensors`),
  "golden.safetensors",
);
const model = await loadModel(`${root}models/tiny-gpt2`);
const { vocabSize: V, nEmbd: C } = model.config;

const seqs = [0, 1, 2, 3].map((i) => ({
  ids: readInt32(golden, `seq${i}.ids`),
  logits: readFloat32(golden, `seq${i}.logits`),
}));

function maxAbsDiff(a: Float32Array, b: Float32Array, bOff = 0): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[bOff + i]));
  return m;
}

function allRows(n: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => i);
}

function argmax(logits: Float32Array, row: number): number {
  let best = 0;
  const base = row * V;
  for (let v = 1; v < V; v++) if (logits[base + v] > logits[base + best]) best = v;
  return best;
}

async function greedy(engine: Engine, prompt: Int32Array, n: number, cached: boolean) {
  const ids = Array.from(prompt);
  const cache = cached ? engine.newCache() : undefined;
  let pending = ids.slice();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const input = cached ? pending : ids;
    const { logits } = await engine.forward({
      embeds: engine.embed(input),
      seqs: [{ length: input.length, cache }],
      logitRows: Int32Array.of(input.length - 1),
    });
    const next = argmax(logits, 0);
    out.push(next);
    ids.push(next);
    pending = [next];
  }
  cache?.dispose();
  return out;
}

/** The reference soft-prompt layout: embeddings, loss rows, targets, and the prompt's rows. */
function softPromptInput(engine: Engine) {
  const prompt = readFloat32(golden, "pt.prompt"); // [10, C]
  const inputIds = readInt32(golden, "pt.input_ids");
  const midIds = readInt32(golden, "pt.mid_ids");
  const labelIds = readInt32(golden, "pt.label_ids");
  const parts = [
    prompt.subarray(0, 5 * C),
    engine.embed(inputIds),
    prompt.subarray(5 * C, 10 * C),
    engine.embed(midIds),
    engine.embed(labelIds),
  ];
  const n = 10 + inputIds.length + midIds.length + labelIds.length;
  const embeds = new Float32Array(n * C); // [n, C]
  let at = 0;
  for (const p of parts) {
    embeds.set(p, at);
    at += p.length;
  }
  const firstLabel = n - labelIds.length;
  const lossRows = Int32Array.from(labelIds, (_, i) => firstLabel - 1 + i);
  // Rows of the virtual tokens in the packed input.
  const virtualRows = [0, 1, 2, 3, 4, ...[5, 6, 7, 8, 9].map((i) => i + inputIds.length)];
  return { embeds, n, lossRows, targets: labelIds, virtualRows };
}

const blas = loadBlas();
const variants: Array<[string, () => Engine]> = [
  ["typescript sgemm", () => createFastEngine(model, { blas: null })],
];
if (blas) variants.unshift(["openblas", () => createFastEngine(model, { blas })]);
else console.warn("OpenBLAS not installed: only the TypeScript sgemm is tested");

for (const [label, make] of variants) {
  Deno.test(`[${label}] logits of the four reference sequences match transformers within 1e-4`, async () => {
    const engine = make();
    for (const [i, s] of seqs.entries()) {
      const { logits } = await engine.forward({
        embeds: engine.embed(s.ids),
        seqs: [{ length: s.ids.length }],
        logitRows: allRows(s.ids.length),
      });
      const err = maxAbsDiff(logits, s.logits);
      assert(err < 1e-4, `seq${i}: max abs error ${err}`);
    }
    engine.dispose();
  });

  Deno.test(`[${label}] a packed batch gives each sequence the logits it has alone`, async () => {
    const engine = make();
    const total = seqs.reduce((n, s) => n + s.ids.length, 0);
    const ids = new Int32Array(total);
    let at = 0;
    for (const s of seqs) {
      ids.set(s.ids, at);
      at += s.ids.length;
    }
    const { logits } = await engine.forward({
      embeds: engine.embed(ids),
      seqs: seqs.map((s) => ({ length: s.ids.length })),
      logitRows: allRows(total),
    });
    at = 0;
    for (const [i, s] of seqs.entries()) {
      const err = maxAbsDiff(s.logits, logits, at * V);
      assert(err < 1e-4, `seq${i} in the packed batch: max abs error ${err}`);
      at += s.ids.length;
    }
    engine.dispose();
  });

  Deno.test(`[${label}] soft-prompt loss and prompt gradient match the reference`, async () => {
    const engine = make();
    const { embeds, n, lossRows, targets, virtualRows } = softPromptInput(engine);
    const { loss, gradEmbeds } = await engine.lossAndGrad({
      embeds,
      seqs: [{ length: n }],
      lossRows,
      targets,
    });
    assertAlmostEquals(loss, 0.5899635, 1e-4);
    const want = readFloat32(golden, "pt.grad"); // [10, C]
    let maxRef = 0, err = 0;
    for (const [v, row] of virtualRows.entries()) {
      for (let c = 0; c < C; c++) {
        maxRef = Math.max(maxRef, Math.abs(want[v * C + c]));
        err = Math.max(err, Math.abs(gradEmbeds[row * C + c] - want[v * C + c]));
      }
    }
    assert(err < 1e-3 * maxRef, `prompt gradient: max abs error ${err} (max |grad| ${maxRef})`);
    engine.dispose();
  });

  Deno.test(`[${label}] a packed training batch gives each sequence its own loss and gradient`, async () => {
    const engine = make();
    const a = softPromptInput(engine);
    const b = { embeds: engine.embed(seqs[1].ids), n: seqs[1].ids.length };
    const alone = await engine.lossAndGrad({
      embeds: a.embeds,
      seqs: [{ length: a.n }],
      lossRows: a.lossRows,
      targets: a.targets,
    });
    const aloneB = await engine.lossAndGrad({
      embeds: b.embeds,
      seqs: [{ length: b.n }],
      lossRows: Int32Array.of(3),
      targets: Int32Array.of(seqs[1].ids[4]),
    });
    const packedEmbeds = new Float32Array((b.n + a.n) * C);
    packedEmbeds.set(b.embeds);
    packedEmbeds.set(a.embeds, b.n * C);
    const packed = await engine.lossAndGrad({
      embeds: packedEmbeds,
      seqs: [{ length: b.n }, { length: a.n }],
      lossRows: Int32Array.of(3, ...Array.from(a.lossRows, (r) => r + b.n)),
      targets: Int32Array.of(seqs[1].ids[4], ...a.targets),
    });
    // Mean over 3 rows = (1 * lossB + 2 * lossA) / 3; gradients scale by rows / 3 likewise.
    assertAlmostEquals(packed.loss, (aloneB.loss + 2 * alone.loss) / 3, 1e-5);
    let err = 0, big = 0;
    for (let i = 0; i < b.n * C; i++) {
      big = Math.max(big, Math.abs(packed.gradEmbeds[i]));
      err = Math.max(err, Math.abs(packed.gradEmbeds[i] - aloneB.gradEmbeds[i] / 3));
    }
    for (let i = 0; i < a.n * C; i++) {
      big = Math.max(big, Math.abs(packed.gradEmbeds[b.n * C + i]));
      err = Math.max(err, Math.abs(packed.gradEmbeds[b.n * C + i] - alone.gradEmbeds[i] * 2 / 3));
    }
    // Only float32 rounding differs (the 1/3 scale enters before the sums).
    assert(err < 1e-4 * big, `packed gradient differs by ${err} (max |grad| ${big})`);
    engine.dispose();
  });

  Deno.test(`[${label}] KV-cached greedy decoding of 20 tokens equals decoding without it`, async () => {
    const engine = make();
    const prompt = seqs[3].ids;
    const withCache = await greedy(engine, prompt, 20, true);
    const without = await greedy(engine, prompt, 20, false);
    assertEquals(withCache, without);
    engine.dispose();
  });

  Deno.test(`[${label}] a cached batch mixing prefill and decoding rows matches fresh forwards`, async () => {
    const engine = make();
    const [s0, s1] = [seqs[0].ids, seqs[2].ids];
    const c0 = engine.newCache(), c1 = engine.newCache();
    // Prefill s0 fully and s1 up to its last token, then one packed step: s0 nothing new but a
    // repeated last token is not allowed, so feed s1's last token alone beside s0's prefix tail.
    await engine.forward({
      embeds: engine.embed(s0.subarray(0, s0.length - 3)),
      seqs: [{ length: s0.length - 3, cache: c0 }],
      logitRows: new Int32Array(0),
    });
    await engine.forward({
      embeds: engine.embed(s1.subarray(0, s1.length - 1)),
      seqs: [{ length: s1.length - 1, cache: c1 }],
      logitRows: new Int32Array(0),
    });
    const tail0 = s0.subarray(s0.length - 3), tail1 = s1.subarray(s1.length - 1);
    const ids = Int32Array.of(...tail0, ...tail1);
    const { logits } = await engine.forward({
      embeds: engine.embed(ids),
      seqs: [{ length: 3, cache: c0 }, { length: 1, cache: c1 }],
      logitRows: Int32Array.of(0, 1, 2, 3),
    });
    assertEquals([c0.length, c1.length], [s0.length, s1.length]);
    const ref0 = seqs[0].logits, ref1 = seqs[2].logits;
    for (let t = 0; t < 3; t++) {
      const err = maxAbsDiff(logits.subarray(t * V, (t + 1) * V), ref0, (s0.length - 3 + t) * V);
      assert(err < 1e-4, `cached row ${t} of seq0: max abs error ${err}`);
    }
    const err1 = maxAbsDiff(logits.subarray(3 * V, 4 * V), ref1, (s1.length - 1) * V);
    assert(err1 < 1e-4, `cached row of seq2: max abs error ${err1}`);
    c0.dispose();
    c1.dispose();
    engine.dispose();
  });
}

Deno.test("logit rows may be unsorted, repeated and anywhere in the batch", async () => {
  const engine = createFastEngine(model, { blas });
  const [a, b] = [seqs[0], seqs[2]];
  const ids = Int32Array.of(...a.ids, ...b.ids);
  const seqSpans = [{ length: a.ids.length }, { length: b.ids.length }];
  const rows = Int32Array.of(a.ids.length + 2, 4, a.ids.length + 2, 0, ids.length - 1);
  const { logits } = await engine.forward({
    embeds: engine.embed(ids),
    seqs: seqSpans,
    logitRows: rows,
  });
  for (const [i, r] of rows.entries()) {
    const [ref, t] = r < a.ids.length ? [a.logits, r] : [b.logits, r - a.ids.length];
    const err = maxAbsDiff(logits.subarray(i * V, (i + 1) * V), ref, t * V);
    assert(err < 1e-4, `logitRows[${i}] = ${r}: max abs error ${err}`);
  }
  engine.dispose();
});

Deno.test("the gradient matches central differences of the loss at rows anywhere", async () => {
  const engine = createFastEngine(model, { blas });
  const ids = seqs[1].ids.subarray(0, 12);
  const embeds = engine.embed(ids);
  // Unsorted and repeated loss rows in the middle of the sequence.
  const lossRows = Int32Array.of(7, 3, 7);
  const targets = Int32Array.of(ids[8], ids[4], 11);
  const input = { seqs: [{ length: ids.length }], lossRows, targets };
  const { gradEmbeds } = await engine.lossAndGrad({ embeds, ...input });
  const eps = 1e-2;
  for (const [row, col] of [[0, 3], [3, 100], [5, 17], [7, 255]]) {
    const at = row * C + col;
    const up = embeds.slice(), down = embeds.slice();
    up[at] += eps;
    down[at] -= eps;
    const lu = (await engine.lossAndGrad({ embeds: up, ...input })).loss;
    const ld = (await engine.lossAndGrad({ embeds: down, ...input })).loss;
    assertAlmostEquals(
      gradEmbeds[at],
      (lu - ld) / (2 * eps),
      5e-4,
      `d loss / d embeds[${row}, ${col}]`,
    );
  }
  for (let i = 8 * C; i < ids.length * C; i++) {
    assert(gradEmbeds[i] === 0, `rows after the last loss row get no gradient (index ${i})`);
  }
  engine.dispose();
});

Deno.test("explicit positions are used instead of the defaults", async () => {
  const engine = createFastEngine(model, { blas });
  const ids = seqs[2].ids;
  const run = (offset: number) =>
    engine.forward({
      embeds: engine.embed(ids),
      seqs: [{ length: ids.length }],
      positions: Int32Array.from(ids, (_, i) => i + offset),
      logitRows: Int32Array.of(ids.length - 1),
    });
  const base = seqs[2].logits.subarray((ids.length - 1) * V, ids.length * V);
  const same = await run(0);
  assert(maxAbsDiff(same.logits, base) < 1e-4, "explicit default positions changed the logits");
  const shifted = await run(5);
  assert(maxAbsDiff(shifted.logits, base) > 1e-3, "shifted positions had no effect");
  engine.dispose();
});

Deno.test("lossAndGrad rejects a KV cache and mismatched targets", async () => {
  const engine = createFastEngine(model, { blas });
  const ids = seqs[2].ids;
  const cache = engine.newCache();
  await assertRejects(
    () =>
      engine.lossAndGrad({
        embeds: engine.embed(ids),
        seqs: [{ length: ids.length, cache }],
        lossRows: Int32Array.of(0),
        targets: Int32Array.of(1),
      }),
    TypeError,
    "seqs[0].cache must be omitted",
  );
  await assertRejects(
    () =>
      engine.lossAndGrad({
        embeds: engine.embed(ids),
        seqs: [{ length: ids.length }],
        lossRows: Int32Array.of(0, 1),
        targets: Int32Array.of(1),
      }),
    RangeError,
    "targets must have one id per lossRows entry (2): found 1",
  );
  engine.dispose();
});

Deno.test("a cache from another engine is rejected", async () => {
  const e1 = createFastEngine(model, { blas }), e2 = createFastEngine(model, { blas });
  const ids = seqs[2].ids;
  await assertRejects(
    () =>
      e1.forward({
        embeds: e1.embed(ids),
        seqs: [{ length: ids.length, cache: e2.newCache() }],
        logitRows: Int32Array.of(0),
      }),
    TypeError,
    "seqs[0].cache must come from this engine's newCache()",
  );
  e1.dispose();
  e2.dispose();
});
