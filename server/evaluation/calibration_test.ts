import { assertAlmostEquals, assertEquals, assertThrows } from "../../test/assert.ts";
import { confusionMatrix, expectedCalibrationError } from "./calibration.ts";

Deno.test("confusionMatrix() counts [gold][predicted] over the labels", () => {
  const labels = ["positive", "negative", "neutral"];
  const m = confusionMatrix(
    labels,
    ["positive", "positive", "negative", "neutral", "neutral"],
    ["positive", "neutral", "negative", "neutral", "positive"],
  );
  assertEquals(m, [[1, 0, 1], [0, 1, 0], [1, 0, 1]]);
  assertThrows(
    () => confusionMatrix(labels, ["mixed"], ["positive"]),
    RangeError,
    '"mixed" is not a label',
  );
});

Deno.test("expectedCalibrationError() is Guo et al.'s ECE over ((m-1)/M, m/M] bins", () => {
  // Worked by hand with M = 10 (Guo et al. 2017, eq. 3):
  //   0.95, 0.92 (right, right)  -> bin (0.9, 1]: acc 1,   conf 0.935, |B| 2
  //   0.7 (wrong), 0.65 (right)  -> bin (0.6, 0.7]: acc 0.5, conf 0.675, |B| 2
  //   0.4 (wrong)                -> bin (0.3, 0.4]: acc 0,   conf 0.4,   |B| 1
  //   ECE = 2/5 * 0.065 + 2/5 * 0.175 + 1/5 * 0.4 = 0.026 + 0.07 + 0.08 = 0.176
  const ece = expectedCalibrationError(
    [0.95, 0.7, 0.92, 0.4, 0.65],
    [true, false, true, false, true],
  );
  assertAlmostEquals(ece, 0.176, 1e-12);
  // A boundary goes to the lower bin: 0.7 and 0.6 are in different bins, 0.7 and 0.65 in one.
  assertAlmostEquals(
    expectedCalibrationError([0.7, 0.6], [true, false]),
    0.5 * 0.3 + 0.5 * 0.6,
    1e-12,
  );
  // 0.3 is the upper boundary of (0.2, 0.3], though 0.3 * 10 rounds above 3.
  assertAlmostEquals(
    expectedCalibrationError([0.3, 0.31], [true, false]),
    0.5 * 0.7 + 0.5 * 0.31,
    1e-12,
  );
  // Perfectly calibrated: confidence 1, always right.
  assertEquals(expectedCalibrationError([1, 1], [true, true]), 0);
  assertEquals(expectedCalibrationError([], []), 0);
  assertThrows(() => expectedCalibrationError([1.5], [true]), RangeError, "must be in [0, 1]");
});
