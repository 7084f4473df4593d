import { assertEquals } from "../../test/assert.ts";
import { EarlyStopping } from "./early_stopping.ts";

Deno.test("EarlyStopping moves its reference only on an improvement of more than min_delta (as Lightning)", () => {
  const es = new EarlyStopping({ mode: "min", patience: 2, minDelta: 0.1 });
  assertEquals(es.observe(1.0), false); // the first validation sets the reference
  assertEquals(es.observe(0.95), false); // better, but not by min_delta: one bad validation
  assertEquals(es.state, { best: 1.0, bad: 1 });
  // 0.88 is more than 0.1 below the reference 1.0: an improvement. (Before, the reference had
  // followed 0.95, so 0.88 counted as bad and the run stopped here.)
  assertEquals(es.observe(0.88), false);
  assertEquals(es.state, { best: 0.88, bad: 0 });
  assertEquals(es.observe(0.87), false);
  assertEquals(es.observe(0.86), true); // two in a row without an improvement of 0.1
});

Deno.test("EarlyStopping resumes from its saved state", () => {
  const es = new EarlyStopping({ mode: "min", patience: 3, minDelta: 0 }, { best: 0.5, bad: 2 });
  assertEquals(es.observe(0.6), true);
});

Deno.test("EarlyStopping honours mode max, check_finite and the two thresholds (as Lightning)", () => {
  // mode max: higher is better, min_delta counts upwards. Before, only falling losses improved.
  const up = new EarlyStopping({ mode: "max", patience: 1, minDelta: 0.05 });
  assertEquals(up.observe(0.5), false);
  assertEquals(up.observe(0.6), false);
  assertEquals(up.state, { best: 0.6, bad: 0 });
  assertEquals(up.observe(0.62), true); // not more than min_delta above 0.6
  const finite = new EarlyStopping({ mode: "min", patience: 5, minDelta: 0 });
  assertEquals(finite.observe(NaN), true);
  assertEquals(finite.reason, "the monitored value is NaN");
  const lax = new EarlyStopping({ mode: "min", patience: 5, minDelta: 0, checkFinite: false });
  assertEquals(lax.observe(NaN), false);
  const goal = new EarlyStopping({ mode: "min", patience: 5, minDelta: 0, stoppingThreshold: 0.2 });
  assertEquals(goal.observe(0.3), false);
  assertEquals(goal.observe(0.1), true);
  const diverge = new EarlyStopping({
    mode: "max",
    patience: 5,
    minDelta: 0,
    divergenceThreshold: 0.1,
  });
  assertEquals(diverge.observe(0.5), false);
  assertEquals(diverge.observe(0.05), true);
});
