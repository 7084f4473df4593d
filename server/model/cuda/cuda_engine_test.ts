/**
 * The cuda backend beyond the shared reference tests (engine_reference_test.ts runs those on
 * `cuda` and `cuda-emulated`):
 * - on any machine: the start-up failure names what is missing; the half-precision settings stay
 *   close to fp32 (over the emulated device); caches and disposal follow the contract;
 * - the Llama blocks (cuda_llama_engine.ts) over the emulated device equal the fast engine's;
 * - on a GPU: every kernel of kernels.cu and every product shape the engine uses agree with the
 *   emulation (device.ts), so a wrong kernel is named, not just a wrong logit, and the Llama
 *   blocks give the emulation's numbers. Without a GPU these are ignored with the reason in
 *   their name.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "../../../test/assert.ts";
import { createFastEngine } from "../fast/fast_engine.ts";
import { createEngine, type Engine } from "../mod.ts";
import { randomGpt2 } from "../testing/gpt2_checkpoint.ts";
import { GQA_TEST_SHAPE, randomLlama } from "../testing/random_llama.ts";
import { emulatedDevice } from "../testing/emulated_cuda_device.ts";
import { createCudaEngine, type CudaPrecision } from "./cuda_engine.ts";
import { CudaUnavailableError, openCudaDevice } from "./cuda_device.ts";
import { at, type Device, type DPtr, type Gemm } from "./device.ts";

// Random weights at GPT-2's vocabulary and scale, made here: the file needs nothing on disk, so
// the GPU check runs it from its bundle (test/gpu/).
const model = randomGpt2(
  { nEmbd: 64, nHead: 4, nLayer: 2, vocabSize: 50257, nPositions: 64 },
  { seed: 3 },
);
const C = model.config.nEmbd;

let gpu: Device | null = null;
let noGpu = "";
try {
  gpu = openCudaDevice();
} catch (e) {
  noGpu = (e as Error).message;
}
/**
 * Caches, on the 13 rows of a [5, 0, 6, 2] packed batch: a prefill caching the first and third
 * sequences, then a step mixing one decode row and a 3-row continuation (`step`: 4 ids), then
 * `forked` (2 ids) after a fork of the third's first 4 rows; logits at scattered rows (not in row
 * order). Each call's logits.
 */
async function cachedLogits(
  e: Engine,
  embeds: Float32Array,
  step: number[],
  forked: number[],
): Promise<Float32Array[]> {
  const a = e.newCache(), b = e.newCache();
  const prefill = await e.forward({
    embeds,
    seqs: [{ length: 5, cache: a }, { length: 0 }, { length: 6, cache: b }, { length: 2 }],
    logitRows: Int32Array.of(12, 4, 0),
  });
  const next = await e.forward({
    embeds: e.embed(step),
    seqs: [{ length: 1, cache: a }, { length: 3, cache: b }],
    logitRows: Int32Array.of(3, 0, 1),
  });
  const fork = e.forkCache(b, 4);
  const after = await e.forward({
    embeds: e.embed(forked),
    seqs: [{ length: 2, cache: fork }],
    logitRows: Int32Array.of(1),
  });
  for (const c of [a, b, fork]) c.dispose();
  return [prefill.logits, next.logits, after.logits];
}

const gpuTest = (name: string, fn: () => void | Promise<void>) =>
  Deno.test({
    name: gpu ? name : `${name} (ignored: needs a GPU; ${noGpu})`,
    ignore: !gpu,
    fn,
  });

Deno.test({
  name: gpu
    ? "BACKEND=cuda fails at start naming what is missing (ignored: a GPU is present)"
    : "BACKEND=cuda fails at start naming what is missing",
  ignore: !!gpu,
  async fn() {
    const e = await assertRejects(() => createEngine(model, { backend: "cuda" }));
    assert(e instanceof CudaUnavailableError, String(e));
    assert(e.message.startsWith('backend "cuda" cannot start: '), e.message);
    assert(e.missing.length > 0);
    for (const m of e.missing) assert(/^(no CUDA runtime|no cuBLAS|no GPU|kernels )/.test(m), m);
  },
});

