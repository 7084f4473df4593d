/**
 * AdamW (and Adam with L2 weight decay) on plain Float32Array parameters, with PyTorch's exact
 * update rule, plus gradient clipping by global norm as torch.nn.utils.clip_grad_norm_ does it.
 * Parameters and gradients travel as Map<name, Float32Array> so the trainer can hand in prompt
 * tables and encoder weights alike, and checkpoints can save the moments by name.
 */

export interface AdamWOptions {
  /** Default [0.9, 0.999] (torch). */
  betas?: [number, number];
  /** Added outside the square root. Default 1e-8. */
  eps?: number;
  /** Default 0.01 (torch.optim.AdamW). */
  weightDecay?: number;
  /**
   * true (default): decoupled weight decay, p -= lr * wd * p, as torch.optim.AdamW and NeMo's
   * fused_adam. false: L2 decay folded into the gradient, g += wd * p, as torch.optim.Adam.
   */
  decoupled?: boolean;
}

/** Moments of one parameter after `step` updates (torch keeps a step count per parameter). */
export interface AdamWParamState {
  step: number;
  expAvg: Float32Array;
  expAvgSq: Float32Array;
}

export interface AdamWState {
  options: Required<AdamWOptions>;
  params: Record<string, AdamWParamState>;
}

function checkOptions(o: AdamWOptions): Required<AdamWOptions> {
  const betas = o.betas ?? [0.9, 0.999];
  const eps = o.eps ?? 1e-8;
  const weightDecay = o.weightDecay ?? 0.01;
  const decoupled = o.decoupled ?? true;
  if (!Array.isArray(betas) || betas.length !== 2) {
    throw new RangeError(`AdamW option betas must be two numbers: found ${JSON.stringify(betas)}`);
  }
  betas.forEach((b, i) => {
    if (!(b >= 0 && b < 1)) {
      throw new RangeError(`AdamW option betas[${i}] must be in [0, 1): found ${b}`);
    }
  });
  if (!(eps >= 0 && Number.isFinite(eps))) {
    throw new RangeError(`AdamW option eps must be a finite number >= 0: found ${eps}`);
  }
  if (!(weightDecay >= 0 && Number.isFinite(weightDecay))) {
    throw new RangeError(
      `AdamW option weightDecay must be a finite number >= 0: found ${weightDecay}`,
    );
  }
  return { betas: [betas[0], betas[1]], eps, weightDecay, decoupled };
}

export class AdamW {
  readonly options: Readonly<Required<AdamWOptions>>;
  #moments = new Map<string, AdamWParamState>();

  constructor(options: AdamWOptions = {}) {
    this.options = checkOptions(options);
  }

  /**
   * Updates `params` in place with `grads` at learning rate `lr`. A parameter without a
   * gradient is left alone and its step count does not advance (torch skips grad=None).
   */
  step(params: Map<string, Float32Array>, grads: Map<string, Float32Array>, lr: number): void {
    if (!(lr >= 0 && Number.isFinite(lr))) {
      throw new RangeError(`AdamW.step() lr must be a finite number >= 0: found ${lr}`);
    }
    for (const [name, g] of grads) {
      const p = params.get(name);
      if (!p) throw new RangeError(`AdamW.step() got a gradient for unknown parameter ${name}`);
      if (g.length !== p.length) {
        throw new RangeError(
          `AdamW.step() gradient of ${name} has ${g.length} values: the parameter has ${p.length}`,
        );
      }
      const m = this.#moments.get(name);
      if (m && m.expAvg.length !== p.length) {
        throw new RangeError(
          `AdamW.step() parameter ${name} has ${p.length} values: its moments have ${m.expAvg.length}`,
        );
      }
    }
    const [b1, b2] = this.options.betas;
    const { eps, weightDecay: wd, decoupled } = this.options;
    for (const [name, g] of grads) {
      const p = params.get(name)!;
      let s = this.#moments.get(name);
      if (!s) {
        s = { step: 0, expAvg: new Float32Array(p.length), expAvgSq: new Float32Array(p.length) };
        this.#moments.set(name, s);
      }
      s.step += 1;
      const stepSize = lr / (1 - b1 ** s.step);
      const bc2Sqrt = Math.sqrt(1 - b2 ** s.step);
      const decay = decoupled ? 1 - lr * wd : 1;
      const l2 = decoupled ? 0 : wd;
      const { expAvg: m, expAvgSq: v } = s;
      for (let i = 0; i < p.length; i++) {
        const gi = g[i] + l2 * p[i];
        const pi = p[i] * decay;
        m[i] = m[i] * b1 + gi * (1 - b1);
        v[i] = v[i] * b2 + gi * gi * (1 - b2);
        p[i] = pi - stepSize * m[i] / (Math.sqrt(v[i]) / bc2Sqrt + eps);
      }
    }
  }

