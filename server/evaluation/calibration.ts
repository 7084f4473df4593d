/**
 * Classification scores from candidate-answer probabilities: accuracy, the confusion matrix and
 * the expected calibration error.
 *
 * ECE as Guo et al. define it ("On Calibration of Modern Neural Networks", ICML 2017, section 2,
 * eq. 3): the predictions' confidences (the probability of the predicted label) fall into M
 * equal-width bins I_m = ((m - 1) / M, m / M], and
 *   ECE = sum over m of |B_m| / n * |acc(B_m) - conf(B_m)|.
 * A confidence of exactly 0 (which no bin holds) goes to the first.
 */

/** counts[gold][predicted] over `labels`; every gold and prediction must be one of them. */
export function confusionMatrix(
  labels: readonly string[],
  golds: readonly string[],
  predicted: readonly string[],
): number[][] {
  if (golds.length !== predicted.length) {
    throw new RangeError(
      `golds (${golds.length}) and predicted (${predicted.length}) differ in length`,
    );
  }
  const at = new Map(labels.map((l, i) => [l, i]));
  const m = labels.map(() => labels.map(() => 0));
  golds.forEach((g, i) => {
    const r = at.get(g), c = at.get(predicted[i]);
    if (r === undefined || c === undefined) {
      throw new RangeError(
        `example ${i + 1}: "${r === undefined ? g : predicted[i]}" is not a label`,
      );
    }
    m[r][c]++;
  });
  return m;
}

/** Expected calibration error of `confidences` (in [0, 1]) against `correct`, `bins` bins. */
export function expectedCalibrationError(
  confidences: readonly number[],
  correct: readonly boolean[],
  bins = 10,
): number {
  const n = confidences.length;
  if (n !== correct.length) {
    throw new RangeError(`confidences (${n}) and correct (${correct.length}) differ in length`);
  }
  if (n === 0) return 0;
  const count = new Float64Array(bins),
    conf = new Float64Array(bins),
    hits = new Float64Array(bins);
  for (let i = 0; i < n; i++) {
    const p = confidences[i];
    if (!(p >= 0 && p <= 1)) {
      throw new RangeError(`confidences[${i}] must be in [0, 1]: found ${p}`);
    }
    // Bin b holds (b / bins, (b + 1) / bins]; 0 goes to the first. p * bins rounds (0.3 * 10 is
    // 3.0000000000000004): the boundaries themselves decide.
    let b = Math.min(bins - 1, Math.max(0, Math.ceil(p * bins) - 1));
    if (b > 0 && p <= b / bins) b--;
    else if (b < bins - 1 && p > (b + 1) / bins) b++;
    count[b]++;
    conf[b] += p;
    if (correct[i]) hits[b]++;
  }
  let ece = 0;
  for (let b = 0; b < bins; b++) {
    if (count[b] > 0) ece += (count[b] / n) * Math.abs(hits[b] / count[b] - conf[b] / count[b]);
  }
  return ece;
}
