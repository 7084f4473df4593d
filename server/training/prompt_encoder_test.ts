import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { createRequire } from "node:module";
import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import { DiskTaskStore } from "../registry/disk_store.ts";
import {
  createPromptEncoder,
  dropoutMasks,
  encoderGradFromOutputGrad,
  type EncoderKind,
  encoderOutput,
  type PromptEncoder,
  type PromptEncoderOptions,
} from "./prompt_encoder.ts";

// The CommonJS bundle registers the gradients (the ESM entry for them does not load under Deno).
createRequire(import.meta.url)("@tensorflow/tfjs");
await tf.setBackend("cpu");

const FIXTURE = new URL("../../test/fixtures/penc/penc.safetensors", import.meta.url);
const golden = parseSafetensors(await Deno.readFile(FIXTURE), "penc.safetensors");

type ReferenceKind = "lstm" | "peft_mlp";

function referenceOptions(kind: EncoderKind): PromptEncoderOptions {
  // The reference encoders: num_virtual_tokens 6, token_dim 256, hidden 32, 2 layers.
  return { kind, numVirtualTokens: 6, tokenDim: 256, hiddenSize: 32, numLayers: 2, seed: 1 };
}

function prefix(kind: ReferenceKind): string {
  return kind === "lstm" ? "penc.LSTM" : "penc.MLP";
}

