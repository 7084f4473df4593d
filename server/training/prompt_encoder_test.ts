import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { createRequire } from "node:module";
import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import {
  createPromptEncoder,
  encoderGradFromOutputGrad,
  encoderOutput,
  type PromptEncoder,
  type PromptEncoderOptions,
} from "./prompt_encoder.ts";

// The CommonJS bundle registers the gradients (the ESM entry for them does not load under Deno).
createRequire(import.meta.url)("@tensorflow/tfjs");
await tf.setBackend("cpu");

const FIXTURE = new URL("../../test/fixtures/penc/penc.safetensors", import.meta.url);
const golden = parseSafetensors(await Deno.readFile(FIXTURE), "penc.safetensors");

function referenceOptions(kind: "lstm" | "mlp"): PromptEncoderOptions {
  // The reference encoders: num_virtual_tokens 6, token_dim 256, hidden 32, 2 layers.
  return { kind, numVirtualTokens: 6, tokenDim: 256, hiddenSize: 32, numLayers: 2, seed: 1 };
}

function prefix(kind: "lstm" | "mlp"): string {
  return kind === "lstm" ? "penc.LSTM" : "penc.MLP";
}

function loadReference(kind: "lstm" | "mlp"): PromptEncoder {
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

function checkAgainstReference(kind: "lstm" | "mlp") {
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

Deno.test("MLP encoder output and gradients match PEFT within 1e-4", () => {
  checkAgainstReference("mlp");
});

Deno.test("createPromptEncoder() names and shapes parameters as PyTorch does", () => {
  for (const kind of ["lstm", "mlp"] as const) {
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
  const a = createPromptEncoder(referenceOptions("mlp"));
  const b = createPromptEncoder({ ...referenceOptions("mlp"), seed: 99 });
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
  const enc = createPromptEncoder(referenceOptions("mlp"));
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
    'kind must be "lstm" or "mlp": found "gru"',
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
    () => createPromptEncoder({ ...base, kind: "mlp", numLayers: 3 }),
    RangeError,
    'numLayers must be 2 for kind "mlp"',
  );
});

Deno.test("encoderGradFromOutputGrad() rejects a gradient of the wrong size", () => {
  const enc = createPromptEncoder(referenceOptions("mlp"));
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

Deno.test("LSTM encoder matches the reference on the wasm backend too", async () => {
  setWasmPaths(
    new URL("../../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url).href,
  );
  await tf.setBackend("wasm");
  try {
    assertEquals(tf.getBackend(), "wasm");
    checkAgainstReference("lstm");
    checkAgainstReference("mlp");
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
