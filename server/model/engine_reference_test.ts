/**
 * Every engine against the reference vectors of test/fixtures/golden.safetensors (computed with
 * Hugging Face transformers and PEFT on models/tiny-gpt2; see test/fixtures/README.md).
 * Engines under test come from ENGINES (comma list). By default every engine is tried and one that
 * cannot load here (cuda without a GPU) is registered as an ignored test whose name says why; an
 * engine named in ENGINES must load, or the run fails (`ENGINES=cuda` on a GPU machine).
 * `cuda-emulated` is the cuda engine's own code over the CPU emulation of its device
 * (testing/emulated_cuda_device.ts), so the GPU engine's logic is checked on every machine.
 */
import { asGpt2 } from "./weights.ts";
import { assert, assertAlmostEquals, assertEquals } from "../../test/assert.ts";
import { loadBlas } from "./fast/blas.ts";
import { createCudaEngine } from "./cuda/cuda_engine.ts";
import { createWorkerEngine } from "./worker_engine.ts";
import { emulatedDevice } from "./testing/emulated_cuda_device.ts";
import { createEngine, type Engine, loadModel } from "./mod.ts";
import { forwardPadded } from "./padding.ts";
import { parseSafetensors, readFloat32, readInt32 } from "./safetensors.ts";

const root = new URL("../../", import.meta.url).pathname;
const golden = parseSafetensors(
  await Deno.readFile(`${root}test/fixtures/golden.safetensors`),
  "golden",
);
const model = asGpt2(await loadModel(`${root}models/tiny-gpt2`));
const V = model.config.vocabSize, C = model.config.nEmbd;

const requested = Deno.env.get("ENGINES");
const names = (requested ?? "wasm,cpu,fast,fast-worker,onednn,cuda,cuda-emulated").split(",");
const created: Engine[] = [];

