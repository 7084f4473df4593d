/**
 * Every engine over memory-mapped weights: tiny-gpt2's weights written as an F32 checkpoint and
 * loaded mapped (read-only pages: an engine writing into its weights would fault here) give each
 * engine the same forward logits, cached decode logits, loss and input gradient as the same
 * engine over the weights in ordinary memory. Engines that cannot load here are skipped, named.
 */
import { assert, assertEquals } from "../../test/assert.ts";
import { createCudaEngine } from "./cuda/cuda_engine.ts";
import { emulatedDevice } from "./cuda/emulated_device.ts";
import { loadBlas } from "./fast/blas.ts";
import { isMapped } from "./mmap.ts";
import { createEngine, type Engine, loadModel } from "./mod.ts";
import { widened, writeHfCheckpoint } from "./testing/gpt2_checkpoint.ts";
import type { LoadedModel } from "./weights.ts";
import { createWorkerEngine } from "./worker_engine.ts";

const root = new URL("../../", import.meta.url).pathname;
// tiny-gpt2 is stored F16: widened, so both models hold the same float32 weights.
const inMemory = widened(await loadModel(`${root}models/tiny-gpt2`));
const dir = await Deno.makeTempDir({ prefix: "mapped-engines-" });
await writeHfCheckpoint(dir, inMemory, { dtype: "F32" });
const mapped = await loadModel(dir);
await Deno.remove(dir, { recursive: true }); // the mapping outlives the name
const V = inMemory.config.vocabSize;

function create(name: string, m: LoadedModel): Promise<Engine> {
  if (name === "fast-worker") return createWorkerEngine(m, { backend: "fast", threads: 1 });
  if (name === "cuda-emulated") {
    return Promise.resolve(
      createCudaEngine(m, { device: emulatedDevice(loadBlas() ?? undefined) }),
    );
  }
  // One BLAS thread: the same summation order in both runs.
  return createEngine(m, { backend: name, precision: "fp32", threads: 1 });
}

interface Outputs {
  logits: Float32Array;
  decoded: Float32Array[];
  loss: number;
  grad: Float32Array;
}

async function run(e: Engine): Promise<Outputs> {
  const ids = Int32Array.from({ length: 12 }, (_, i) => (i * 7919 + 3) % V);
  const cache = e.newCache();
  const { logits } = await e.forward({
    embeds: e.embed(ids),
    seqs: [{ length: ids.length, cache }],
    logitRows: Int32Array.of(0, ids.length - 1),
  });
  const decoded: Float32Array[] = [];
  for (const id of [5, 17, 256]) {
    decoded.push(
      (await e.forward({
        embeds: e.embed([id]),
        seqs: [{ length: 1, cache }],
        logitRows: Int32Array.of(0),
      })).logits,
    );
  }
  cache.dispose();
  const { loss, gradEmbeds } = await e.lossAndGrad({
    embeds: e.embed(ids),
    seqs: [{ length: ids.length }],
    lossRows: Int32Array.of(8, 9, 10),
    targets: Int32Array.of(1, 2, 3),
  });
  return { logits, decoded, loss, grad: gradEmbeds };
}

Deno.test("the F32 copy of tiny-gpt2 is mapped", () => {
  assert(isMapped(mapped.weights.wte as Float32Array));
  assert(isMapped(mapped.weights.layers[0].fcW as Float32Array));
  assertEquals(mapped.weightsHash, inMemory.weightsHash);
});

for (const name of ["fast", "fast-worker", "onednn", "wasm", "cpu", "cuda-emulated"]) {
  let a: Engine, b: Engine;
  try {
    a = await create(name, inMemory);
    b = await create(name, mapped);
  } catch (e) {
    const why = (e as Error).message.split("\n")[0];
    Deno.test({ name: `[${name}] over mapped weights (ignored: ${why})`, ignore: true, fn() {} });
    continue;
  }
  Deno.test(`[${name}] computes the same over mapped weights as over weights in memory`, async () => {
    try {
      const want = await run(a), got = await run(b);
      assert(want.logits.every(Number.isFinite) && Number.isFinite(want.loss));
      assertEquals(Array.from(got.logits), Array.from(want.logits), "forward logits");
      for (let i = 0; i < want.decoded.length; i++) {
        assertEquals(Array.from(got.decoded[i]), Array.from(want.decoded[i]), `decode step ${i}`);
      }
      assertEquals(got.loss, want.loss, "loss");
      assertEquals(Array.from(got.grad), Array.from(want.grad), "input gradient");
    } finally {
      a.dispose();
      b.dispose();
    }
  });
}