function loadReference(kind: ReferenceKind): PromptEncoder {
  const enc = createPromptEncoder(referenceOptions(kind));
  const p = `${prefix(kind)}.param.`;
  const state: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [name, info] of golden.tensors) {
    if (name.startsWith(p)) {
      state[name.slice(p.length)] = { shape: info.shape, data: readFloat32(golden, name) };
    }
  }
  enc.loadState(state);
  return enc;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assertEquals(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function checkAgainstReference(kind: ReferenceKind) {
  const enc = loadReference(kind);
  try {
    const out = encoderOutput(enc);
    const outDiff = maxAbsDiff(out, readFloat32(golden, `${prefix(kind)}.out`));
    assert(outDiff < 1e-4, `${kind} output differs by ${outDiff}`);

    const grads = encoderGradFromOutputGrad(enc, readFloat32(golden, `${prefix(kind)}.R`));
    const expectedNames = [...golden.tensors.keys()]
      .filter((k) => k.startsWith(`${prefix(kind)}.grad.`))
      .map((k) => k.slice(`${prefix(kind)}.grad.`.length))
      .sort();
    assertEquals([...grads.keys()].sort(), expectedNames);
    for (const name of expectedNames) {
      const d = maxAbsDiff(grads.get(name)!, readFloat32(golden, `${prefix(kind)}.grad.${name}`));
      assert(d < 1e-4, `${kind} gradient of ${name} differs by ${d}`);
    }
  } finally {
    enc.dispose();
  }
}

Deno.test("LSTM encoder output and gradients match PEFT within 1e-4", () => {
  checkAgainstReference("lstm");
});

Deno.test("PEFT's MLP encoder (peft_mlp) output and gradients match PEFT within 1e-4", () => {
  checkAgainstReference("peft_mlp");
});

Deno.test("createPromptEncoder() names and shapes parameters as PyTorch does", () => {
  for (const kind of ["lstm", "peft_mlp"] as const) {
    const enc = createPromptEncoder(referenceOptions(kind));
    try {
      const p = `${prefix(kind)}.param.`;
      const expected = [...golden.tensors.entries()]
        .filter(([k]) => k.startsWith(p))
        .map(([k, info]) => [k.slice(p.length), info.shape]);
      const actual = [...enc.params.entries()].map(([k, v]) => [k, v.shape]);
      assertEquals(
        new Map(actual as [string, number[]][]),
        new Map(expected as [string, number[]][]),
      );
    } finally {
      enc.dispose();
    }
  }
});

Deno.test("createPromptEncoder() initialises like PyTorch, deterministically from the seed", () => {
  const opts = referenceOptions("lstm");
  const a = createPromptEncoder(opts);
  const b = createPromptEncoder(opts);
  const c = createPromptEncoder({ ...opts, seed: 2 });
  try {
    const sa = a.state(), sb = b.state(), sc = c.state();
    for (const name of Object.keys(sa)) {
      assertEquals(sa[name].data, sb[name].data, `${name} differs for the same seed`);
      assert(maxAbsDiff(sa[name].data, sc[name].data) > 0, `${name} equal across seeds`);
    }
    // LSTM weights are uniform in +-1/sqrt(h); Linear weights in +-1/sqrt(fan_in).
    const lstmBound = 1 / Math.sqrt(32);
    const w = sa["lstm_head.weight_ih_l0"].data;
    assert(w.every((x) => Math.abs(x) <= lstmBound));
    assert(Math.max(...w) > 0.9 * lstmBound && Math.min(...w) < -0.9 * lstmBound);
    const linBound = 1 / Math.sqrt(64);
    assert(sa["mlp_head.2.weight"].data.every((x) => Math.abs(x) <= linBound));
    // Embedding rows are N(0, 1): check the first two moments over 1536 draws.
    const e = sa["embedding.weight"].data;
    const mean = e.reduce((s, x) => s + x, 0) / e.length;
    const variance = e.reduce((s, x) => s + (x - mean) ** 2, 0) / e.length;
    assert(Math.abs(mean) < 0.1, `embedding mean ${mean}`);
    assert(Math.abs(variance - 1) < 0.15, `embedding variance ${variance}`);
  } finally {
    a.dispose();
    b.dispose();
    c.dispose();
  }
});

Deno.test("state() and loadState() round-trip every parameter", () => {
  const a = createPromptEncoder(referenceOptions("peft_mlp"));
  const b = createPromptEncoder({ ...referenceOptions("peft_mlp"), seed: 99 });
  try {
    b.loadState(a.state());
    assertEquals(encoderOutput(b), encoderOutput(a));
    // state() hands out copies: editing one must not reach the encoder.
    const s = a.state();
    s["embedding.weight"].data.fill(0);
    assert(a.state()["embedding.weight"].data.some((x) => x !== 0));
  } finally {
    a.dispose();
    b.dispose();
  }
});

Deno.test("loadState() rejects missing, unknown and misshapen parameters and keeps the old state", () => {
  const enc = createPromptEncoder(referenceOptions("peft_mlp"));
  try {
    const before = enc.state();
    const missing = enc.state();
    delete missing["mlp_head.2.bias"];
    assertThrows(() => enc.loadState(missing), RangeError, "missing parameter mlp_head.2.bias");

    const unknown = {
      ...enc.state(),
      "mlp_head.6.bias": { shape: [1], data: new Float32Array(1) },
    };
    assertThrows(() => enc.loadState(unknown), RangeError, "unknown parameter(s) mlp_head.6.bias");

    const wrong = enc.state();
    wrong["embedding.weight"] = { shape: [5, 256], data: new Float32Array(5 * 256) };
    assertThrows(
      () => enc.loadState(wrong),
      RangeError,
      "embedding.weight has shape [5,256] (1280 values): expected [6,256] (1536 values)",
    );
    // A bad state must not have been partly applied.
    const after = enc.state();
    for (const name of Object.keys(before)) assertEquals(after[name].data, before[name].data);
  } finally {
    enc.dispose();
  }
});

Deno.test("createPromptEncoder() rejects invalid options naming the field", () => {
  const base = referenceOptions("lstm");
  assertThrows(
    () => createPromptEncoder({ ...base, kind: "gru" as "lstm" }),
    RangeError,
    'kind must be one of "tpmlp", "mlp", "lstm", "peft_mlp", "embedding": found "gru"',
  );
  assertThrows(
    () => createPromptEncoder({ ...base, numVirtualTokens: 0 }),
    RangeError,
    "numVirtualTokens must be a positive integer: found 0",
  );
  assertThrows(
    () => createPromptEncoder({ ...base, hiddenSize: 2.5 }),
    RangeError,
    "hiddenSize must be a positive integer: found 2.5",
  );
  assertThrows(
    () => createPromptEncoder({ ...base, kind: "peft_mlp", numLayers: 3 }),
    RangeError,
    'numLayers must be 2 for kind "peft_mlp" (its depth is fixed',
  );
  assertThrows(
    () => createPromptEncoder({ ...base, kind: "tpmlp", numLayers: 3 }),
    RangeError,
    'numLayers must be 2 for kind "tpmlp"',
  );
  // NeMo raises for num_layers <= 1.
  assertThrows(
    () => createPromptEncoder({ ...base, kind: "mlp", numLayers: 1 }),
    RangeError,
    'numLayers must be at least 2 for kind "mlp"',
  );
  for (const initStd of [0, -0.02, Number.NaN]) {
    assertThrows(
      () => createPromptEncoder({ ...base, kind: "tpmlp", initStd }),
      RangeError,
      "initStd must be a positive finite number",
    );
  }
});

Deno.test("encoderGradFromOutputGrad() rejects a gradient of the wrong size", () => {
  const enc = createPromptEncoder(referenceOptions("peft_mlp"));
  try {
    assertThrows(
      () => encoderGradFromOutputGrad(enc, new Float32Array(10)),
      RangeError,
      "6 x 256 = 1536 values: found 10",
    );
  } finally {
    enc.dispose();
  }
});

Deno.test("forward, gradients and dispose() leave no tensors behind", () => {
  const before = tf.memory().numTensors;
  const enc = createPromptEncoder({ ...referenceOptions("lstm"), numLayers: 3 });
  const withParams = tf.memory().numTensors;
  assertEquals(withParams - before, enc.params.size);
  encoderOutput(enc);
  encoderGradFromOutputGrad(enc, new Float32Array(6 * 256).fill(0.5));
  enc.loadState(enc.state());
  assertEquals(tf.memory().numTensors, withParams);
  enc.dispose();
  assertEquals(tf.memory().numTensors, before);
  assertThrows(() => enc.forward(), TypeError, "after dispose()");
});

Deno.test("tpmlp and NeMo's mlp give the same outputs and gradients on the wasm backend as on cpu", async () => {
  const encoders = [small("tpmlp", { initStd: 0.5 }), small("mlp", { numLayers: 3 })];
  const r = Float32Array.from({ length: 12 }, (_, i) => Math.cos(0.7 * i));
  const run = () =>
    encoders.map((e) => ({ out: encoderOutput(e), grads: encoderGradFromOutputGrad(e, r) }));
  try {
    const onCpu = run();
    setWasmPaths(
      new URL("../../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url).href,
    );
    await tf.setBackend("wasm");
    try {
      assertEquals(tf.getBackend(), "wasm");
      const onWasm = run();
      onCpu.forEach((c, k) => {
        assert(maxAbsDiff(c.out, onWasm[k].out) < 1e-5, `encoder ${k} output`);
        for (const [name, g] of c.grads) {
          assert(maxAbsDiff(g, onWasm[k].grads.get(name)!) < 1e-5, `encoder ${k} ${name}`);
        }
      });
    } finally {
      await tf.setBackend("cpu");
    }
  } finally {
    encoders.forEach((e) => e.dispose());
  }
});

Deno.test("LSTM encoder matches the reference on the wasm backend too", async () => {
  setWasmPaths(
    new URL("../../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url).href,
  );
  await tf.setBackend("wasm");
  try {
    assertEquals(tf.getBackend(), "wasm");
    checkAgainstReference("lstm");
    checkAgainstReference("peft_mlp");
  } finally {
    await tf.setBackend("cpu");
  }
});

Deno.test("an LSTM encoder over segments keeps each task's rows independent of the others'", () => {
  const enc = createPromptEncoder({
    kind: "lstm",
    numVirtualTokens: 5,
    tokenDim: 8,
    hiddenSize: 4,
    numLayers: 2,
    seed: 3,
    segments: [2, 3],
  });
  try {
    const before = encoderOutput(enc);
    const state = enc.state();
    const emb = state["embedding.weight"].data;
    for (let i = 2 * 8; i < emb.length; i++) emb[i] += 1; // change only the second task's rows
    enc.loadState(state);
    const after = encoderOutput(enc);
    assertEquals(Array.from(after.subarray(0, 16)), Array.from(before.subarray(0, 16)));
    assert(after.subarray(16).some((v, i) => v !== before[16 + i]), "the second task's rows moved");
  } finally {
    enc.dispose();
  }
  assertThrows(
    () =>
      createPromptEncoder({
        kind: "lstm",
        numVirtualTokens: 5,
        tokenDim: 8,
        hiddenSize: 4,
        seed: 1,
        segments: [2, 2],
      }),
    RangeError,
    "segments must sum to numVirtualTokens (5): current sum is 4",
  );
});

// --- NeMo's encoders (tpmlp, mlp) and the PEFT/NeMo naming of the MLPs ---

function small(kind: EncoderKind, extra: Partial<PromptEncoderOptions> = {}): PromptEncoder {
  return createPromptEncoder({
    kind,
    numVirtualTokens: 3,
    tokenDim: 4,
    hiddenSize: 5,
    seed: 7,
    ...extra,
  });
}

function shapes(enc: PromptEncoder): [string, number[]][] {
  return [...enc.params.entries()].map(([k, v]) => [k, v.shape]);
}

Deno.test("NeMo's mlp with numLayers 2 has exactly two Linear layers, named as nn.Sequential names them", () => {
  // Before the NeMo/PEFT split, "mlp" with num_layers 2 built PEFT's three Linear layers.
  const enc = small("mlp", { numLayers: 2 });
  try {
    assertEquals(shapes(enc), [
      ["embedding.weight", [3, 4]],
      ["mlp_head.0.weight", [5, 4]],
      ["mlp_head.0.bias", [5]],
      ["mlp_head.2.weight", [4, 5]],
      ["mlp_head.2.bias", [4]],
    ]);
  } finally {
    enc.dispose();
  }
  const deep = small("mlp", { numLayers: 4 });
  try {
    assertEquals(shapes(deep), [
      ["embedding.weight", [3, 4]],
      ["mlp_head.0.weight", [5, 4]],
      ["mlp_head.0.bias", [5]],
      ["mlp_head.2.weight", [5, 5]],
      ["mlp_head.2.bias", [5]],
      ["mlp_head.4.weight", [5, 5]],
      ["mlp_head.4.bias", [5]],
      ["mlp_head.6.weight", [4, 5]],
      ["mlp_head.6.bias", [4]],
    ]);
  } finally {
    deep.dispose();
  }
});

Deno.test("tpmlp names its parameters as NeMo's TPMLP (first, second) and peft_mlp keeps three layers", () => {
  const enc = small("tpmlp");
  try {
    assertEquals(shapes(enc), [
      ["embedding.weight", [3, 4]],
      ["tpmlp.first.weight", [5, 4]],
      ["tpmlp.first.bias", [5]],
      ["tpmlp.second.weight", [4, 5]],
      ["tpmlp.second.bias", [4]],
    ]);
    assertEquals(encoderOutput(enc).length, 3 * 4);
  } finally {
    enc.dispose();
  }
  const peft = small("peft_mlp");
  try {
    assertEquals(shapes(peft).map(([k]) => k), [
      "embedding.weight",
      "mlp_head.0.weight",
      "mlp_head.0.bias",
      "mlp_head.2.weight",
      "mlp_head.2.bias",
      "mlp_head.4.weight",
      "mlp_head.4.bias",
    ]);
  } finally {
    peft.dispose();
  }
});

function t(shape: number[], data: number[]) {
  return { shape, data: Float32Array.from(data) };
}

function assertClose(actual: ArrayLike<number>, expected: number[], tol: number) {
  const d = maxAbsDiff(actual, expected);
  assert(d <= tol, `differs by ${d}: ${JSON.stringify(Array.from(actual))} vs ${expected}`);
}

Deno.test("tpmlp computes Linear -> tanh-approximated GELU -> Linear (hand-computed case)", () => {
  const enc = createPromptEncoder({
    kind: "tpmlp",
    numVirtualTokens: 2,
    tokenDim: 2,
    hiddenSize: 2,
    seed: 1,
  });
  try {
    enc.loadState({
      "embedding.weight": t([2, 2], [1, 0, 0, 2]),
      "tpmlp.first.weight": t([2, 2], [1, 0, 0.5, -1]),
      "tpmlp.first.bias": t([2], [0, 1]),
      "tpmlp.second.weight": t([2, 2], [1, 1, 2, 0]),
      "tpmlp.second.bias": t([2], [0.5, -0.5]),
    });
    // Hidden pre-activations [[1, 1.5], [0, -1]]; gelu(x) = 0.5x(1 + tanh(0.79788456x(1 +
    // 0.044715x^2))): gelu(1) = 0.84119199, gelu(1.5) = 1.39957158, gelu(-1) = -0.15880801.
    // The exact erf GELU would give 0.34134475 for the third value: 1.5e-4 away.
    assertClose(encoderOutput(enc), [2.74076357, 1.18238398, 0.34119199, -0.5], 1e-5);
  } finally {
    enc.dispose();
  }
});

Deno.test("NeMo's mlp computes Linear -> ReLU -> Linear (hand-computed case)", () => {
  const enc = createPromptEncoder({
    kind: "mlp",
    numVirtualTokens: 2,
    tokenDim: 2,
    hiddenSize: 3,
    numLayers: 2,
    seed: 1,
  });
  try {
    enc.loadState({
      "embedding.weight": t([2, 2], [1, -2, 0.5, 0.5]),
      "mlp_head.0.weight": t([3, 2], [1, 1, 2, 0, 0, 1]),
      "mlp_head.0.bias": t([3], [0, -1, 0.5]),
      "mlp_head.2.weight": t([2, 3], [1, 2, 3, -1, 0.5, 4]),
      "mlp_head.2.bias": t([2], [0.25, 0]),
    });
    // Hidden pre-activations [[-1, 1, -1.5], [1, 0, 1]] -> ReLU [[0, 1, 0], [1, 0, 1]].
    assertClose(encoderOutput(enc), [2.25, 0.5, 4.25, 3], 1e-6);
  } finally {
    enc.dispose();
  }
});

Deno.test("NeMo's mlp with numLayers 3 is PEFT's MLP: it reproduces the PEFT reference", () => {
  const enc = createPromptEncoder({ ...referenceOptions("mlp"), numLayers: 3 });
  const ref = loadReference("peft_mlp");
  try {
    enc.loadState(ref.state());
    const d = maxAbsDiff(encoderOutput(enc), readFloat32(golden, "penc.MLP.out"));
    assert(d < 1e-4, `output differs by ${d}`);
  } finally {
    enc.dispose();
    ref.dispose();
  }
});

function moments(a: Float32Array): { mean: number; std: number } {
  const mean = a.reduce((s, x) => s + x, 0) / a.length;
  const variance = a.reduce((s, x) => s + (x - mean) ** 2, 0) / a.length;
  return { mean, std: Math.sqrt(variance) };
}

Deno.test("tpmlp initialises as NeMo: weights N(0, initStd), zero biases, N(0, 1) embedding", () => {
  for (const initStd of [undefined, 0.1]) {
    const enc = createPromptEncoder({
      kind: "tpmlp",
      numVirtualTokens: 6,
      tokenDim: 256,
      hiddenSize: 128,
      seed: 5,
      initStd,
    });
    try {
      const s = enc.state();
      const want = initStd ?? 0.023;
      for (const w of ["tpmlp.first.weight", "tpmlp.second.weight"]) {
        const { mean, std } = moments(s[w].data); // 32768 draws
        assert(Math.abs(std / want - 1) < 0.03, `${w} std ${std}, expected ${want}`);
        assert(Math.abs(mean) < 0.05 * want, `${w} mean ${mean}`);
      }
      for (const b of ["tpmlp.first.bias", "tpmlp.second.bias"]) {
        assert(s[b].data.every((x) => x === 0), `${b} is not zero`);
      }
      const e = moments(s["embedding.weight"].data);
      assert(
        Math.abs(e.mean) < 0.1 && Math.abs(e.std - 1) < 0.08,
        `embedding ${JSON.stringify(e)}`,
      );
    } finally {
      enc.dispose();
    }
  }
});

Deno.test("NeMo's mlp initialises its Linear layers as PyTorch does (uniform +-1/sqrt(fan_in))", () => {
  const enc = createPromptEncoder({
    kind: "mlp",
    numVirtualTokens: 6,
    tokenDim: 256,
    hiddenSize: 64,
    numLayers: 3,
    seed: 5,
  });
  try {
    const s = enc.state();
    for (const [name, fanIn] of [["mlp_head.0", 256], ["mlp_head.2", 64], ["mlp_head.4", 64]]) {
      const bound = 1 / Math.sqrt(fanIn as number);
      for (const part of ["weight", "bias"]) {
        const v = s[`${name}.${part}`].data;
        assert(v.every((x) => Math.abs(x) <= bound), `${name}.${part} exceeds ${bound}`);
        assert(Math.max(...v) > 0.8 * bound && Math.min(...v) < -0.8 * bound, `${name}.${part}`);
      }
    }
  } finally {
    enc.dispose();
  }
});

/** Central finite differences of sum(encoder() * r) against encoderGradFromOutputGrad(). */
function checkGradientsByFiniteDifferences(enc: PromptEncoder) {
  const { numVirtualTokens: n, tokenDim: d } = enc.options;
  const r = Float32Array.from({ length: n * d }, (_, i) => Math.sin(1.3 * i + 0.2));
  const loss = () => encoderOutput(enc).reduce((s, x, i) => s + x * r[i], 0);
  const analytic = encoderGradFromOutputGrad(enc, r);
  const base = enc.state();
  // Small enough that no ReLU input of these seeded encoders crosses zero, large for float32.
  const eps = 1e-3;
  let checked = 0;
  for (const [name, tensor] of Object.entries(base)) {
    for (let i = 0; i < tensor.data.length; i++) {
      const at = (delta: number) => {
        const s = { ...base, [name]: { shape: tensor.shape, data: tensor.data.slice() } };
        s[name].data[i] += delta; // only this entry moves from the base state
        enc.loadState(s);
        return loss();
      };
      const numeric = (at(eps) - at(-eps)) / (2 * eps);
      const a = analytic.get(name)![i];
      assert(
        Math.abs(numeric - a) <= 2e-3 * Math.max(1, Math.abs(a)),
        `${enc.options.kind} d/d ${name}[${i}]: analytic ${a}, finite differences ${numeric}`,
      );
      checked++;
    }
  }
  enc.loadState(base);
  assertEquals(checked, [...enc.params.values()].reduce((s, v) => s + v.size, 0));
}

Deno.test("tpmlp and NeMo's mlp gradients agree with finite differences", () => {
  for (
    const enc of [
      small("tpmlp", { initStd: 0.5 }), // a std large enough that the GELU is not near-linear
      small("mlp", { numLayers: 2 }),
      small("mlp", { numLayers: 3 }),
    ]
  ) {
    try {
      checkGradientsByFiniteDifferences(enc);
    } finally {
      enc.dispose();
    }
  }
});

Deno.test("tpmlp, NeMo's mlp and embedding leave no tensors behind", () => {
  for (const kind of ["tpmlp", "mlp", "embedding"] as const) {
    const before = tf.memory().numTensors;
    const enc = small(kind, { numLayers: kind === "mlp" ? 3 : 2 });
    const withParams = tf.memory().numTensors;
    encoderOutput(enc);
    encoderGradFromOutputGrad(enc, new Float32Array(3 * 4).fill(0.5));
    assertEquals(tf.memory().numTensors, withParams);
    enc.dispose();
    assertEquals(tf.memory().numTensors, before);
  }
});

Deno.test('an encoder stored as "mlp" before the NeMo/PEFT split rebuilds as peft_mlp and reproduces its table', async () => {
  const root = await Deno.makeTempDir({ prefix: "legacy_encoder_" });
  try {
    const legacy = new URL("../../test/fixtures/registry_legacy_mlp/legacy/v1/", import.meta.url);
    await Deno.mkdir(`${root}/legacy/v1`, { recursive: true });
    for (const f of ["meta.json", "table.safetensors", "encoder.safetensors"]) {
      await Deno.copyFile(new URL(f, legacy), `${root}/legacy/v1/${f}`);
    }
    const v = await (await DiskTaskStore.open(root)).get("legacy");
    const st = v.encoderState!;
    const cfg = st.config as { hidden_size: number; num_layers: number };
    const enc = createPromptEncoder({
      kind: st.kind,
      numVirtualTokens: v.totalVirtualTokens,
      tokenDim: v.hiddenSize,
      hiddenSize: cfg.hidden_size,
      numLayers: cfg.num_layers,
      seed: 0,
    });
    try {
      enc.loadState(st.tensors);
      assertEquals(encoderOutput(enc), v.table);
    } finally {
      enc.dispose();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

interface LstmDropoutReference {
  numVirtualTokens: number;
  tokenDim: number;
  hiddenSize: number;
  numLayers: number;
  dropout: number;
  params: Record<string, { shape: number[]; data: number[] }>;
  masks: number[][];
  outEval: number[];
  outTrain: number[];
  R: number[];
  grads: Record<string, number[]>;
}

/** torch 1.13's nn.LSTM with dropout 0.3, made by test/fixtures/penc/gen_lstm_dropout_torch.py. */
const lstmDropout: LstmDropoutReference = JSON.parse(
  await Deno.readTextFile(
    new URL("../../test/fixtures/penc/lstm_dropout_torch.json", import.meta.url),
  ),
);

function lstmDropoutEncoder(): PromptEncoder {
  const r = lstmDropout;
  const enc = createPromptEncoder({
    kind: "lstm",
    numVirtualTokens: r.numVirtualTokens,
    tokenDim: r.tokenDim,
    hiddenSize: r.hiddenSize,
    numLayers: r.numLayers,
    dropout: r.dropout,
    seed: 1,
  });
  enc.loadState(r.params);
  return enc;
}

Deno.test("NeMo parity: the LSTM's dropout is torch's, between layers, in training passes only", () => {
  // NeMo prompt_encoder.py v1.20.0:237-244 builds nn.LSTM(..., dropout=lstm_dropout), which
  // drops the outputs of every layer but the last in train mode; :339-349 computes the
  // inference table in eval mode. Before, any dropout but 0 was refused.
  const enc = lstmDropoutEncoder();
  try {
    const evalDiff = maxAbsDiff(encoderOutput(enc), lstmDropout.outEval);
    assert(evalDiff < 1e-5, `eval output differs from torch's by ${evalDiff}`);
    const masks = lstmDropout.masks.map((m) => Float32Array.from(m));
    const trainDiff = maxAbsDiff(encoderOutput(enc, masks), lstmDropout.outTrain);
    assert(trainDiff < 1e-5, `training pass differs from torch's by ${trainDiff}`);
    const grads = encoderGradFromOutputGrad(enc, Float32Array.from(lstmDropout.R), masks);
    assertEquals([...grads.keys()].sort(), Object.keys(lstmDropout.grads).sort());
    for (const [name, want] of Object.entries(lstmDropout.grads)) {
      const d = maxAbsDiff(grads.get(name)!, want);
      assert(d < 1e-5, `gradient of ${name} differs from torch's by ${d}`);
    }
    assertThrows(
      () => encoderOutput(enc, masks.slice(1)),
      RangeError,
      "dropout masks must be 2 of 40 values",
    );
  } finally {
    enc.dispose();
  }
});

Deno.test("dropoutMasks(): torch's scaling, the rate drawn, the same seed the same masks", () => {
  const enc = createPromptEncoder({
    kind: "lstm",
    numVirtualTokens: 40,
    tokenDim: 8,
    hiddenSize: 50,
    numLayers: 3,
    dropout: 0.25,
    seed: 3,
  });
  const none = small("lstm");
  const mlp = small("mlp");
  try {
    const a = dropoutMasks(enc, 11)!, b = dropoutMasks(enc, 11)!, c = dropoutMasks(enc, 12)!;
    assertEquals(a.length, 2);
    assertEquals(a, b);
    assert(maxAbsDiff(a[0], c[0]) > 0, "another seed draws other masks");
    assert(maxAbsDiff(a[0], a[1]) > 0, "each layer draws its own mask");
    for (const m of a) {
      assertEquals(m.length, 40 * 2 * 50);
      // torch.nn.functional.dropout: kept values are scaled by 1 / (1 - p).
      assert(m.every((v) => v === 0 || Math.abs(v - 1 / 0.75) < 1e-6));
      const dropped = m.filter((v) => v === 0).length / m.length;
      assert(Math.abs(dropped - 0.25) < 0.03, `dropped ${dropped} of the values, not 0.25`);
    }
    // Without dropout a training pass is the eval forward.
    assertEquals(dropoutMasks(none, 11), undefined);
    assertEquals(dropoutMasks(mlp, 11), undefined);
    assertThrows(
      () => small("mlp", { dropout: 0.1 }),
      RangeError,
      'dropout must be 0 for kind "mlp" (only the LSTM has dropout)',
    );
    assertThrows(
      () => small("lstm", { dropout: 1 }),
      RangeError,
      "dropout must be a number in [0, 1)",
    );
  } finally {
    enc.dispose();
    none.dispose();
    mlp.dispose();
  }
});

Deno.test("NeMo parity: the embedding encoder is its Xavier-normal embedding, trained directly", () => {
  // NeMo prompt_encoder.py v1.20.0:233-234: init.xavier_normal_(self.embedding.weight);
  // :321-323: output_embeds = input_embeds. Before, encoder_type embedding was refused.
  const n = 40, d = 60;
  const enc = small("embedding", { numVirtualTokens: n, tokenDim: d });
  try {
    assertEquals(shapes(enc), [["embedding.weight", [n, d]]]);
    const w = enc.state()["embedding.weight"].data;
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    // xavier_normal_: std = sqrt(2 / (fan_in + fan_out)) (torch/nn/init.py).
    const want = Math.sqrt(2 / (n + d));
    assert(Math.abs(std / want - 1) < 0.06, `embedding std ${std}, want ${want}`);
    assertEquals(encoderOutput(enc), w);
    const R = Float32Array.from({ length: n * d }, (_, i) => Math.sin(i));
    assertEquals(encoderGradFromOutputGrad(enc, R).get("embedding.weight"), R);
    // The output is a copy: disposing it leaves the parameter.
    enc.forward().dispose();
    assertEquals(encoderOutput(enc), w);
  } finally {
    enc.dispose();
  }
});
