/**
 * Early stopping as Lightning's EarlyStopping does it (mode "min"): a validation improves when its
 * loss is below the reference by more than min_delta, and only then does the reference move; the
 * run stops once `patience` validations in a row have not improved.
 */
export interface EarlyStoppingState {
  /** The reference loss (Lightning's best_score); Infinity before the first validation. */
  best: number;
  /** Validations in a row without an improvement. */
  bad: number;
}

export class EarlyStopping {
  readonly patience: number;
  readonly minDelta: number;
  #state: EarlyStoppingState;

  constructor(opts: { patience: number; minDelta: number }, state?: Partial<EarlyStoppingState>) {
    this.patience = opts.patience;
    this.minDelta = Math.abs(opts.minDelta);
    this.#state = { best: state?.best ?? Infinity, bad: state?.bad ?? 0 };
  }

  /** Records one validation loss; true when the run should stop. */
  observe(loss: number): boolean {
    if (loss < this.#state.best - this.minDelta) {
      this.#state = { best: loss, bad: 0 };
    } else {
      this.#state = { ...this.#state, bad: this.#state.bad + 1 };
    }
    return this.#state.bad >= this.patience;
  }

  get state(): EarlyStoppingState {
    return { ...this.#state };
  }
}
