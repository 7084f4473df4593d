/**
 * int8 quantisation (`WEIGHTS=int8`): the values and scales against PyTorch (Debian's
 * python3-torch: `torch.quantize_per_channel` with symmetric scales `amax / 127`, axis 0, zero
 * points 0, and its `dequantize`), the model's shape and fingerprint after quantising, and the
 * setting's errors.
 */
import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { requireTool } from "../../test/support/required_tool.ts";
import { runWithInput } from "../../test/support/run_with_input.ts";
import { halfFromFloat32, isPacked, toFloat32 } from "./half.ts";
import { parseWeightMode, quantizeInt8, quantizeModel } from "./int8.ts";
import { loadModel } from "./mod.ts";
import { uniform } from "./testing/random.ts";
import { asGpt2, matrices } from "./weights.ts";

/** Debian's interpreter, where python3-torch installs (a pyenv python3 on PATH lacks it). */
const PYTHON = "/usr/bin/python3";

async function torchMissing(): Promise<string | null> {
  try {
    const out = await new Deno.Command(PYTHON, {
      args: ["-c", "import torch"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.code === 0 ? null : `${PYTHON} cannot import torch (apt-get install python3-torch)`;
  } catch {
    return `${PYTHON} is not installed (the int8 reference is PyTorch)`;
  }
}
const torch = requireTool(await torchMissing(), "server/model/int8_test.ts");

/** PyTorch's per-row symmetric int8 of `w` ([rows, cols]): scales, int values, dequantised. */
async function torchQuantize(w: Float32Array, rows: number) {
  const script = `
import json, sys, torch
d = json.load(sys.stdin)
w = torch.tensor(d["w"], dtype=torch.float32).reshape(d["rows"], -1)
scales = w.abs().amax(dim=1) / 127
q = torch.quantize_per_channel(w, scales.double(), torch.zeros(d["rows"], dtype=torch.long), 0,
                               torch.qint8)
json.dump({"scales": scales.tolist(), "q": q.int_repr().flatten().tolist(),
           "deq": q.dequantize().flatten().tolist()}, sys.stdout)
`;
  const out = await runWithInput(
    PYTHON,
    ["-c", script],
    JSON.stringify({ w: Array.from(w), rows }),
  );
  if (out.code !== 0) throw new Error(out.stderr);
  return JSON.parse(out.stdout) as {
    scales: number[];
    q: number[];
    deq: number[];
  };
}

Deno.test({
  name: "quantizeInt8 gives PyTorch's per-row int8: scales, values and dequantised weights",
  ignore: torch.ignore,
  async fn() {
    torch.check();
    const rows = 37, cols = 53;
    const w = uniform(rows * cols, 20261207, 0.2);
    w[5 * cols + 7] = 3.5; // an outlier sets its row's scale
    w.fill(0, 9 * cols, 10 * cols); // an all-zero row
    w[11 * cols + 2] = -0.9; // a negative extreme
    // Exact ties (x.5 after scaling) round to even, as nearbyint does.
    w.set([1.27, 0.005, 0.015, 0.025, -0.015, -0.025], 12 * cols);
    const ref = await torchQuantize(w, rows);
    const ours = quantizeInt8(w, rows);
    assertEquals(Array.from(ours.scales), ref.scales.map(Math.fround));
    // A zero row has scale 0, where PyTorch's 1 / scale turns its values into NaN cast to -128
    // (dequantised to -0): ours keeps them 0. Every other row is compared value for value.
    const zero = (a: ArrayLike<number>) => Array.from(a).slice(9 * cols, 10 * cols);
    const rest = (a: ArrayLike<number>) =>
      Array.from(a).filter((_, i) => Math.floor(i / cols) !== 9);
    assertEquals(zero(ours.bits), new Array(cols).fill(0));
    assertEquals(zero(toFloat32(ours)), new Array(cols).fill(0));
    assertEquals(rest(ours.bits), rest(ref.q));
    assertEquals(rest(toFloat32(ours)), rest(ref.deq.map(Math.fround)));
    assertEquals(ours.bits[5 * cols + 7], 127);
    assertEquals(ours.bits[11 * cols + 2], -127);
  },
});

Deno.test("quantizeInt8 quantises 16-bit matrices from their widened values", () => {
  const f = uniform(8 * 16, 3);
  const h = halfFromFloat32("bf16", f);
  assertEquals(quantizeInt8(h, 8), quantizeInt8(toFloat32(h), 8));
});

Deno.test("quantizeInt8 refuses rows that do not divide the matrix, and non-finite values", () => {
  assertThrows(() => quantizeInt8(new Float32Array(10), 3), RangeError, "10 values do not make 3");
  const w = new Float32Array(6);
  w[4] = Infinity;
  assertThrows(() => quantizeInt8(w, 2), RangeError, "row 1 holds a non-finite value");
});

Deno.test("quantizeModel: every frozen matrix int8 with a scale per stored row; the rest and the fingerprint kept", async () => {
  const m = asGpt2(await loadModel(new URL("../../models/tiny-gpt2", import.meta.url).pathname));
  const q = quantizeModel(m);
  const { nEmbd: C, nInner: F, vocabSize: V } = m.config;
  assertEquals(q.weightsHash, m.weightsHash);
  const rows = [V];
  for (let i = 0; i < m.config.nLayer; i++) rows.push(C, C, C, F);
  const mats = matrices(q.weights);
  assertEquals(mats.length, rows.length);
  mats.forEach((x, i) => {
    assert(isPacked(x) && x.dtype === "int8", `matrix ${i} is not int8`);
    assertEquals(x.scales.length, rows[i], `matrix ${i}: scales`);
  });
  assert(q.weights.wpe === m.weights.wpe, "positions are kept as they are");
  assert(q.weights.layers[0].ln1G === m.weights.layers[0].ln1G, "vectors are kept");
});

Deno.test("parseWeightMode names the setting and the values it takes", () => {
  assertEquals(parseWeightMode("int8", "--weights (WEIGHTS)"), "int8");
  assertEquals(parseWeightMode("stored", "--weights (WEIGHTS)"), "stored");
  assertThrows(
    () => parseWeightMode("int4", "--weights (WEIGHTS)"),
    RangeError,
    '--weights (WEIGHTS) must be one of stored, int8: found "int4"',
  );
});