function create(name: string): Promise<Engine> {
  // The fast engine in a worker: what the service runs when ENGINE_WORKER is on.
  if (name === "fast-worker") return createWorkerEngine(model, { backend: "fast" });
  if (name === "cuda-emulated") {
    const blas = loadBlas();
    return Promise.resolve(createCudaEngine(model, { device: emulatedDevice(blas ?? undefined) }));
  }
  // fp32 at these tolerances; the bf16 modes are checked in onednn/onednn_engine_test.ts.
  return createEngine(model, { backend: name, precision: "fp32" });
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assertEquals(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const seqs = [0, 1, 2, 3].map((i) => ({
  ids: readInt32(golden, `seq${i}.ids`),
  logits: readFloat32(golden, `seq${i}.logits`),
}));

async function greedy(
  engine: Engine,
  prompt: Int32Array,
  n: number,
  cached: boolean,
): Promise<number[]> {
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
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    out.push(best);
    ids.push(best);
    pending = [best];
  }
  cache?.dispose();
  return out;
}

for (const name of names) {
  let engine: Engine;
  try {
    engine = await create(name);
    created.push(engine);
  } catch (e) {
    const why = (e as Error).message;
    if (requested) {
      // Asked for by name: not loading is a failure, never a silent skip.
      Deno.test(`[${name}] engine loads`, () => {
        throw new Error(`engine ${name} was requested (ENGINES) but cannot load: ${why}`);
      });
    } else {
      Deno.test({ name: `[${name}] engine loads (ignored: ${why})`, ignore: true, fn() {} });
    }
    continue;
  }

  Deno.test(`[${name}] says whether it computes off this thread (the scheduler yields for I/O only when not)`, () => {
    // The worker computes in its thread; the GPU engine waits on FFI's thread (for GPU 0: the
    // CUDA runtime's current device there) and the emulation computes here; the CPU engines
    // compute on the caller's thread.
    const gpu0 = Number(Deno.env.get("CUDA_DEVICE") || 0) === 0;
    assertEquals(engine.offThread ?? false, name === "fast-worker" || (name === "cuda" && gpu0));
  });

  Deno.test(`[${name}] logits of the four reference sequences match transformers within 1e-4`, async () => {
    for (const [i, s] of seqs.entries()) {
      const { logits } = await engine.forward({
        embeds: engine.embed(s.ids),
        seqs: [{ length: s.ids.length }],
        logitRows: Int32Array.from(s.ids, (_, t) => t),
      });
      const err = maxAbsDiff(logits, s.logits);
      assert(err < 1e-4, `seq${i}: max abs error ${err}`);
    }
  });

  Deno.test(`[${name}] a packed batch gives each sequence the logits it gets alone`, async () => {
    const all = seqs.flatMap((s) => Array.from(s.ids));
    const lastRows: number[] = [];
    let at = 0;
    for (const s of seqs) {
      at += s.ids.length;
      lastRows.push(at - 1);
    }
    const { logits } = await engine.forward({
      embeds: engine.embed(all),
      seqs: seqs.map((s) => ({ length: s.ids.length })),
      logitRows: Int32Array.from(all, (_, r) => r),
    });
    let off = 0;
    for (const [i, s] of seqs.entries()) {
      const alone = await engine.forward({
        embeds: engine.embed(s.ids),
        seqs: [{ length: s.ids.length }],
        logitRows: Int32Array.from(s.ids, (_, t) => t),
      });
      const err = maxAbsDiff(logits.subarray(off * V, (off + s.ids.length) * V), alone.logits);
      assert(err < 1e-4, `seq${i} in a batch differs from alone by ${err}`);
      off += s.ids.length;
    }
  });

  Deno.test(`[${name}] a padded batch (left and right padding, attention mask) gives each row its logits alone`, async () => {
    const T = Math.max(...seqs.map((s) => s.ids.length));
    const B = seqs.length;
    const embeds = new Float32Array(B * T * C);
    const mask = new Uint8Array(B * T);
    const starts = seqs.map((s, b) => (b % 2 === 0 ? 0 : T - s.ids.length)); // even rows right-padded, odd left
    seqs.forEach((s, b) => {
      embeds.set(engine.embed(s.ids), (b * T + starts[b]) * C);
      mask.fill(1, b * T + starts[b], b * T + starts[b] + s.ids.length);
    });
    const { logits } = await forwardPadded(engine, {
      embeds,
      batch: B,
      length: T,
      attentionMask: mask,
    });
    for (const [b, s] of seqs.entries()) {
      const rows = logits.subarray((b * T + starts[b]) * V, (b * T + starts[b] + s.ids.length) * V);
      const err = maxAbsDiff(rows, s.logits);
      assert(err < 1e-4, `row ${b}: max abs error ${err} against the reference`);
    }
  });

  Deno.test(`[${name}] soft-prompt loss and gradient match the PEFT reference`, async () => {
    const prompt = readFloat32(golden, "pt.prompt"); // [10, C]
    const input = readInt32(golden, "pt.input_ids");
    const mid = readInt32(golden, "pt.mid_ids");
    const label = readInt32(golden, "pt.label_ids");
    const parts = [
      prompt.subarray(0, 5 * C),
      engine.embed(input),
      prompt.subarray(5 * C, 10 * C),
      engine.embed(mid),
      engine.embed(label),
    ];
    const n = 10 + input.length + mid.length + label.length;
    const embeds = new Float32Array(n * C);
    let at = 0;
    for (const p of parts) {
      embeds.set(p, at);
      at += p.length;
    }
    const firstLabel = n - label.length;
    const { loss, gradEmbeds } = await engine.lossAndGrad({
      embeds,
      seqs: [{ length: n }],
      lossRows: Int32Array.from(label, (_, i) => firstLabel + i - 1),
      targets: label,
    });
    assertAlmostEquals(loss, 0.5899635, 1e-4);
    const ref = readFloat32(golden, "pt.grad");
    const got = new Float32Array(10 * C);
    got.set(gradEmbeds.subarray(0, 5 * C), 0);
    const second = (5 + input.length) * C;
    got.set(gradEmbeds.subarray(second, second + 5 * C), 5 * C);
    const scale = ref.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const err = maxAbsDiff(got, ref);
    assert(err < 1e-3 * scale, `gradient max abs error ${err} vs bound ${1e-3 * scale}`);
  });

  Deno.test(`[${name}] KV-cached greedy decoding equals decoding without the cache`, async () => {
    for (const s of [seqs[2], seqs[3]]) {
      const withCache = await greedy(engine, s.ids, 12, true);
      const without = await greedy(engine, s.ids, 12, false);
      assertEquals(withCache, without);
    }
  });

  Deno.test(`[${name}] a batch mixing cached sequences of different past lengths matches each alone`, async () => {
    const a = engine.newCache(), b = engine.newCache();
    const s0 = seqs[0].ids, s2 = seqs[2].ids;
    await engine.forward({
      embeds: engine.embed(s0),
      seqs: [{ length: s0.length, cache: a }],
      logitRows: Int32Array.of(0),
    });
    await engine.forward({
      embeds: engine.embed(s2),
      seqs: [{ length: s2.length, cache: b }],
      logitRows: Int32Array.of(0),
    });
    const next = [13, 464, 11];
    const { logits } = await engine.forward({
      embeds: engine.embed(next),
      seqs: [{ length: 1, cache: a }, { length: 2, cache: b }],
      logitRows: Int32Array.of(0, 2),
    });
    const alone0 = await engine.forward({
      embeds: engine.embed([...s0, 13]),
      seqs: [{ length: s0.length + 1 }],
      logitRows: Int32Array.of(s0.length),
    });
    const alone2 = await engine.forward({
      embeds: engine.embed([...s2, 464, 11]),
      seqs: [{ length: s2.length + 2 }],
      logitRows: Int32Array.of(s2.length + 1),
    });
    assert(maxAbsDiff(logits.subarray(0, V), alone0.logits) < 1e-4);
    assert(maxAbsDiff(logits.subarray(V, 2 * V), alone2.logits) < 1e-4);
    assertEquals(a.length, s0.length + 1);
    assertEquals(b.length, s2.length + 2);
    a.dispose();
    b.dispose();
  });

  Deno.test(`[${name}] forkCache(): forks of one prompt continue independently, each as its whole sequence alone`, async () => {
    const prompt = seqs[1].ids;
    const base = engine.newCache();
    await engine.forward({
      embeds: engine.embed(prompt),
      seqs: [{ length: prompt.length, cache: base }],
      logitRows: Int32Array.of(prompt.length - 1),
    });
    const a = engine.forkCache(base), b = engine.forkCache(base);
    assertEquals([a.length, b.length], [prompt.length, prompt.length]);
    // Two continuations of different lengths in one packed call, then the source goes on too.
    const ca = [464, 3290], cb = [13, 11, 257];
    const { logits } = await engine.forward({
      embeds: engine.embed([...ca, ...cb]),
      seqs: [{ length: ca.length, cache: a }, { length: cb.length, cache: b }],
      logitRows: Int32Array.from({ length: ca.length + cb.length }, (_, r) => r),
    });
    const own = await engine.forward({
      embeds: engine.embed([318]),
      seqs: [{ length: 1, cache: base }],
      logitRows: Int32Array.of(0),
    });
    const alone = async (tail: number[]) =>
      (await engine.forward({
        embeds: engine.embed([...prompt, ...tail]),
        seqs: [{ length: prompt.length + tail.length }],
        logitRows: Int32Array.from(tail, (_, t) => prompt.length + t),
      })).logits;
    assert(maxAbsDiff(logits.subarray(0, ca.length * V), await alone(ca)) < 1e-4, "fork a");
    assert(maxAbsDiff(logits.subarray(ca.length * V), await alone(cb)) < 1e-4, "fork b");
    // The source never saw the forks' rows.
    const src = await alone([318]);
    assert(maxAbsDiff(own.logits, src) < 1e-4, "the source after the forks");
    assertEquals([base.length, a.length, b.length], [
      prompt.length + 1,
      prompt.length + 2,
      prompt.length + 3,
    ]);
    // A fork outlives its source.
    base.dispose();
    const after = await engine.forward({
      embeds: engine.embed([286]),
      seqs: [{ length: 1, cache: a }],
      logitRows: Int32Array.of(0),
    });
    const whole = await alone([...ca, 286]);
    assert(maxAbsDiff(after.logits, whole.subarray(2 * V)) < 1e-4, "a fork after its source");
    a.dispose();
    b.dispose();
  });

  Deno.test(`[${name}] forkCache(cache, rows): a fork of a prompt's first rows continues as that prefix alone`, async () => {
    const prompt = seqs[2].ids;
    const whole = engine.newCache();
    await engine.forward({
      embeds: engine.embed(prompt),
      seqs: [{ length: prompt.length, cache: whole }],
      logitRows: Int32Array.of(0),
    });
    const k = 4;
    const prefix = engine.forkCache(whole, k);
    assertEquals(prefix.length, k);
    // The rest of another prompt after the shared first k tokens, then a decode step.
    const tail = [464, 3290, 318];
    const { logits } = await engine.forward({
      embeds: engine.embed(tail),
      seqs: [{ length: tail.length, cache: prefix }],
      logitRows: Int32Array.from(tail, (_, t) => t),
    });
    const alone = await engine.forward({
      embeds: engine.embed([...prompt.subarray(0, k), ...tail]),
      seqs: [{ length: k + tail.length }],
      logitRows: Int32Array.from(tail, (_, t) => k + t),
    });
    assert(maxAbsDiff(logits, alone.logits) < 1e-4, "the prefix fork and the whole computed alone");
    let refused = false;
    try {
      engine.forkCache(whole, prompt.length + 1);
    } catch (e) {
      refused = e instanceof RangeError;
    }
    assert(refused, "a fork of more rows than the cache holds is refused");
    whole.dispose();
    prefix.dispose();
  });
}

// Last: a worker engine holds a thread that would keep the test process alive.
Deno.test("the engines under test are disposed", () => {
  for (const e of created) e.dispose();
});