  /** A copy of the options and every parameter's moments, for a checkpoint. */
  state(): AdamWState {
    const params: Record<string, AdamWParamState> = {};
    for (const [name, s] of this.#moments) {
      params[name] = { step: s.step, expAvg: s.expAvg.slice(), expAvgSq: s.expAvgSq.slice() };
    }
    return { options: { ...this.options, betas: [...this.options.betas] }, params };
  }

  /**
   * Restores moments saved by state(). The options must match this optimizer's: resuming with
   * different betas would silently change the run.
   */
  loadState(state: AdamWState): void {
    const mine = this.options;
    const theirs = checkOptions(state.options);
    for (const key of ["eps", "weightDecay", "decoupled"] as const) {
      if (mine[key] !== theirs[key]) {
        throw new RangeError(
          `AdamW.loadState() option ${key} is ${theirs[key]} in the state: this optimizer has ${
            mine[key]
          }`,
        );
      }
    }
    if (mine.betas[0] !== theirs.betas[0] || mine.betas[1] !== theirs.betas[1]) {
      throw new RangeError(
        `AdamW.loadState() option betas is ${JSON.stringify(theirs.betas)} in the state: this ` +
          `optimizer has ${JSON.stringify(mine.betas)}`,
      );
    }
    const next = new Map<string, AdamWParamState>();
    for (const [name, s] of Object.entries(state.params)) {
      if (!Number.isInteger(s.step) || s.step < 0) {
        throw new RangeError(
          `AdamW.loadState() ${name}.step must be an integer >= 0: found ${s.step}`,
        );
      }
      if (s.expAvg.length !== s.expAvgSq.length) {
        throw new RangeError(
          `AdamW.loadState() ${name}: expAvg has ${s.expAvg.length} values, expAvgSq has ` +
            `${s.expAvgSq.length}`,
        );
      }
      next.set(name, {
        step: s.step,
        expAvg: Float32Array.from(s.expAvg),
        expAvgSq: Float32Array.from(s.expAvgSq),
      });
    }
    this.#moments = next;
  }
}

/**
 * Scales all gradients in place so their global L2 norm is at most `maxNorm`, and returns the
 * norm before clipping (torch.nn.utils.clip_grad_norm_ with norm_type 2, including its 1e-6 in
 * the denominator). A non-finite norm is returned and the gradients are left alone, so the
 * caller can skip the step.
 */
export function clipGradNorm(grads: Map<string, Float32Array>, maxNorm: number): number {
  if (!(maxNorm > 0 && Number.isFinite(maxNorm))) {
    throw new RangeError(`clipGradNorm() maxNorm must be a finite number > 0: found ${maxNorm}`);
  }
  let sumSq = 0;
  for (const g of grads.values()) {
    for (let i = 0; i < g.length; i++) sumSq += g[i] * g[i];
  }
  const total = Math.sqrt(sumSq);
  if (!Number.isFinite(total)) return total;
  const coef = maxNorm / (total + 1e-6);
  if (coef < 1) {
    for (const g of grads.values()) {
      for (let i = 0; i < g.length; i++) g[i] *= coef;
    }
  }
  return total;
}
