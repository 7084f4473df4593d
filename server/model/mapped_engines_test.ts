/**
 * Every engine over memory-mapped weights: tiny-gpt2's weights written as an F32 checkpoint and
 * loaded mapped (read-only pages: an engine writing into its weights would fault here) give each
 * engine the same forward logits, cached decode logits, loss and input gradient as the same
 * engine over the weights in ordinary memory. Engines that cannot load here are skipped, named.
 */
import { asGpt2 } from "./weights.ts";
import { assert, assertEquals } from "../../test/assert.ts";
import { isMapped } from "./mmap.ts";
import { type Engine, loadModel } from "./mod.ts";
import { createTestEngine, probeEngine } from "./testing/engine_probe.ts";
import { widened, writeHfCheckpoint } from "./testing/gpt2_checkpoint.ts";

const root = new URL("../../", import.meta.url).pathname;
// tiny-gpt2 is stored F16: widened, so both models hold the same float32 weights.
const inMemory = widened(asGpt2(await loadModel(`${root}models/tiny-gpt2`)));
const dir = await Deno.makeTempDir({ prefix: "mapped-engines-" });
await writeHfCheckpoint(dir, inMemory, { dtype: "F32" });
const mapped = asGpt2(await loadModel(dir));
await Deno.remove(dir, { recursive: true }); // the mapping outlives the name

Deno.test("the F32 copy of tiny-gpt2 is mapped", () => {
  assert(isMapped(mapped.weights.wte as Float32Array));
  assert(isMapped(mapped.weights.layers[0].fcW as Float32Array));
  assertEquals(mapped.weightsHash, inMemory.weightsHash);
});

for (const name of ["fast", "fast-worker", "onednn", "wasm", "cpu", "cuda-emulated"]) {
  let a: Engine, b: Engine;
  try {
    a = await createTestEngine(name, inMemory);
    b = await createTestEngine(name, mapped);
  } catch (e) {
    const why = (e as Error).message.split("\n")[0];
    Deno.test({ name: `[${name}] over mapped weights (ignored: ${why})`, ignore: true, fn() {} });
    continue;
  }
  Deno.test(`[${name}] computes the same over mapped weights as over weights in memory`, async () => {
    try {
      const want = await probeEngine(a), got = await probeEngine(b);
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