Deno.test("each missing piece is named: runtime, cuBLAS, kernels", () => {
  const e = assertThrows(
    () =>
      openCudaDevice({
        cudart: ["/nonexistent/libcudart.so.13"],
        cublas: ["/nonexistent/libcublas.so.13"],
        kernels: "/nonexistent/libpromptlearning_kernels.so",
      }),
    CudaUnavailableError,
  );
  const missing = (e as CudaUnavailableError).missing;
  assert(
    missing.some((m) => m.startsWith("no CUDA runtime: libcudart.so.13 not found")),
    e.message,
  );
  assert(missing.some((m) => m.startsWith("no cuBLAS: libcublas.so.13 not found")), e.message);
  assert(
    missing.some((m) => m.includes("kernels not built") && m.includes("deno task build-cuda")),
    e.message,
  );
});

Deno.test("an unknown precision is refused before any device is opened", () => {
  assertThrows(
    () => createCudaEngine(model, { precision: "fp8" as CudaPrecision, device: emulatedDevice() }),
    RangeError,
    "precision must be one of fp32, tf32, bf16, fp16",
  );
});

/** A prompt-tuning style input: two sequences, answer-only loss rows. */
function lossInput(engine: Engine) {
  const a = [464, 3290, 318, 257, 922, 13, 383], b = [40, 1842, 340, 11, 475];
  const embeds = new Float32Array((a.length + b.length) * C);
  embeds.set(engine.embed(a), 0);
  embeds.set(engine.embed(b), a.length * C);
  return {
    embeds,
    seqs: [{ length: a.length }, { length: b.length }],
    lossRows: Int32Array.of(4, 5, a.length + 3),
    targets: Int32Array.of(a[5], a[6], b[4]),
  };
}

for (const precision of ["bf16", "fp16"] as const) {
  Deno.test(`emulated ${precision} storage stays close to fp32 (loss and gradient)`, async () => {
    const ref = createCudaEngine(model, { precision: "fp32", device: emulatedDevice() });
    const half = createCudaEngine(model, { precision, device: emulatedDevice() });
    const r = await ref.lossAndGrad(lossInput(ref));
    const h = await half.lossAndGrad(lossInput(half));
    assert(Math.abs(r.loss - h.loss) < 0.02 * Math.abs(r.loss), `${r.loss} vs ${h.loss}`);
    let dot = 0, nr = 0, nh = 0;
    for (let i = 0; i < r.gradEmbeds.length; i++) {
      dot += r.gradEmbeds[i] * h.gradEmbeds[i];
      nr += r.gradEmbeds[i] ** 2;
      nh += h.gradEmbeds[i] ** 2;
    }
    const cos = dot / Math.sqrt(nr * nh);
    assert(cos > 0.99, `gradient cosine ${cos}`);
    ref.dispose();
    half.dispose();
  });
}

Deno.test("an engine on a shared device frees its weights, scratch and caches", async () => {
  const device = emulatedDevice();
  const e = createCudaEngine(model, { device });
  const cache = e.newCache();
  await e.forward({
    embeds: e.embed([1, 2, 3]),
    seqs: [{ length: 3, cache }],
    logitRows: Int32Array.of(2),
  });
  assert(device.allocatedBytes > 0);
  cache.dispose();
  e.dispose();
  assertEquals(device.allocatedBytes, 0);
});

Deno.test("calls that overlap (serving while training) get the results they get alone", async () => {
  const e = createCudaEngine(model, { device: emulatedDevice() });
  const fwd = (ids: number[]) => ({
    embeds: e.embed(ids),
    seqs: [{ length: ids.length }],
    logitRows: Int32Array.of(ids.length - 1),
  });
  const a = fwd([464, 3290, 318, 257]), b = fwd([40, 1842, 340]);
  const alone = [
    await e.forward(a),
    await e.lossAndGrad(lossInput(e)),
    await e.forward(b),
  ] as const;
  const together = await Promise.all(
    [e.forward(a), e.lossAndGrad(lossInput(e)), e.forward(b)] as const,
  );
  const same = (x: Float32Array, y: Float32Array) =>
    x.length === y.length && x.every((v, i) => v === y[i]);
  assert(same(together[0].logits, alone[0].logits), "first forward's logits changed");
  assert(same(together[2].logits, alone[2].logits), "second forward's logits changed");
  assertEquals(together[1].loss, alone[1].loss);
  assert(same(together[1].gradEmbeds, alone[1].gradEmbeds), "gradient changed");
  e.dispose();
});

