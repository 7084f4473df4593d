/**
 * Lean loading (tensor_file.ts, mmap.ts, shared_weights.ts): float32 weights are views of the
 * mapped file, other dtypes decoded into shared memory; the numbers and the weights hash are the
 * same whether the file is mapped or read; the engine worker sees the mapped weights without a
 * copy and computes the same logits.
 */
import { assert, assertEquals } from "../../test/assert.ts";
import { hashWeights, loadModel } from "./loader.ts";
import { canMap, isMapped } from "./mmap.ts";
import { createEngine } from "./mod.ts";
import { randomGpt2, writeHfCheckpoint } from "./testing/gpt2_checkpoint.ts";
import { asGpt2, type LoadedModel, type ModelWeights, weightArrays } from "./weights.ts";
import { isPacked, toFloat32 } from "./half.ts";
import { createWorkerEngine } from "./worker_engine.ts";

const SHAPE = { nEmbd: 64, nHead: 4, nLayer: 2, vocabSize: 300, nPositions: 64 };

/** Every array the weights hold (a 16-bit matrix as its bits). */
function arrays(w: ModelWeights): Array<Float32Array | Uint16Array> {
  return weightArrays(w).map((m) => {
    if (!isPacked(m)) return m;
    if (m.dtype === "int8") throw new Error("a loaded checkpoint is never int8"); // quantised later
    return m.bits;
  });
}

function assertSameWeights(a: LoadedModel, b: LoadedModel): void {
  const x = arrays(a.weights), y = arrays(b.weights);
  assertEquals(x.length, y.length);
  for (let i = 0; i < x.length; i++) {
    assertEquals(x[i].length, y[i].length);
    assertEquals(x[i].constructor, y[i].constructor);
    // Bit patterns, not values: NaN payloads and -0 must survive too.
    const bits = (a: Float32Array | Uint16Array) =>
      a instanceof Uint16Array ? a : new Uint32Array(a.buffer, a.byteOffset, a.length);
    const u = bits(x[i]), v = bits(y[i]);
    for (let k = 0; k < u.length; k++) {
      if (u[k] !== v[k]) throw new Error(`array ${i} differs at ${k}: ${x[i][k]} vs ${y[i][k]}`);
    }
  }
}

async function withCheckpoint(
  fn: (dir: string, m: LoadedModel) => Promise<void>,
  opts: { dtype?: "F32" | "F16" | "BF16"; untied?: boolean } = {},
): Promise<void> {
  const m = randomGpt2(SHAPE, { seed: 7, untied: opts.untied });
  const dir = await Deno.makeTempDir({ prefix: "mmap-load-" });
  try {
    await writeHfCheckpoint(dir, m, { dtype: opts.dtype ?? "F32", buffers: true });
    await fn(dir, m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "this test process can map files (FFI allowed on Linux)",
  // Elsewhere the loader reads the files (mmap.ts maps through Linux's libc only).
  ignore: Deno.build.os !== "linux",
}, () => {
  // Without it every mapped-path test below would pass through the read path unnoticed.
  assert(canMap(), "mmap unavailable: run the tests with -A on Linux");
});

Deno.test("loadModel() returns F32 tensors as views of the mapped file, bit-identical to the written ones", async () => {
  await withCheckpoint(async (dir, written) => {
    const mapped = asGpt2(await loadModel(dir));
    for (const a of arrays(mapped.weights)) {
      assert(isMapped(a), "an aligned F32 tensor was copied");
      assert(!(a.buffer instanceof SharedArrayBuffer));
    }
    assertSameWeights(mapped, written);
    const read = asGpt2(await loadModel(dir, { map: false }));
    for (const a of arrays(read.weights)) assert(!isMapped(a));
    assertSameWeights(read, written);
    // The fingerprint is the float32 weights' digest whichever way they were loaded.
    assertEquals(mapped.weightsHash, read.weightsHash);
    assertEquals(mapped.weightsHash, await hashWeights(written.weights));
  }, { untied: true });
});

Deno.test("loadModel() keeps F16 and BF16 matrices 16-bit (mapped, or read into shared memory) and decodes vectors into shared memory, the same mapped or read", async () => {
  for (const dtype of ["F16", "BF16"] as const) {
    await withCheckpoint(async (dir) => {
      const mapped = asGpt2(await loadModel(dir));
      const read = asGpt2(await loadModel(dir, { map: false }));
      for (const a of arrays(mapped.weights)) {
        if (a instanceof Uint16Array) assert(isMapped(a), `${dtype}: a 16-bit matrix was copied`);
        else assert(!isMapped(a) && a.buffer instanceof SharedArrayBuffer, `${dtype}: not decoded`);
      }
      for (const a of arrays(read.weights)) assert(a.buffer instanceof SharedArrayBuffer);
      assertEquals(
        arrays(mapped.weights).filter((a) => a instanceof Uint16Array).length,
        4 * 2 + 1,
      );
      assertSameWeights(mapped, read);
      assertEquals(mapped.weightsHash, read.weightsHash);
      assert(toFloat32(mapped.weights.wte).some((x) => x !== 0));
    }, { dtype });
  }
});

Deno.test("loadModel() copies F32 tensors that are not 4-byte aligned in the file, exactly", async () => {
  await withCheckpoint(async (dir, written) => {
    // One more space in the header: the data section starts at an odd offset.
    const path = `${dir}/model.safetensors`;
    const bytes = await Deno.readFile(path);
    const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const out = new Uint8Array(bytes.length + 1);
    new DataView(out.buffer).setBigUint64(0, BigInt(len + 1), true);
    out.set(bytes.subarray(8, 8 + len), 8);
    out[8 + len] = 0x20;
    out.set(bytes.subarray(8 + len), 9 + len);
    await Deno.writeFile(path, out);
    const m = asGpt2(await loadModel(dir));
    for (const a of arrays(m.weights)) assert(!isMapped(a), "a misaligned tensor was viewed");
    assertSameWeights(m, written);
    assertEquals(m.weightsHash, await hashWeights(written.weights));
  });
});

Deno.test("the engine worker reads the mapped weights in place and computes the same logits", async () => {
  await withCheckpoint(async (dir) => {
    const m = asGpt2(await loadModel(dir));
    const T = 9;
    const ids = Int32Array.from({ length: T }, (_, i) => (i * 37 + 5) % SHAPE.vocabSize);
    // One OpenBLAS thread on both sides (a process-wide setting): the same summation order.
    const local = await createEngine(m, { backend: "fast", threads: 1 });
    const want = await local.forward({
      embeds: local.embed(ids),
      seqs: [{ length: T }],
      logitRows: Int32Array.of(0, T - 1),
    });
    local.dispose();
    const worker = await createWorkerEngine(m, { backend: "fast", threads: 1 });
    try {
      // Sharing kept the mapped arrays: nothing was copied into shared memory.
      for (const a of arrays(m.weights)) assert(isMapped(a));
      const got = await worker.forward({
        embeds: worker.embed(ids),
        seqs: [{ length: T }],
        logitRows: Int32Array.of(0, T - 1),
      });
      assert(got.logits.every(Number.isFinite));
      assertEquals(Array.from(got.logits), Array.from(want.logits));
    } finally {
      worker.dispose();
    }
  });
});
