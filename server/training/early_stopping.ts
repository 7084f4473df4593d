/**
 * Early stopping as Lightning's EarlyStopping does it: each validation's monitored value is checked
 * in Lightning's order: not finite (check_finite) -> better than stopping_threshold -> worse than
 * divergence_threshold -> an improvement of more than min_delta on the reference (which only then
 * moves) -> otherwise one more bad validation, stopping once `patience` come in a row.
 */
export type MonitorMode = "min" | "max";

export interface EarlyStoppingOptions {
  mode: MonitorMode;
  patience: number;
  minDelta: number;
  checkFinite?: boolean;
  stoppingThreshold?: number | null;
  divergenceThreshold?: number | null;
}

export interface EarlyStoppingState {
  /** The reference (Lightning's best_score); +-Infinity before the first validation. */
  best: number;
  /** Validations in a row without an improvement. */
  bad: number;
}

/** `a` is better than `b` under `mode`. */
export function better(mode: MonitorMode, a: number, b: number): boolean {
  return mode === "min" ? a < b : a > b;
}

/** The value every real value improves on. */
export function worst(mode: MonitorMode): number {
  return mode === "min" ? Infinity : -Infinity;
}

export class EarlyStopping {
  readonly options: Required<EarlyStoppingOptions>;
  #state: EarlyStoppingState;
  /** Why the last observe() said stop; "" while it has not. */
  reason = "";

  constructor(opts: EarlyStoppingOptions, state?: Partial<EarlyStoppingState>) {
    this.options = {
      checkFinite: true,
      stoppingThreshold: null,
      divergenceThreshold: null,
      ...opts,
      minDelta: Math.abs(opts.minDelta),
    };
    this.#state = { best: state?.best ?? worst(opts.mode), bad: state?.bad ?? 0 };
  }

  /** Records one validation's monitored value; true when the run should stop. */
  observe(value: number): boolean {
    const o = this.options;
    if (o.checkFinite && !Number.isFinite(value)) {
      this.reason = `the monitored value is ${value}`;
      return true;
    }
    if (o.stoppingThreshold !== null && better(o.mode, value, o.stoppingThreshold)) {
      this.reason = `the monitored value ${value} passed stopping_threshold ${o.stoppingThreshold}`;
      return true;
    }
    if (o.divergenceThreshold !== null && better(o.mode, o.divergenceThreshold, value)) {
      this.reason =
        `the monitored value ${value} diverged past divergence_threshold ${o.divergenceThreshold}`;
      return true;
    }
    const shifted = o.mode === "min" ? value + o.minDelta : value - o.minDelta;
    if (better(o.mode, shifted, this.#state.best)) {
      this.#state = { best: value, bad: 0 };
      return false;
    }
    this.#state = { ...this.#state, bad: this.#state.bad + 1 };
    if (this.#state.bad >= o.patience) {
      this.reason = `no improvement of more than ${o.minDelta} in ${o.patience} validations`;
      return true;
    }
    return false;
  }

  get state(): EarlyStoppingState {
    return { ...this.#state };
  }
}