Deno.test("emulated cuda engine equals the fast engine on uneven packed batches, caches and partial plans", async () => {
  const fast = createFastEngine(model);
  const cuda = createCudaEngine(model, { device: emulatedDevice() });
  const close = (a: Float32Array, b: Float32Array, what: string) => {
    assertEquals(a.length, b.length, what);
    // Relative to the largest value: gradients are small, and an absolute bound would pass a
    // wrong one.
    let worst = 0, scale = 0;
    for (let i = 0; i < a.length; i++) {
      worst = Math.max(worst, Math.abs(a[i] - b[i]));
      scale = Math.max(scale, Math.abs(b[i]));
    }
    assert(scale > 0 && worst <= 1e-4 * scale, `${what}: differs by ${worst} (scale ${scale})`);
  };
  // Three sequences, the middle one empty and one with no loss rows: partial last-block plans.
  const ids = [[464, 3290, 318, 257, 922], [], [40, 1842, 340, 11, 475, 13], [383, 1110]];
  const packed = (e: Engine) => {
    const embeds = new Float32Array(ids.flat().length * C);
    embeds.set(e.embed(ids.flat()));
    return { embeds, seqs: ids.map((s) => ({ length: s.length })) };
  };
  const loss = { lossRows: Int32Array.of(2, 3, 7, 9), targets: Int32Array.of(257, 922, 11, 13) };
  const lf = await fast.lossAndGrad({ ...packed(fast), ...loss });
  const lc = await cuda.lossAndGrad({ ...packed(cuda), ...loss });
  assert(Math.abs(lf.loss - lc.loss) < 1e-4 * Math.abs(lf.loss), `loss ${lf.loss} vs ${lc.loss}`);
  close(lc.gradEmbeds, lf.gradEmbeds, "gradient");
  const cached = (e: Engine) => cachedLogits(e, packed(e).embeds, [13, 464, 3290, 318], [8, 9]);
  const [fp, fs, fk] = await cached(fast), [cp, cs, ck] = await cached(cuda);
  close(cp, fp, "prefill logits");
  close(cs, fs, "cached step logits");
  close(ck, fk, "forked cache logits");
  fast.dispose();
  cuda.dispose();
});

// The Llama blocks (cuda_llama_engine.ts) against the fast engine's (fast/llama_engine.ts) on the
// same batches: grouped-query heads (G = 4, then G = 1), q/k/v and o biases, Llama 3 rope scaling,
// tied and untied heads. test/llama_reference_test.ts checks both against PyTorch.
const llamas = [
  randomLlama({ ...GQA_TEST_SHAPE, vocabSize: 96 }, 5),
  randomLlama({
    vocabSize: 96,
    nEmbd: 24,
    nLayer: 2,
    nHead: 3,
    nKvHead: 3,
    nInner: 40,
    headDim: 12,
    tied: true,
  }, 6),
];
llamas[1].config.oBias = true;
llamas[1].weights.layers.forEach((l, i) => {
  l.oB = Float32Array.from({ length: 24 }, (_, c) => Math.sin(c + i) * 0.05);
});

for (const [i, llama] of llamas.entries()) {
  const { nHead: H, nKvHead: KVH } = llama.config;
  Deno.test(`emulated cuda engine's Llama blocks equal the fast engine's (${H} heads over ${KVH}): uneven batches, caches, partial plans`, async () => {
    const LC = llama.config.nEmbd;
    const fast = createFastEngine(llama, { threads: 1 });
    const cuda = createCudaEngine(llama, { device: emulatedDevice() });
    assert(cuda.name.startsWith("cuda(emulated"), cuda.name);
    const ids = [[3, 17, 42, 5, 9], [], [60, 11, 7, 80, 2, 33], [14, 90]];
    const packed = (e: Engine) => ({
      embeds: e.embed(ids.flat()),
      seqs: ids.map((s) => ({ length: s.length })),
    });
    const loss = { lossRows: Int32Array.of(2, 3, 7, 9), targets: Int32Array.of(1, 2, 3, 4) };
    const lf = await fast.lossAndGrad({ ...packed(fast), ...loss });
    const lc = await cuda.lossAndGrad({ ...packed(cuda), ...loss });
    assert(Math.abs(lf.loss - lc.loss) < 1e-5 * Math.abs(lf.loss), `loss ${lf.loss} vs ${lc.loss}`);
    closeTo(lc.gradEmbeds, lf.gradEmbeds, `model ${i} gradient`);
    // Every row's logits of the packed batch (full last-block plan).
    const all = Int32Array.from({ length: ids.flat().length }, (_, r) => r);
    const ff = await fast.forward({ ...packed(fast), logitRows: all });
    const cf = await cuda.forward({ ...packed(cuda), logitRows: all });
    closeTo(cf.logits, ff.logits, `model ${i} logits`);
    const cached = (e: Engine) => cachedLogits(e, packed(e).embeds, [13, 64, 32, 31], [8, 9]);
    const [fp, fs, fk] = await cached(fast), [cp, cs, ck] = await cached(cuda);
    closeTo(cp, fp, `model ${i} prefill logits`);
    closeTo(cs, fs, `model ${i} cached step logits`);
    closeTo(ck, fk, `model ${i} forked cache logits`);
    assertEquals(cuda.config.nEmbd, LC);
    fast.dispose();
    cuda.dispose();
  });
}

