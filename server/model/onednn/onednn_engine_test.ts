/**
 * The oneDNN engine and its shim. The fp32 engine also runs the shared reference tests
 * (engine_reference_test.ts, at the fast engine's tolerances); here:
 * - the shim's linear layers and row loops against the TypeScript sgemm and kernels;
 * - every precision this CPU runs (fp32; bf16-emulated always; bf16 where oneDNN has bf16 kernels)
 *   against the transformers/PEFT reference vectors, with the tolerances stated below;
 * - precision selection.
 * Skipped when the shim is not built (no libdnnl-dev or gcc), unless ONEDNN_TEST=required (CI).
 *
 * bf16 tolerances. bf16 keeps 8 significant bits, so rounding an operand costs up to 2^-9 of it
 * and a product x.w up to ~2^-8 relative; fp32 accumulation adds nothing comparable. Through six
 * layers the errors partly cancel. Measured with bf16-emulated on tiny-gpt2: logits off by at most
 * 0.043 (values up to 18.8), loss by 0.35%, prompt gradient by 0.6% of its largest entry.
 * The bounds, 3 to 5 times those: logits within one bf16 spacing at the largest reference logit
 * (2^(e-7) for 2^e <= max|logit|: 0.125 here), which is what merely storing those logits in bf16
 * would cost; loss within 2^-6 relative; prompt gradient within 2^-5 of its largest entry; and
 * the greedy token at each reference sequence's last row equal to the reference's.
 */
import { assert, assertEquals, assertThrows } from "../../../test/assert.ts";
import type { Engine } from "../engine.ts";
import { jsSgemm } from "../fast/blas.ts";
import * as kernels from "../fast/kernels.ts";
import * as llama from "../fast/llama_kernels.ts";
import type { Activation } from "../fast/kernels.ts";
import { loadModel } from "../loader.ts";
import { parseSafetensors, readFloat32, readInt32 } from "../safetensors.ts";
import { loadOnednn, type OnednnLib } from "./lib.ts";
import { cpuHasNativeBf16, createOnednnEngine, resolvePrecision } from "./onednn_engine.ts";
import { uniform as rand } from "../testing/random.ts";
import { widened } from "../testing/gpt2_checkpoint.ts";

