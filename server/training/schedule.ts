/**
 * Learning-rate schedules as NeMo's lr_scheduler.py computes them, so a NeMo `optim.sched`
 * block gives the same learning rate at every step:
 *
 * - "cosine" (CosineAnnealing): warmup, then cosine from lr down to minLr at maxSteps. With
 *   constantSteps > 0 it is Megatron's variant: warmup lr * step / W, cosine over
 *   maxSteps - W - C steps, then minLr for the last C steps.
 * - "linear" (WarmupAnnealing): warmup, then a straight line from lr to minLr at maxSteps.
 * - "constant" (WarmupPolicy): warmup, then lr.
 *
 * NeMo's warmup is lr * (step + 1) / (W + 1) for step <= W (even when W exceeds maxSteps), and
 * past maxSteps every schedule gives minLr. `step` counts optimizer steps already taken: the first update uses lrAt(0).
 */

export type ScheduleKind = "cosine" | "linear" | "constant";

export interface ScheduleOptions {
  kind: ScheduleKind;
  /** Peak learning rate (optim.lr). */
  lr: number;
  /** Total optimizer steps of the run; the decay reaches minLr here. */
  maxSteps: number;
  /** Warmup length in steps. At most one of warmupSteps and warmupRatio. Default 0. */
  warmupSteps?: number;
  /** Warmup as a fraction of maxSteps: W = floor(warmupRatio * maxSteps). */
  warmupRatio?: number;
  /** "cosine" only: steps held at minLr at the end. At most one of this and constantRatio. */
  constantSteps?: number;
  constantRatio?: number;
  /** Default 0. */
  minLr?: number;
}

export interface LrSchedule {
  readonly kind: ScheduleKind;
  readonly lr: number;
  readonly minLr: number;
  readonly maxSteps: number;
  /** Resolved from warmupSteps or warmupRatio. */
  readonly warmupSteps: number;
  /** Resolved from constantSteps or constantRatio (0 unless "cosine"). */
  readonly constantSteps: number;
  /** Learning rate for the optimizer step taken after `step` earlier steps. */
  lrAt(step: number): number;
}

function nonNegative(value: number | undefined, field: string, integer: boolean): number {
  const v = value ?? 0;
  if (!Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v))) {
    throw new RangeError(
      `schedule ${field} must be ${integer ? "an integer" : "a finite number"} >= 0: found ${v}`,
    );
  }
  return v;
}

function ratio(value: number, field: string): number {
  if (!(value >= 0 && value <= 1)) {
    throw new RangeError(`schedule ${field} must be in [0, 1]: found ${value}`);
  }
  return value;
}

/** Validates options (NeMo's asserts, as errors that name the field) and builds the schedule. */
export function createSchedule(o: ScheduleOptions): LrSchedule {
  if (o.kind !== "cosine" && o.kind !== "linear" && o.kind !== "constant") {
    throw new RangeError(
      `schedule kind must be "cosine", "linear" or "constant": found ${JSON.stringify(o.kind)}`,
    );
  }
  const lr = nonNegative(o.lr, "lr", false);
  const minLr = nonNegative(o.minLr, "minLr", false);
  const maxSteps = nonNegative(o.maxSteps, "maxSteps", true);
  if (maxSteps < 1) throw new RangeError(`schedule maxSteps must be >= 1: found ${maxSteps}`);
  if (minLr > lr) {
    throw new RangeError(`schedule minLr (${minLr}) must not exceed lr (${lr})`);
  }
  if (o.warmupSteps !== undefined && o.warmupRatio !== undefined) {
    throw new RangeError("schedule takes warmupSteps or warmupRatio, not both");
  }
  if (o.constantSteps !== undefined && o.constantRatio !== undefined) {
    throw new RangeError("schedule takes constantSteps or constantRatio, not both");
  }
  const warmupSteps = o.warmupRatio !== undefined
    ? Math.floor(ratio(o.warmupRatio, "warmupRatio") * maxSteps)
    : nonNegative(o.warmupSteps, "warmupSteps", true);
  let constantSteps = o.constantRatio !== undefined
    ? Math.floor(ratio(o.constantRatio, "constantRatio") * maxSteps)
    : nonNegative(o.constantSteps, "constantSteps", true);
  if (o.kind !== "cosine") constantSteps = 0;
  // A warmup (and constant tail) longer than the run is allowed, as in NeMo: the steps it covers
  // warm up, and any left after it are at minLr.
  const W = warmupSteps;
  const decaySteps = maxSteps - W - constantSteps;
  const megatron = o.kind === "cosine" && constantSteps > 0;

  const lrAt = (step: number): number => {
    if (!Number.isInteger(step) || step < 0) {
      throw new RangeError(`lrAt() step must be an integer >= 0: found ${step}`);
    }
    if (W > 0 && step <= W) return megatron ? lr * step / W : lr * (step + 1) / (W + 1);
    if (step > maxSteps) return minLr;
    switch (o.kind) {
      case "constant":
        return lr;
      case "linear":
        return minLr + (1 - (step - W) / (maxSteps - W)) * (lr - minLr);
      case "cosine": {
        if (megatron && step > W + decaySteps) return minLr;
        const span = megatron ? decaySteps : maxSteps - W;
        return minLr + 0.5 * (1 + Math.cos(Math.PI * (step - W) / span)) * (lr - minLr);
      }
    }
  };

  return { kind: o.kind, lr, minLr, maxSteps, warmupSteps, constantSteps, lrAt };
}