Deno.test("emulated bf16 storage of the Llama blocks stays close to fp32, and frees what it holds", async () => {
  const device = emulatedDevice();
  const ref = createCudaEngine(llamas[0], { precision: "fp32", device });
  const half = createCudaEngine(llamas[0], { precision: "bf16", device });
  const input = (e: Engine) => ({
    embeds: e.embed([3, 17, 42, 5, 9, 60, 11]),
    seqs: [{ length: 3 }, { length: 4 }],
    lossRows: Int32Array.of(1, 4, 5),
    targets: Int32Array.of(7, 8, 9),
  });
  const r = await ref.lossAndGrad(input(ref));
  const h = await half.lossAndGrad(input(half));
  assert(r.loss !== h.loss, "bf16 rounds somewhere");
  assert(Math.abs(r.loss - h.loss) < 0.02 * Math.abs(r.loss), `${r.loss} vs ${h.loss}`);
  let dot = 0, nr = 0, nh = 0;
  for (let i = 0; i < r.gradEmbeds.length; i++) {
    dot += r.gradEmbeds[i] * h.gradEmbeds[i];
    nr += r.gradEmbeds[i] ** 2;
    nh += h.gradEmbeds[i] ** 2;
  }
  assert(dot / Math.sqrt(nr * nh) > 0.99, `gradient cosine ${dot / Math.sqrt(nr * nh)}`);
  const cache = half.newCache();
  await half.forward({
    embeds: half.embed([1, 2]),
    seqs: [{ length: 2, cache }],
    logitRows: Int32Array.of(1),
  });
  ref.dispose();
  cache.dispose();
  half.dispose();
  assertEquals(device.allocatedBytes, 0);
});

/** a within 1e-4 of b's largest magnitude (an absolute bound would pass a wrong small gradient). */
function closeTo(a: Float32Array, b: Float32Array, what: string): void {
  assertEquals(a.length, b.length, what);
  let worst = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  assert(scale > 0 && worst <= 1e-4 * scale, `${what}: differs by ${worst} (scale ${scale})`);
}

Deno.test("caches: another engine's is refused, a disposed one too; a disposed engine throws", async () => {
  const e1 = createCudaEngine(model, { device: emulatedDevice() });
  const e2 = createCudaEngine(model, { device: emulatedDevice() });
  const ids = [464, 3290];
  const input = (cache: ReturnType<Engine["newCache"]>) => ({
    embeds: e1.embed(ids),
    seqs: [{ length: 2, cache }],
    logitRows: Int32Array.of(1),
  });
  await assertRejects(() => e1.forward(input(e2.newCache())), TypeError, "this engine's newCache");
  const c = e1.newCache();
  c.dispose();
  await assertRejects(() => e1.forward(input(c)), Error, "disposed");
  e1.dispose();
  e1.dispose(); // idempotent
  assertThrows(() => e1.newCache(), Error, "disposed");
  e2.dispose();
});

// ---- GPU only: kernels.cu and cuBLAS against the emulation -----------------------------------