const root = new URL("../../../", import.meta.url).pathname;
let lib: OnednnLib | null = null;
try {
  lib = loadOnednn();
} catch (e) {
  if (Deno.env.get("ONEDNN_TEST") === "required") throw e;
  console.warn(`oneDNN engine tests skipped: ${(e as Error).message}`);
}
const ignore = lib === null;

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>, n = a.length): number {
  let m = 0;
  for (let i = 0; i < n; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Round to the nearest bf16, ties to even (what the shim does). */
function bf16(x: Float32Array): Float32Array {
  const u = new Uint32Array(x.slice().buffer);
  for (let i = 0; i < u.length; i++) {
    u[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16;
  }
  return new Float32Array(u.buffer);
}

Deno.test({
  name: "shim linear layers match the TypeScript sgemm: fp32, fused bias/GELU/sum, transposed",
  ignore,
  fn() {
    const g = jsSgemm();
    const [m, K, N] = [37, 64, 48];
    const x = rand(m * K, 1), w = rand(K * N, 2, 0.2), b = rand(N, 3), y0 = rand(m * N, 4);
    // Reference: x @ W (W stored [K, N]) and x @ W where W is stored transposed [N, K].
    const ref = new Float32Array(m * N);
    g.sgemm(false, false, m, N, K, 1, x, 0, K, w, 0, N, 0, ref, 0, N);
    const wT = new Float32Array(N * K);
    for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) wT[n * K + k] = w[k * N + n];
    for (
      const [label, l] of [
        ["stored [K, N]", lib!.linear(w, K, N, false, 0, b)],
        ["stored [N, K]", lib!.linear(wT, K, N, true, 0, b)],
      ] as const
    ) {
      const y = new Float32Array(m * N);
      l.forward(m, x, y, {});
      assert(maxDiff(y, ref) < 1e-5, `${label} plain: ${maxDiff(y, ref)}`);
      l.forward(m, x, y, { bias: true });
      const withBias = ref.map((v, i) => v + b[i % N]);
      assert(maxDiff(y, withBias) < 1e-5, `${label} bias: ${maxDiff(y, withBias)}`);
      const acc = y0.slice();
      l.forward(m, x, acc, { bias: true, accumulate: true });
      const wantAcc = withBias.map((v, i) => v + y0[i]);
      assert(maxDiff(acc, wantAcc) < 1e-5, `${label} accumulate: ${maxDiff(acc, wantAcc)}`);
      for (const act of ["gelu_new", "gelu", "relu"] as Activation[]) {
        l.forward(m, x, y, { bias: true, act });
        const want = ref.slice();
        kernels.biasActivation(want, m, N, b, act);
        assert(maxDiff(y, want) < 1e-5, `${label} ${act}: ${maxDiff(y, want)}`);
      }
      // Input gradient: dx = dy @ W^T.
      const dy = rand(m * N, 5), dx = new Float32Array(m * K), wantDx = new Float32Array(m * K);
      g.sgemm(false, true, m, K, N, 1, dy, 0, N, w, 0, N, 0, wantDx, 0, K);
      l.backward(m, dy, dx);
      assert(maxDiff(dx, wantDx) < 1e-5, `${label} backward: ${maxDiff(dx, wantDx)}`);
      assertThrows(() => l.forward(m + 1, x, y, {}), RangeError, "x must hold");
      l.free();
    }
  },
});

Deno.test({
  name: "bf16-emulated linear layers equal fp32 products of bf16-rounded operands",
  ignore,
  fn() {
    const g = jsSgemm();
    const [m, K, N] = [9, 96, 40];
    const x = rand(m * K, 11), w = rand(K * N, 12, 0.3);
    const want = new Float32Array(m * N);
    g.sgemm(false, false, m, N, K, 1, bf16(x), 0, K, bf16(w), 0, N, 0, want, 0, N);
    const l = lib!.linear(w, K, N, false, 2);
    const y = new Float32Array(m * N);
    l.forward(m, x, y, {});
    assert(maxDiff(y, want) < 1e-5 * maxAbs(want), `emulated: ${maxDiff(y, want)}`);
    assertEquals(l.ownBytes, K * N * 4);
    l.free();
    if (lib!.bf16Supported) {
      const n = lib!.linear(w, K, N, false, 1);
      n.forward(m, x, y, {});
      assert(maxDiff(y, want) < 1e-5 * maxAbs(want), `native bf16: ${maxDiff(y, want)}`);
      assertEquals(n.ownBytes, K * N * 2);
      n.free();
    }
  },
});

Deno.test({
  name: "shim row loops match the TypeScript kernels",
  ignore,
  fn() {
    const k = lib!.kernels();
    const [rows, C] = [33, 160];
    const x = rand(rows * C, 21, 3), g = rand(C, 22), b = rand(C, 23);
    const out = new Float32Array(rows * C), want = new Float32Array(rows * C);
    k.layerNorm(x, rows, C, g, b, 1e-5, out);
    kernels.layerNorm(x, rows, C, g, b, 1e-5, want);
    assert(maxDiff(out, want) < 1e-5, `layerNorm ${maxDiff(out, want)}`);
    const xh = new Float32Array(rows * C), rs = new Float32Array(rows);
    const xh2 = new Float32Array(rows * C), rs2 = new Float32Array(rows);
    k.layerNormTrain(x, rows, C, g, b, 1e-5, out, xh, rs);
    kernels.layerNormTrain(x, rows, C, g, b, 1e-5, want, xh2, rs2);
    assert(maxDiff(out, want) < 1e-5 && maxDiff(xh, xh2) < 1e-5 && maxDiff(rs, rs2) < 1e-6);
    const dout = rand(rows * C, 24), dx = rand(rows * C, 25), dx2 = dx.slice();
    k.layerNormBackward(dout, xh2, rs2, rows, C, g, dx);
    kernels.layerNormBackward(dout, xh2, rs2, rows, C, g, dx2);
    assert(maxDiff(dx, dx2) < 1e-5, `layerNormBackward ${maxDiff(dx, dx2)}`);
    for (const act of ["gelu_new", "gelu", "relu"] as Activation[]) {
      const h = x.slice(), h2 = x.slice();
      const d = new Float32Array(rows * C), d2 = new Float32Array(rows * C);
      k.biasActivationTrain(h, rows, C, b, act, d);
      kernels.biasActivationTrain(h2, rows, C, b, act, d2);
      assert(maxDiff(h, h2) < 2e-6 * 4 && maxDiff(d, d2) < 2e-6 * 4, `${act}`);
    }
    const a1 = x.slice(), a2 = x.slice();
    k.addBias(a1, rows, C - 7, C, b);
    kernels.addBias(a2, rows, C - 7, C, b);
    assertEquals(a1, a2);
    k.mulInPlace(a1, g, C);
    kernels.mulInPlace(a2, g, C);
    assertEquals(a1, a2);
  },
});

Deno.test({
  name: "shim row loops of the Llama blocks match the TypeScript ones",
  ignore,
  fn() {
    const k = lib!.kernels();
    const [rows, C] = [37, 192];
    const x = rand(rows * C, 31, 3), g = rand(C, 32);
    const out = new Float32Array(rows * C), want = new Float32Array(rows * C);
    k.rmsNorm(x, rows, C, g, 1e-6, out);
    llama.rmsNorm(x, rows, C, g, 1e-6, want);
    assert(maxDiff(out, want) < 1e-5, `rmsNorm ${maxDiff(out, want)}`);
    const xh = new Float32Array(rows * C), rs = new Float32Array(rows);
    const xh2 = new Float32Array(rows * C), rs2 = new Float32Array(rows);
    k.rmsNorm(x, rows, C, g, 1e-6, out, xh, rs);
    llama.rmsNorm(x, rows, C, g, 1e-6, want, xh2, rs2);
    assert(maxDiff(out, want) < 1e-5 && maxDiff(xh, xh2) < 1e-5 && maxDiff(rs, rs2) < 1e-6);
    const dy = rand(rows * C, 33), dx = rand(rows * C, 34), dx2 = dx.slice();
    k.rmsNormBackward(dy, xh2, rs2, rows, C, g, dx);
    llama.rmsNormBackward(dy, xh2, rs2, rows, C, g, dx2);
    assert(maxDiff(dx, dx2) < 1e-5, `rmsNormBackward ${maxDiff(dx, dx2)}`);
    const n = rows * C, up = rand(n, 35, 2);
    k.swiglu(x, up, n, out);
    llama.swiglu(x, up, n, want);
    assert(maxDiff(out, want) < 1e-5 * 4, `swiglu ${maxDiff(out, want)}`);
    const [ga, ua, gb, ub] = [x.slice(), up.slice(), x.slice(), up.slice()];
    k.swigluBackward(dy, ga, ua, n);
    llama.swigluBackward(dy, gb, ub, n);
    assert(maxDiff(ga, gb) < 1e-5 * 4 && maxDiff(ua, ub) < 1e-5 * 4, "swigluBackward");
    // 3 heads of 64 per row, in rows of stride C, at positions 0..rows-1 from table row 2.
    const positions = Int32Array.from({ length: rows + 2 }, (_, i) => i * 3);
    const { cos, sin } = llama.ropeTables(positions, llama.ropeInvFreq(64, 10000));
    for (const inverse of [false, true]) {
      const a = x.slice(), b = x.slice();
      k.applyRope(a, 5, C, rows - 1, 2, 64, cos, sin, 2, inverse);
      llama.applyRope(b, 5, C, rows - 1, 2, 64, cos, sin, 2, inverse);
      assert(maxDiff(a, b) < 1e-5, `applyRope ${inverse} ${maxDiff(a, b)}`);
      assert(maxDiff(a, x) > 0.1, "the rotation moved something");
    }
  },
});

Deno.test("precision: auto picks bf16 only where the CPU has it; bf16 elsewhere is refused", () => {
  assertEquals(resolvePrecision("auto", true, true), "bf16");
  assertEquals(resolvePrecision("auto", true, false), "fp32"); // emulated bf16 (avx512_core)
  assertEquals(resolvePrecision("auto", false, false), "fp32");
  assertEquals(resolvePrecision("bf16", true, false), "bf16"); // asked for: runs, emulated
  assert(cpuHasNativeBf16("processor : 0\nflags : fpu avx512f avx512_bf16 amx_tile\n"));
  assert(!cpuHasNativeBf16("processor : 0\nflags : fpu avx2 avx512f avx512bw\n"));
  assertEquals(resolvePrecision("bf16-emulated", false), "bf16-emulated");
  assertThrows(() => resolvePrecision("bf16", false), Error, "PRECISION=fp32");
  assertThrows(() => resolvePrecision("fp16", true), RangeError, "precision must be one of");
});

// ---- The engine against the reference vectors, per precision. -----------------------------

const golden = parseSafetensors(
  await Deno.readFile(`${root}test/fixtures/golden.safetensors`),
  "golden.safetensors",
);
const model = await loadModel(`${root}models/tiny-gpt2`);
const { vocabSize: V, nEmbd: C } = model.config;
const refSeqs = [0, 1, 2, 3].map((i) => ({
  ids: readInt32(golden, `seq${i}.ids`),
  logits: readFloat32(golden, `seq${i}.logits`),
}));

/** The spacing of bf16 numbers at |x| (2^(e-7) for 2^e <= |x| < 2^(e+1)). */
function bf16Spacing(x: number): number {
  return 2 ** (Math.floor(Math.log2(Math.abs(x))) - 7);
}

interface Bounds {
  logits: (maxRef: number) => number;
  lossRel: number;
  gradRel: number;
}
const FP32: Bounds = { logits: () => 1e-4, lossRel: 2e-4, gradRel: 1e-3 };
const BF16: Bounds = { logits: bf16Spacing, lossRel: 2 ** -6, gradRel: 2 ** -5 };

const precisions: Array<[string, Bounds]> = [["fp32", FP32], ["bf16-emulated", BF16]];
if (lib?.bf16Supported) precisions.push(["bf16", BF16]);
else if (lib) console.warn("this CPU has no oneDNN bf16 kernels: native bf16 is not tested");

function argmaxRow(logits: Float32Array, row: number): number {
  let best = 0;
  for (let v = 1; v < V; v++) if (logits[row * V + v] > logits[row * V + best]) best = v;
  return best;
}

for (const [precision, bounds] of precisions) {
  const make = (): Engine => createOnednnEngine(model, { precision });

  Deno.test({
    name: `[onednn ${precision}] logits of the reference sequences, alone and packed`,
    ignore,
    async fn() {
      const engine = make();
      assertEquals(engine.name, `onednn(${precision})`);
      const total = refSeqs.reduce((n, s) => n + s.ids.length, 0);
      const ids = new Int32Array(total);
      let at = 0;
      for (const s of refSeqs) {
        ids.set(s.ids, at);
        at += s.ids.length;
      }
      const packed = await engine.forward({
        embeds: engine.embed(ids),
        seqs: refSeqs.map((s) => ({ length: s.ids.length })),
        logitRows: Int32Array.from(ids, (_, i) => i),
      });
      at = 0;
      for (const [i, s] of refSeqs.entries()) {
        const T = s.ids.length;
        const { logits } = await engine.forward({
          embeds: engine.embed(s.ids),
          seqs: [{ length: T }],
          logitRows: Int32Array.from(s.ids, (_, j) => j),
        });
        const bound = bounds.logits(maxAbs(s.logits));
        const err = maxDiff(logits, s.logits);
        assert(err < bound, `seq${i}: max abs error ${err} > ${bound}`);
        const errPacked = maxDiff(packed.logits.subarray(at * V, (at + T) * V), s.logits);
        assert(errPacked < bound, `seq${i} packed: max abs error ${errPacked} > ${bound}`);
        assertEquals(argmaxRow(logits, T - 1), argmaxRow(s.logits, T - 1), `seq${i} greedy`);
        at += T;
      }
      engine.dispose();
    },
  });

  Deno.test({
    name: `[onednn ${precision}] soft-prompt loss and gradient match the PEFT reference`,
    ignore,
    async fn() {
      const engine = make();
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
      const refLoss = 0.5899635;
      assert(
        Math.abs(loss - refLoss) < bounds.lossRel * refLoss,
        `loss ${loss} vs ${refLoss} (bound ${bounds.lossRel * refLoss})`,
      );
      const ref = readFloat32(golden, "pt.grad");
      const got = new Float32Array(10 * C);
      got.set(gradEmbeds.subarray(0, 5 * C), 0);
      const second = (5 + input.length) * C;
      got.set(gradEmbeds.subarray(second, second + 5 * C), 5 * C);
      const bound = bounds.gradRel * maxAbs(ref);
      const err = maxDiff(got, ref);
      assert(err < bound, `gradient max abs error ${err} > ${bound}`);
      engine.dispose();
    },
  });

  Deno.test({
    name: `[onednn ${precision}] KV-cached decoding gives the logits of full forwards`,
    ignore,
    async fn() {
      const engine = make();
      const s = refSeqs[3];
      const T = s.ids.length;
      const cache = engine.newCache();
      await engine.forward({
        embeds: engine.embed(s.ids.subarray(0, T - 4)),
        seqs: [{ length: T - 4, cache }],
        logitRows: new Int32Array(0),
      });
      for (let t = T - 4; t < T; t++) {
        const { logits } = await engine.forward({
          embeds: engine.embed(s.ids.subarray(t, t + 1)),
          seqs: [{ length: 1, cache }],
          logitRows: Int32Array.of(0),
        });
        const ref = s.logits.subarray(t * V, (t + 1) * V);
        const bound = bounds.logits(maxAbs(ref));
        const err = maxDiff(logits, ref);
        assert(err < bound, `cached step ${t}: max abs error ${err} > ${bound}`);
      }
      assertEquals(cache.length, T);
      cache.dispose();
      engine.dispose();
    },
  });
}

Deno.test({
  name:
    "[onednn fp32] on float32 weights, decoding steps (a few rows: the shim's kernels) and batches of them give the reference logits",
  ignore,
  async fn() {
    // The shipped model is F16; widened, its matrices are float32 and decoding's products of one
    // to eight rows go through fewRowsLinear, prefill through oneDNN's matmul.
    const engine = createOnednnEngine(widened(model), { precision: "fp32" });
    try {
      const caches = refSeqs.map(() => engine.newCache());
      const K = 4;
      await engine.forward({
        embeds: engine.embed(
          Int32Array.from(refSeqs.flatMap((s) => [...s.ids.subarray(0, s.ids.length - K)])),
        ),
        seqs: refSeqs.map((s, i) => ({ length: s.ids.length - K, cache: caches[i] })),
        logitRows: new Int32Array(0),
      });
      // K - 1 steps of all four sequences at once (4 rows), then the last one sequence at a
      // time (1 row).
      const step = async (k: number, which: number[]) => {
        const { logits } = await engine.forward({
          embeds: engine.embed(Int32Array.from(which.map((i) => refSeqs[i].ids.at(-k)!))),
          seqs: which.map((i) => ({ length: 1, cache: caches[i] })),
          logitRows: Int32Array.from(which.keys()),
        });
        which.forEach((i, row) => {
          const s = refSeqs[i], t = s.ids.length - k;
          const ref = s.logits.subarray(t * V, (t + 1) * V);
          const err = maxDiff(logits.subarray(row * V, (row + 1) * V), ref);
          assert(err < 1e-4, `sequence ${i}, step ${t} (${which.length} rows): error ${err}`);
        });
      };
      for (let k = K; k > 1; k--) await step(k, [0, 1, 2, 3]);
      for (const i of [0, 1, 2, 3]) await step(1, [i]);
      caches.forEach((c) => c.dispose());
    } finally {
      engine.dispose();
    }
  },
});

/**
 * Prompt tuning end to end in each precision: the same 30 Adam steps on the reference soft prompt
 * (learning the reference example's answer) from the same start. bf16 gradients must optimise as
 * fp32 ones do: the loss falls below a tenth of its start, ends within 0.05 nats of fp32's, and
 * greedy decoding then gives the answer (exact match, the tutorial's accuracy) in every precision.
 */
Deno.test({
  name: "[onednn] prompt tuning reaches the same loss in bf16 as in fp32",
  ignore,
  async fn() {
    const input = readInt32(golden, "pt.input_ids");
    const label = readInt32(golden, "pt.label_ids");
    const finals: Record<string, { start: number; end: number }> = {};
    for (const [precision] of precisions) {
      const engine = createOnednnEngine(model, { precision });
      const prompt = readFloat32(golden, "pt.prompt").slice(); // [10, C]
      const m = new Float32Array(prompt.length), v = new Float32Array(prompt.length);
      const tail = engine.embed(Int32Array.of(...input, ...label));
      const n = 10 + input.length + label.length;
      const lossRows = Int32Array.from(label, (_, i) => n - label.length + i - 1);
      let start = 0, end = 0;
      const embeds = new Float32Array(n * C);
      for (let step = 1; step <= 30; step++) {
        embeds.set(prompt);
        embeds.set(tail, 10 * C);
        const { loss, gradEmbeds } = await engine.lossAndGrad({
          embeds,
          seqs: [{ length: n }],
          lossRows,
          targets: label,
        });
        if (step === 1) start = loss;
        end = loss;
        const lr = 0.01, b1 = 0.9, b2 = 0.999;
        for (let i = 0; i < prompt.length; i++) {
          const g = gradEmbeds[i];
          m[i] = b1 * m[i] + (1 - b1) * g;
          v[i] = b2 * v[i] + (1 - b2) * g * g;
          const mh = m[i] / (1 - b1 ** step), vh = v[i] / (1 - b2 ** step);
          prompt[i] -= lr * mh / (Math.sqrt(vh) + 1e-8);
        }
      }
      finals[precision] = { start, end };
      embeds.set(prompt);
      const { logits } = await engine.forward({
        embeds,
        seqs: [{ length: n }],
        logitRows: lossRows,
      });
      const answer = Array.from(label, (_, i) => argmaxRow(logits, i));
      assertEquals(answer, Array.from(label), `${precision}: greedy answer after tuning`);
      engine.dispose();
    }
    const fp32 = finals.fp32;
    for (const [p, r] of Object.entries(finals)) {
      assert(r.end < 0.1 * r.start, `${p} did not learn: ${JSON.stringify(r)}`);
      assert(
        Math.abs(r.end - fp32.end) < 0.05,
        `${p} ends at ${r.end}, fp32 at ${fp32.end} (${JSON.stringify(finals)})`,
      );
    }
  },
});

/**
 * Training batches vary in shape, and the engine's scratch buffers are grow-only, each with its
 * own growth history: a batch may find its saved activations longer than the backward buffers
 * derived from them. The gradient must still be the one a fresh engine computes (regression: the
 * attention backward compared buffer lengths instead of the extents it addresses, and failed
 * training jobs in the service with "dqkv and dp must be as large as qkv and probs").
 */
Deno.test({
  name: "[onednn] batches of varying shapes get a fresh engine's loss and gradient",
  ignore,
  async fn() {
    const C = model.config.nEmbd;
    const batch = (lengths: number[], answer: number) => {
      const n = lengths.reduce((a, b) => a + b, 0);
      // The loss on `answer` rows of each sequence, early in it (the last block then computes
      // nearly every row: its attention buffers are nearly the size of the other blocks').
      const rows: number[] = [];
      let start = 0;
      for (const len of lengths) {
        for (let i = 0; i < answer; i++) rows.push(start + 4 + i);
        start += len;
      }
      return {
        embeds: rand(n * C, n, 0.1),
        seqs: lengths.map((length) => ({ length })),
        lossRows: Int32Array.from(rows),
        targets: Int32Array.from(rows, (r) => (r * 7) % 1000),
      };
    };
    const used = createOnednnEngine(model, { precision: "fp32" });
    try {
      // Batches of a sentiment training job that failed so: the second batch's attention
      // probabilities outgrow the first's, the shared backward buffer does not (its growth
      // followed the first batch's pruned last layer).
      const shapes: Array<[number[], number]> = [
        [[47, 59], 3],
        [[59, 54], 3],
        [[55, 44], 2],
        [[12, 9], 1],
      ];
      for (const [lengths, answer] of shapes) {
        const b = batch(lengths, answer);
        const got = await used.lossAndGrad(b);
        const fresh = createOnednnEngine(model, { precision: "fp32" });
        const want = await fresh.lossAndGrad(b);
        fresh.dispose();
        const what = JSON.stringify(lengths);
        assert(Math.abs(got.loss - want.loss) < 1e-5, `${what}: loss ${got.loss} vs ${want.loss}`);
        assert(
          maxDiff(got.gradEmbeds, want.gradEmbeds) < 1e-5 * Math.max(1, maxAbs(want.gradEmbeds)),
          `${what}: gradient`,
        );
      }
    } finally {
      used.dispose();
    }
  },
});
