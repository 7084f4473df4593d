import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { AdamW, type AdamWOptions, clipGradNorm } from "./optimizer.ts";

/** Numbers from torch (see test/fixtures/optim/gen_adamw_torch.py). */
interface TorchRun {
  after_step: Record<string, number[]>[];
  state: Record<string, { step: number; exp_avg: number[]; exp_avg_sq: number[] }>;
}
interface TorchReference {
  start: Record<string, { shape: number[]; data: number[] }>;
  grads: Record<string, number[]>[];
  lrs: number[];
  adamw_defaults: TorchRun;
  adamw: TorchRun;
  adam_l2: TorchRun;
  clip_1: { max_norm: number; total_norm: number; clipped: Record<string, number[]> };
  clip_10: { max_norm: number; total_norm: number; clipped: Record<string, number[]> };
}

const ref: TorchReference = JSON.parse(
  await Deno.readTextFile(new URL("../../test/fixtures/optim/adamw_torch.json", import.meta.url)),
);

function startParams(): Map<string, Float32Array> {
  return new Map(Object.entries(ref.start).map(([k, v]) => [k, Float32Array.from(v.data)]));
}

function gradsAt(k: number): Map<string, Float32Array> {
  return new Map(Object.entries(ref.grads[k]).map(([n, g]) => [n, Float32Array.from(g)]));
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string) {
  assertEquals(actual.length, expected.length, `${what} length`);
  for (let i = 0; i < actual.length; i++) {
    const tol = 1e-6 + 1e-5 * Math.abs(expected[i]);
    assert(
      Math.abs(actual[i] - expected[i]) <= tol,
      `${what}[${i}] = ${actual[i]}: expected ${expected[i]}`,
    );
  }
}

function checkRun(run: TorchRun, options: AdamWOptions) {
  const opt = new AdamW(options);
  const params = startParams();
  ref.lrs.forEach((lr, k) => {
    opt.step(params, gradsAt(k), lr);
    for (const [name, p] of params) {
      assertClose(p, run.after_step[k][name], `step ${k + 1} ${name}`);
    }
  });
  const state = opt.state();
  for (const [name, s] of Object.entries(run.state)) {
    assertEquals(state.params[name].step, s.step);
    assertClose(state.params[name].expAvg, s.exp_avg, `${name} exp_avg`);
    assertClose(state.params[name].expAvgSq, s.exp_avg_sq, `${name} exp_avg_sq`);
  }
}

Deno.test("AdamW with default options matches torch.optim.AdamW over 3 steps", () => {
  checkRun(ref.adamw_defaults, {});
});

Deno.test("AdamW with NeMo's betas and weight decay matches torch.optim.AdamW over 3 steps", () => {
  checkRun(ref.adamw, { betas: [0.9, 0.98], eps: 1e-8, weightDecay: 0.1 });
});

Deno.test("AdamW with decoupled: false matches torch.optim.Adam's L2 decay over 3 steps", () => {
  checkRun(ref.adam_l2, { betas: [0.9, 0.98], eps: 1e-8, weightDecay: 0.1, decoupled: false });
});

Deno.test("AdamW first step follows the closed form lr * g / (|g| + eps) after decay", () => {
  // After one step m / (1 - b1) = g and sqrt(v / (1 - b2)) = |g|.
  const opt = new AdamW({ weightDecay: 0.5 });
  const p = Float32Array.of(2, -3);
  opt.step(new Map([["p", p]]), new Map([["p", Float32Array.of(0.25, -4)]]), 0.1);
  assertClose(p, [2 * (1 - 0.05) - 0.1, -3 * (1 - 0.05) + 0.1], "p");
});

Deno.test("AdamW.step() skips parameters without a gradient, keeping their step count", () => {
  const opt = new AdamW();
  const params = startParams();
  const before = params.get("b")!.slice();
  opt.step(params, new Map([["w", gradsAt(0).get("w")!]]), 0.01);
  assertEquals(params.get("b"), before);
  assertEquals(Object.keys(opt.state().params), ["w"]);
});

Deno.test("AdamW state() and loadState() resume a run exactly", () => {
  const options: AdamWOptions = { betas: [0.9, 0.98], weightDecay: 0.1 };
  const straight = new AdamW(options);
  const a = startParams();
  ref.lrs.forEach((lr, k) => straight.step(a, gradsAt(k), lr));

  const first = new AdamW(options);
  const b = startParams();
  first.step(b, gradsAt(0), ref.lrs[0]);
  // A checkpoint goes through JSON-like plain data; a fresh optimizer picks it up.
  const saved = first.state();
  const resumed = new AdamW(options);
  resumed.loadState(saved);
  resumed.step(b, gradsAt(1), ref.lrs[1]);
  resumed.step(b, gradsAt(2), ref.lrs[2]);
  assertEquals(b, a);
  // state() is a copy: later steps do not change what was saved.
  assertEquals(saved.params.w.step, 1);
});

Deno.test("AdamW.loadState() refuses a state saved with other options", () => {
  const saved = new AdamW({ betas: [0.9, 0.98] }).state();
  assertThrows(
    () => new AdamW().loadState(saved),
    RangeError,
    "betas is [0.9,0.98] in the state: this optimizer has [0.9,0.999]",
  );
  const decay = new AdamW({ weightDecay: 0 }).state();
  assertThrows(
    () => new AdamW().loadState(decay),
    RangeError,
    "weightDecay is 0 in the state: this optimizer has 0.01",
  );
});

Deno.test("AdamW rejects bad options, learning rates and mismatched gradients", () => {
  assertThrows(() => new AdamW({ betas: [0.9, 1] }), RangeError, "betas[1] must be in [0, 1)");
  assertThrows(() => new AdamW({ eps: -1 }), RangeError, "eps must be a finite number >= 0");
  assertThrows(() => new AdamW({ weightDecay: NaN }), RangeError, "weightDecay must be");
  const opt = new AdamW();
  const params = startParams();
  assertThrows(() => opt.step(params, gradsAt(0), -1), RangeError, "lr must be");
  assertThrows(
    () => opt.step(params, new Map([["nope", new Float32Array(1)]]), 0.1),
    RangeError,
    "gradient for unknown parameter nope",
  );
  assertThrows(
    () => opt.step(params, new Map([["b", new Float32Array(3)]]), 0.1),
    RangeError,
    "gradient of b has 3 values: the parameter has 4",
  );
  // A rejected step changes nothing.
  assertEquals(params, startParams());
});

Deno.test("clipGradNorm() scales like torch's clip_grad_norm_ and returns the norm before", () => {
  for (const c of [ref.clip_1, ref.clip_10]) {
    const grads = gradsAt(0);
    const total = clipGradNorm(grads, c.max_norm);
    assertClose([total], [c.total_norm], "total norm");
    for (const [name, g] of grads) assertClose(g, c.clipped[name], `clipped ${name}`);
  }
});

Deno.test("clipGradNorm() leaves gradients alone when the norm is not finite", () => {
  const grads = new Map([["a", Float32Array.of(1, NaN)], ["b", Float32Array.of(3)]]);
  assert(Number.isNaN(clipGradNorm(grads, 1)));
  assertEquals(grads.get("b"), Float32Array.of(3));
  assertThrows(() => clipGradNorm(grads, 0), RangeError, "maxNorm must be a finite number > 0");
});
