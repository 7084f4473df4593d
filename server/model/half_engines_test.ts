/**
 * Every engine on packed weights computes what it computes on the same weights widened to
 * float32: the shipped tiny-gpt2 is stored F16 and kept F16 in memory, its BF16 rounding is
 * written and loaded as a BF16 checkpoint, and its int8 quantisation (`WEIGHTS=int8`) widens to
 * q * scale. Forward logits, cached decode logits, loss and input
 * gradient agree to float32 summation-order error (widening is exact; only the order of the sums
 * differs: panels, native kernels). Engines that cannot load here are skipped, named.
 */
import { assert } from "../../test/assert.ts";
import { isPacked } from "./half.ts";
import { quantizeModel } from "./int8.ts";
import { createEngine, type Engine, loadModel } from "./mod.ts";
import { createTestEngine, probeEngine } from "./testing/engine_probe.ts";
import { widened, writeHfCheckpoint } from "./testing/gpt2_checkpoint.ts";
import { asGpt2, matrices } from "./weights.ts";

const root = new URL("../../", import.meta.url).pathname;
const f16 = asGpt2(await loadModel(`${root}models/tiny-gpt2`));
const dir = await Deno.makeTempDir({ prefix: "half-engines-" });
await writeHfCheckpoint(dir, f16, { dtype: "BF16" });
const bf16 = asGpt2(await loadModel(dir));
await Deno.remove(dir, { recursive: true }); // the mapping outlives the name

function assertClose(got: Float32Array, want: Float32Array, what: string, tol = 1e-4): void {
  assert(got.length === want.length, `${what}: length ${got.length} vs ${want.length}`);
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < want.length; i++) {
    assert(Number.isFinite(got[i]), `${what}: element ${i} is ${got[i]}`);
    assert(
      Math.abs(got[i] - want[i]) <= tol * Math.max(1, scale),
      `${what}: element ${i} is ${got[i]}, want ${want[i]} (scale ${scale})`,
    );
  }
}

Deno.test("tiny-gpt2 (F16) and its BF16 copy keep their matrices 16-bit in memory", () => {
  for (const [m, dtype] of [[f16, "f16"], [bf16, "bf16"]] as const) {
    for (const x of matrices(m.weights)) {
      assert(isPacked(x) && x.dtype === dtype, `${dtype}: a matrix was widened`);
    }
  }
});

const ENGINES = [
  "fast",
  "fast (typescript panels)",
  "fast-worker",
  "onednn",
  "wasm",
  "cuda-emulated",
];
const int8 = quantizeModel(f16);
for (const [label, model] of [["f16", f16], ["bf16", bf16], ["int8", int8]] as const) {
  const wide = widened(model);
  for (const name of ENGINES) {
    let a: Engine, b: Engine;
    try {
      a = await createTestEngine(name, wide);
      b = await createTestEngine(name, model);
    } catch (e) {
      if (name === "onednn" && Deno.env.get("ONEDNN_TEST") === "required") throw e;
      const why = (e as Error).message.split("\n")[0];
      Deno.test({ name: `[${name}] ${label} weights (ignored: ${why})`, ignore: true, fn() {} });
      continue;
    }
    Deno.test(`[${name}] computes on ${label} weights what it computes on them widened`, async () => {
      try {
        const want = await probeEngine(a), got = await probeEngine(b);
        assertClose(got.logits, want.logits, "forward logits");
        for (let i = 0; i < want.decoded.length; i++) {
          assertClose(got.decoded[i], want.decoded[i], `decode step ${i}`);
        }
        assertClose(Float32Array.of(got.loss), Float32Array.of(want.loss), "loss");
        assertClose(got.grad, want.grad, "input gradient");
      } finally {
        a.dispose();
        b.dispose();
      }
    });
  }
}

// int8 stays int8 in oneDNN's bf16 modes (a bf16 copy of it would double the memory it saves):
// its products are fp32 on q * scale, the same numbers as fp32 on the widened weights.
let emulated: Engine | null = null;
try {
  emulated = await createEngine(int8, {
    backend: "onednn",
    precision: "bf16-emulated",
    threads: 1,
  });
} catch (e) {
  if (Deno.env.get("ONEDNN_TEST") === "required") throw e;
}
Deno.test({
  name: "[onednn bf16-emulated] int8 weights are multiplied in fp32, not rounded to bf16",
  ignore: emulated === null,
  async fn() {
    const fp32 = await createTestEngine("onednn", widened(int8));
    try {
      const want = await probeEngine(fp32), got = await probeEngine(emulated!);
      assertClose(got.logits, want.logits, "forward logits");
      assertClose(got.grad, want.grad, "input gradient");
    } finally {
      fp32.dispose();
      emulated!.dispose();
    }
  },
});
