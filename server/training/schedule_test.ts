import { assert, assertEquals, assertThrows } from "../../test/assert.ts";
import { createSchedule, type ScheduleOptions } from "./schedule.ts";

/** Checks lrAt(step) for each [step, expected] pair. */
function expectLrs(o: ScheduleOptions, pairs: [number, number][]) {
  const s = createSchedule(o);
  for (const [step, expected] of pairs) {
    const got = s.lrAt(step);
    assert(
      Math.abs(got - expected) < 1e-12,
      `${o.kind} lrAt(${step}) = ${got}: expected ${expected}`,
    );
  }
}

Deno.test("cosine: NeMo warmup (step+1)/(W+1), cosine to minLr at maxSteps, minLr after", () => {
  expectLrs({ kind: "cosine", lr: 1, warmupSteps: 4, maxSteps: 14, minLr: 0.1 }, [
    [0, 1 / 5],
    [3, 4 / 5],
    [4, 1], // last warmup step reaches the peak
    [5, 0.1 + 0.45 * (1 + Math.cos(Math.PI / 10))],
    [9, 0.55], // half way through the decay
    [14, 0.1],
    [15, 0.1],
    [1000, 0.1],
  ]);
});

Deno.test("cosine without warmup starts at lr", () => {
  expectLrs({ kind: "cosine", lr: 0.5, maxSteps: 10 }, [
    [0, 0.5],
    [5, 0.25],
    [10, 0],
  ]);
});

Deno.test("cosine with constantSteps follows Megatron: warmup from 0, then hold minLr", () => {
  expectLrs({ kind: "cosine", lr: 1, warmupSteps: 4, constantSteps: 2, maxSteps: 16, minLr: 0.1 }, [
    [0, 0],
    [2, 0.5],
    [4, 1],
    [9, 0.55], // 5 of 10 decay steps
    [14, 0.1], // decay ends at W + decay = 14
    [15, 0.1],
    [16, 0.1],
    [17, 0.1],
  ]);
});

Deno.test("linear: warmup, then a straight line to minLr at maxSteps", () => {
  expectLrs({ kind: "linear", lr: 1, warmupSteps: 2, maxSteps: 12 }, [
    [0, 1 / 3],
    [2, 1],
    [3, 0.9],
    [7, 0.5],
    [12, 0],
    [13, 0],
  ]);
  expectLrs({ kind: "linear", lr: 1, maxSteps: 4, minLr: 0.2 }, [[0, 1], [2, 0.6], [4, 0.2]]);
});

Deno.test("constant: warmup, then lr until maxSteps", () => {
  expectLrs({ kind: "constant", lr: 0.03, warmupSteps: 3, maxSteps: 100 }, [
    [0, 0.0075],
    [3, 0.03],
    [4, 0.03],
    [100, 0.03],
    [101, 0], // NeMo's WarmupPolicy drops to min_lr past max_steps
  ]);
  expectLrs({ kind: "constant", lr: 0.03, maxSteps: 5 }, [[0, 0.03], [5, 0.03]]);
});

Deno.test("warmupRatio resolves to floor(ratio * maxSteps) warmup steps", () => {
  const s = createSchedule({ kind: "cosine", lr: 1, warmupRatio: 0.1, maxSteps: 25 });
  assertEquals(s.warmupSteps, 2);
  assertEquals(s.lrAt(0), 1 / 3);
  assertEquals(s.lrAt(2), 1);
  const c = createSchedule({ kind: "cosine", lr: 1, constantRatio: 0.2, maxSteps: 10 });
  assertEquals(c.constantSteps, 2);
  assertEquals(
    createSchedule({ kind: "linear", lr: 1, constantSteps: 3, maxSteps: 10 })
      .constantSteps,
    0,
  );
});

Deno.test("createSchedule() rejects inconsistent options naming the field", () => {
  const base: ScheduleOptions = { kind: "cosine", lr: 1, maxSteps: 10 };
  assertThrows(
    () => createSchedule({ ...base, kind: "poly" as "cosine" }),
    RangeError,
    'kind must be "cosine", "linear" or "constant": found "poly"',
  );
  assertThrows(
    () => createSchedule({ ...base, warmupSteps: 2, warmupRatio: 0.1 }),
    RangeError,
    "warmupSteps or warmupRatio, not both",
  );
  assertThrows(
    () => createSchedule({ ...base, constantSteps: 2, constantRatio: 0.1 }),
    RangeError,
    "constantSteps or constantRatio, not both",
  );
  assertThrows(
    () => createSchedule({ ...base, minLr: 2 }),
    RangeError,
    "minLr (2) must not exceed lr (1)",
  );
  assertThrows(() => createSchedule({ ...base, maxSteps: 0 }), RangeError, "maxSteps must be >= 1");
  assertThrows(
    () => createSchedule({ ...base, warmupSteps: 1.5 }),
    RangeError,
    "warmupSteps must be an integer",
  );
  assertThrows(
    () => createSchedule({ ...base, warmupRatio: 2 }),
    RangeError,
    "warmupRatio must be in [0, 1]",
  );
  assertThrows(() => createSchedule(base).lrAt(-1), RangeError, "step must be an integer >= 0");
});

Deno.test("a warmup longer than the run is NeMo's: the whole run warms up (NeMo's sample: 50 warmup steps)", () => {
  // Before, this was refused, so NeMo's own sample config failed on a short run.
  const s = createSchedule({ kind: "cosine", lr: 1e-4, maxSteps: 6, warmupSteps: 50 });
  for (let step = 0; step <= 6; step++) assertEquals(s.lrAt(step), 1e-4 * (step + 1) / 51);
  const m = createSchedule({
    kind: "cosine",
    lr: 1,
    maxSteps: 10,
    warmupSteps: 8,
    constantSteps: 3,
  });
  assertEquals([m.lrAt(8), m.lrAt(9), m.lrAt(10)], [1, 0, 0]);
});