let seed = 12345;
function random(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    out[i] = ((seed / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

function identity(n: number): Float32Array {
  const out = new Float32Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = 1;
  return out;
}

/** Where agree() runs its check: the GPU, or a second emulation to check the checks themselves. */
let target: Device | null = null;

/**
 * A GPU check, registered twice: on the GPU (ignored without one), and against a second
 * emulated device everywhere, so the check's own buffers and offsets are known good before a
 * short GPU loan runs it.
 */
function agreementTest(name: string, fn: () => void): void {
  gpuTest(name, () => {
    target = gpu;
    fn();
  });
  Deno.test(`${name}: the check itself, emulation against emulation`, () => {
    target = emulatedDevice();
    try {
      fn();
    } finally {
      target.dispose();
    }
  });
}

/** Runs `body` on the target and on the emulation with the same inputs; compares what it returns. */
function agree(
  what: string,
  inputs: Record<string, Float32Array | Int32Array>,
  body: (d: Device, p: Record<string, DPtr>) => [DPtr, number][],
  tol = 1e-4,
): void {
  const run = (d: Device) => {
    const p: Record<string, DPtr> = {};
    for (const [k, v] of Object.entries(inputs)) {
      const buf = d.alloc(v instanceof Int32Array ? "i32" : "f32", v.length);
      d.upload(at(buf), v);
      p[k] = at(buf);
    }
    return body(d, p).map(([ptr, n]) => {
      const out = new Float32Array(n);
      d.download(ptr, out);
      return out;
    });
  };
  const emu = emulatedDevice();
  const want = run(emu), got = run(target!);
  emu.dispose();
  want.forEach((w, i) => {
    let worst = 0;
    for (let j = 0; j < w.length; j++) {
      const err = Math.abs(w[j] - got[i][j]) / Math.max(1, Math.abs(w[j]));
      if (!(err <= worst)) worst = Number.isNaN(err) ? Infinity : err;
    }
    assert(worst <= tol, `${what}: output ${i} differs by ${worst} (tolerance ${tol})`);
  });
}

agreementTest("GPU kernels agree with the emulation: row-wise kernels", () => {
  const rows = 5, n = 768;
  agree("addPositions", {
    x: random(rows * n),
    wpe: random(10 * n),
    pos: Int32Array.of(3, 0, 9, 3, 1),
  }, (d, p) => {
    d.kernels.addPositions(p.x, p.wpe, p.pos, rows, n);
    return [[p.x, rows * n]];
  });
  agree("layerNorm", {
    x: random(rows * n, 3),
    g: random(n),
    b: random(n),
    out: random(rows * n),
    xh: random(rows * n),
    rs: random(rows),
  }, (d, p) => {
    d.kernels.layerNorm(p.x, p.g, p.b, 1e-5, p.out, p.xh, p.rs, rows, n);
    return [[p.out, rows * n], [p.xh, rows * n], [p.rs, rows]];
  });
  agree("layerNormBackward", {
    d: random(rows * n),
    xh: random(rows * n),
    rs: random(rows),
    g: random(n),
    dx: random(rows * n),
  }, (d, p) => {
    d.kernels.layerNormBackward(p.d, p.xh, p.rs, p.g, p.dx, rows, n);
    return [[p.dx, rows * n]];
  });
  agree("causalSoftmax", { s: random(3 * 4 * 9, 5) }, (d, p) => {
    d.kernels.causalSoftmax(p.s, 4, 9, 5, 3);
    return [[p.s, 3 * 4 * 9]];
  });
  agree("softmaxBackward", { p: random(2 * 4 * 6), dp: random(2 * 4 * 6) }, (d, p) => {
    d.kernels.softmaxBackward(p.p, p.dp, 4, 6, 2);
    return [[p.dp, 2 * 4 * 6]];
  });
  const V = 50257;
  agree(
    "crossEntropy",
    { l: random(3 * V, 8), t: Int32Array.of(0, 50256, 1234), loss: random(3) },
    (d, p) => {
      d.kernels.crossEntropy(p.l, p.t, p.loss, 3, V);
      return [[p.l, 3 * V], [p.loss, 3]];
    },
    1e-5,
  );
});

agreementTest("GPU kernels agree with the emulation: element-wise, copies, gathers", () => {
  const rows = 4, n = 300;
  agree("fillBias + addBias", { x: random(rows * 320), b: random(n) }, (d, p) => {
    d.kernels.fillBias(p.x, p.b, rows, n);
    d.kernels.addBias(p.x, p.b, rows - 1, n, 320);
    return [[p.x, rows * 320]];
  });
  for (const act of [0, 1, 2]) {
    agree(
      `biasActivation ${act}`,
      { h: random(rows * n, 6), b: random(n), d: random(rows * n) },
      (d, p) => {
        d.kernels.biasActivation(p.h, p.b, rows, n, act, p.d);
        return [[p.h, rows * n], [p.d, rows * n]];
      },
    );
  }
  agree("mul", { a: random(1000), b: random(1000) }, (d, p) => {
    d.kernels.mul(p.a, p.b, 1000);
    return [[p.a, 1000]];
  });
  agree("copyRows", { dst: random(10 * 64), src: random(10 * 192) }, (d, p) => {
    d.kernels.copyRows(at(p.dst.buf, 64), 64, at(p.src.buf, 64), 192, 7, 64);
    return [[p.dst, 10 * 64]];
  });
  agree("gatherRows + scatterAddRows", {
    dst: random(5 * n),
    src: random(8 * n),
    r: Int32Array.of(7, 0, 7, 2, 5),
    acc: random(8 * n),
  }, (d, p) => {
    d.kernels.gatherRows(p.dst, p.src, p.r, 5, n);
    d.kernels.scatterAddRows(p.acc, p.dst, p.r, 5, n);
    return [[p.dst, 5 * n], [p.acc, 8 * n]];
  });
  for (const dtype of ["bf16", "f16"] as const) {
    // Rounded to the dtype, then widened back by a product with the identity.
    agree(
      `convert ${dtype}`,
      { x: random(6 * n), eye: identity(n), out: random(6 * n) },
      (d, p) => {
        const half = at(d.alloc(dtype, 6 * n)), eye = at(d.alloc(dtype, n * n));
        d.kernels.convert(p.x, half, 6 * n);
        d.kernels.convert(p.eye, eye, n * n);
        d.gemm({
          transA: false,
          transB: false,
          m: 6,
          n,
          k: n,
          alpha: 1,
          a: half,
          lda: n,
          b: eye,
          ldb: n,
          beta: 0,
          c: p.out,
          ldc: n,
          math: "fp32",
        });
        return [[p.out, 6 * n]];
      },
      0,
    );
  }
});

agreementTest(
  "GPU kernels agree with the emulation: the Llama blocks' RMSNorm, rotation, SwiGLU",
  () => {
    const rows = 5, n = 576;
    agree("rmsNorm", {
      x: random(rows * n, 3),
      g: random(n),
      out: random(rows * n),
      xh: random(rows * n),
      rs: random(rows),
    }, (d, p) => {
      d.kernels.rmsNorm(p.x, p.g, 1e-5, p.out, p.xh, p.rs, rows, n);
      return [[p.out, rows * n], [p.xh, rows * n], [p.rs, rows]];
    });
    agree("rmsNormBackward", {
      d: random(rows * n),
      xh: random(rows * n),
      rs: random(rows),
      g: random(n),
      dx: random(rows * n),
    }, (d, p) => {
      d.kernels.rmsNormBackward(p.d, p.xh, p.rs, p.g, p.dx, rows, n);
      return [[p.dx, rows * n]];
    });
    // 11 heads of 64 from column 64 of 960-wide rows (queries and keys of [N, QW + 2 KW] rows),
    // forward then the transpose on part of them.
    const half = 32, ld = 960;
    agree("rope, rope inverse", {
      x: random(rows * ld, 2),
      cos: random(rows * half),
      sin: random(rows * half),
    }, (d, p) => {
      d.kernels.rope(at(p.x.buf, 64), ld, p.cos, p.sin, rows, 11, 64, false);
      d.kernels.rope(
        at(p.x.buf, 128),
        ld,
        at(p.cos.buf, half),
        at(p.sin.buf, half),
        3,
        4,
        64,
        true,
      );
      return [[p.x, rows * ld]];
    });
    agree("swiglu + swigluBackward", {
      g: random(1500, 6),
      u: random(1500, 2),
      h: random(1500),
      dh: random(1500),
    }, (d, p) => {
      d.kernels.swiglu(p.g, p.u, p.h, 1500);
      d.kernels.swigluBackward(p.dh, p.g, p.u, 1500);
      return [[p.h, 1500], [p.g, 1500], [p.u, 1500]];
    });
  },
);

agreementTest(
  "cuBLAS products agree with the emulation: transposes, strides, batches, precisions",
  () => {
    const cases: [boolean, boolean][] = [[false, false], [false, true], [true, false], [
      true,
      true,
    ]];
    for (const [transA, transB] of cases) {
      for (const math of ["fp32", "tf32"] as const) {
        const m = 7, n = 9, k = 64, batch = 3;
        const g = (p: Record<string, DPtr>): Gemm => ({
          transA,
          transB,
          m,
          n,
          k,
          alpha: 0.5,
          beta: 1,
          math,
          batch,
          a: p.a,
          lda: transA ? m + 3 : k + 5,
          strideA: 1000,
          b: p.b,
          ldb: transB ? k + 2 : n + 4,
          strideB: 1100,
          c: p.c,
          ldc: n + 1,
          strideC: 200,
        });
        agree(`gemm ${transA ? "T" : "N"}${transB ? "T" : "N"} ${math}`, {
          a: random(4000),
          b: random(4400),
          c: random(800),
        }, (d, p) => {
          d.gemm(g(p));
          return [[p.c, 800]];
        }, math === "tf32" ? 2e-2 : 1e-4);
      }
    }
    for (const dtype of ["bf16", "f16"] as const) {
      agree(`gemm ${dtype} inputs, fp32 accumulation`, {
        a: random(16 * 64),
        b: random(64 * 32),
        c: random(16 * 32),
      }, (d, p) => {
        const a = at(d.alloc(dtype, 16 * 64)), b = at(d.alloc(dtype, 64 * 32));
        d.kernels.convert(p.a, a, 16 * 64);
        d.kernels.convert(p.b, b, 64 * 32);
        d.gemm({
          transA: false,
          transB: false,
          m: 16,
          n: 32,
          k: 64,
          alpha: 1,
          a,
          lda: 64,
          b,
          ldb: 32,
          beta: 0,
          c: p.c,
          ldc: 32,
          math: "fp32",
        });
        return [[p.c, 16 * 32]];
      }, 1e-3);
    }
  },
);

gpuTest("on the GPU, tf32 and bf16 settings stay close to fp32", async () => {
  const ref = createCudaEngine(model, { precision: "fp32" });
  for (const precision of ["tf32", "bf16", "fp16"] as const) {
    const e = createCudaEngine(model, { precision });
    const r = await ref.lossAndGrad(lossInput(ref));
    const h = await e.lossAndGrad(lossInput(e));
    assert(
      Math.abs(r.loss - h.loss) < 0.02 * Math.abs(r.loss),
      `${precision}: ${r.loss} vs ${h.loss}`,
    );
    e.dispose();
  }
  ref.dispose();
});

gpuTest("on the GPU, the Llama blocks give the emulation's logits, loss and gradient", async () => {
  const llama = llamas[0];
  const gpuEngine = createCudaEngine(llama, { precision: "fp32" });
  const emu = createCudaEngine(llama, { precision: "fp32", device: emulatedDevice() });
  const run = async (e: Engine) => {
    const cache = e.newCache();
    const prefill = await e.forward({
      embeds: e.embed([3, 17, 42, 5, 9, 60]),
      seqs: [{ length: 6, cache }],
      logitRows: Int32Array.of(0, 5),
    });
    const step = await e.forward({
      embeds: e.embed([11]),
      seqs: [{ length: 1, cache }],
      logitRows: Int32Array.of(0),
    });
    cache.dispose();
    const g = await e.lossAndGrad({
      embeds: e.embed([3, 17, 42, 5, 9, 60, 11]),
      seqs: [{ length: 3 }, { length: 4 }],
      lossRows: Int32Array.of(1, 4, 5),
      targets: Int32Array.of(7, 8, 9),
    });
    return { prefill: prefill.logits, step: step.logits, g };
  };
  const got = await run(gpuEngine), want = await run(emu);
  closeTo(got.prefill, want.prefill, "prefill logits");
  closeTo(got.step, want.step, "cached step logits");
  assert(Math.abs(got.g.loss - want.g.loss) < 1e-4 * Math.abs(want.g.loss), "loss");
  closeTo(got.g.gradEmbeds, want.g.gradEmbeds, "gradient");
  gpuEngine.dispose();
  emu.dispose();
});

gpuTest("the GPU engine frees what it allocates", async () => {
  const device = openCudaDevice();
  const before = device.allocatedBytes;
  const e = createCudaEngine(model, { device });
  const cache = e.newCache();
  await e.forward({
    embeds: e.embed([1, 2, 3]),
    seqs: [{ length: 3, cache }],
    logitRows: Int32Array.of(2),
  });
  assert(device.allocatedBytes > 0);
  cache.dispose();
  e.dispose();
  assertEquals(device.allocatedBytes, before);
  device.dispose();
});

if (gpu) {
  Deno.test("GPU device closes", () => gpu!.dispose());
}
