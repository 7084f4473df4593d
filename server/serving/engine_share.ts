/**
 * Inference first: one engine serves requests and trains, and a waiting request must not sit
 * behind training steps. Training's engine calls go through `forTraining(engine)`: each waits
 * while serving has work, unless training has had less than its guaranteed share of the engine's
 * time over the last window, so it slows down under load but never stalls. Serving's own calls
 * never wait here.
 *
 * A training call holds the engine for its whole length (a micro-batch: hundreds of ms on a CPU),
 * and every request that arrives meanwhile waits that long. So while serving is busy, a training
 * loss call is computed in slices of whole sequences, each about `sliceMs` long and each taking
 * its own turn; the slices' losses and gradients are weighted by their share of the scored tokens,
 * which gives the micro-batch's token mean (equal up to float rounding).
 */
import {
  type Engine,
  type ForwardInput,
  forwardPicked,
  type LossInput,
  type LossOutput,
} from "../model/engine.ts";
import type { RowPick } from "../model/decoding/pick.ts";

export interface EngineShareOptions {
  /**
   * Whether serving has work: requests accepted, waiting or running (the services pass
   * `InferenceService.active`, and the scheduler's last moments of work).
   */
  servingBusy: () => boolean;
  /** Training's guaranteed share of engine time while serving is busy, in [0, 1]. Default 0.1. */
  minTrainingShare?: number;
  /**
   * The window the share is measured over, in ms: training's longest burst while serving is busy
   * is its share of it. Default 500.
   */
  windowMs?: number;
  /** How often a waiting training call looks again, in ms. Default 2. */
  pollMs?: number;
  /** The engine time a slice of a training call aims at while serving is busy, in ms. Default 50. */
  sliceMs?: number;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

/** Training's default guaranteed share of the engine while requests are served (TRAINING_MIN_SHARE). */
export const DEFAULT_TRAINING_MIN_SHARE = 0.1;

export class EngineShare {
  readonly #busy: () => boolean;
  readonly #min: number;
  readonly #window: number;
  readonly #poll: number;
  readonly #sliceMs: number;
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;
  /** Training's engine calls that ended within the window: [start, end] in ms. */
  #runs: [number, number][] = [];
  #waits = 0;
  #slices = 0;
  /** Training's engine time per input row, from its last loss call (NaN before the first). */
  #msPerRow = NaN;

  constructor(opts: EngineShareOptions) {
    const min = opts.minTrainingShare ?? DEFAULT_TRAINING_MIN_SHARE;
    if (!(min >= 0 && min <= 1)) {
      throw new RangeError(`EngineShare: minTrainingShare must be in [0, 1]: found ${min}`);
    }
    this.#busy = opts.servingBusy;
    this.#min = min;
    this.#window = opts.windowMs ?? 500;
    this.#poll = opts.pollMs ?? 2;
    this.#sliceMs = opts.sliceMs ?? 50;
    this.#now = opts.now ?? (() => performance.now());
    this.#sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** Training's share of engine time over the last window. */
  trainingShare(): number {
    const now = this.#now(), from = now - this.#window;
    this.#runs = this.#runs.filter(([, end]) => end > from);
    let used = 0;
    for (const [start, end] of this.#runs) used += end - Math.max(start, from);
    return used / this.#window;
  }

  /** Training calls that had to wait for serving so far. */
  get waits(): number {
    return this.#waits;
  }

  /** Training loss calls computed in slices so far (because serving was busy). */
  get slicedCalls(): number {
    return this.#slices;
  }

  /**
   * Waits until training may use the engine; the returned function records the call's end. A
   * training call goes at once when serving is idle, or when training is below its share.
   */
  async turn(): Promise<() => void> {
    let waited = false;
    // While serving is busy, a serving step that is due goes first (with an engine on this
    // thread it waits on a timer between steps, and back-to-back training calls would otherwise
    // hand the engine only microtasks).
    if (this.#busy()) await this.#sleep(0);
    while (this.#busy() && this.trainingShare() >= this.#min) {
      waited = true;
      await this.#sleep(this.#poll);
    }
    if (waited) this.#waits++;
    const start = this.#now();
    return () => void this.#runs.push([start, this.#now()]);
  }

  /** `engine` for training: its forward and loss calls take their turn first. */
  forTraining(engine: Engine): Engine {
    const take = async <T>(call: () => Promise<T>): Promise<T> => {
      // A share of 1: training never waits (as before inference came first).
      if (this.#min >= 1) return call();
      const done = await this.turn();
      try {
        return await call();
      } finally {
        done();
      }
    };
    const loss = (input: LossInput): Promise<LossOutput> =>
      take(async () => {
        const t0 = this.#now();
        const out = await engine.lossAndGrad(input);
        const rows = Math.max(1, input.embeds.length / engine.config.nEmbd);
        this.#msPerRow = (this.#now() - t0) / rows;
        return out;
      });
    return {
      get name() {
        return engine.name;
      },
      config: engine.config,
      offThread: engine.offThread,
      embed: (ids) => engine.embed(ids),
      newCache: () => engine.newCache(),
      forkCache: (c, rows) => engine.forkCache(c, rows),
      forward: (input: ForwardInput) => take(() => engine.forward(input)),
      // Validation's generation reduces its rows where the engine holds the logits (in the
      // worker, with one), after its turn like any other call.
      forwardPicked: (input: ForwardInput, picks: readonly RowPick[]) =>
        take(() => forwardPicked(engine, input, picks)),
      lossAndGrad: (input: LossInput) => {
        if (this.#min >= 1 || !this.#busy() || !(this.#msPerRow > 0)) return loss(input);
        const maxRows = Math.max(1, Math.floor(this.#sliceMs / this.#msPerRow));
        const slices = sliceLossInput(input, engine.config.nEmbd, maxRows);
        if (slices.length === 1) return loss(input);
        this.#slices++;
        return joinSlices(slices, input, engine.config.nEmbd, loss);
      },
      // The engine is the service's: training does not end it.
      dispose: () => {},
    };
  }
}

/** One slice of a loss call: whole sequences, rows [row, row + rows) of the packed input. */
export interface LossSlice {
  input: LossInput;
  row: number;
  rows: number;
  /** The slice's scored tokens over the whole call's. */
  weight: number;
}

/**
 * `input` cut into slices of whole sequences of at most `maxRows` rows each (a longer sequence is
 * a slice alone); slices with nothing to score are left out, as their gradient is zero. A call
 * whose sequences have caches is not cut.
 */
export function sliceLossInput(input: LossInput, C: number, maxRows: number): LossSlice[] {
  const total = input.lossRows.length;
  if (input.seqs.some((s) => s.cache)) {
    return [{ input, row: 0, rows: input.embeds.length / C, weight: 1 }];
  }
  const slices: LossSlice[] = [];
  let row = 0, first = 0;
  const cut = (end: number, last: number) => {
    const keep: number[] = [];
    for (let k = 0; k < total; k++) {
      const r = input.lossRows[k];
      if (r >= row && r < end) keep.push(k);
    }
    if (keep.length > 0) {
      slices.push({
        input: {
          embeds: input.embeds.subarray(row * C, end * C),
          seqs: input.seqs.slice(first, last),
          positions: input.positions?.subarray(row, end),
          lossRows: Int32Array.from(keep, (k) => input.lossRows[k] - row),
          targets: Int32Array.from(keep, (k) => input.targets[k]),
        },
        row,
        rows: end - row,
        weight: keep.length / total,
      });
    }
    row = end;
    first = last;
  };
  let end = 0;
  for (let i = 0; i < input.seqs.length; i++) {
    const len = input.seqs[i].length;
    if (end > row && end + len - row > maxRows) cut(end, i);
    end += len;
  }
  cut(end, input.seqs.length);
  return slices;
}

/** Runs the slices one after another and joins them into the whole call's loss and gradient. */
async function joinSlices(
  slices: LossSlice[],
  input: LossInput,
  C: number,
  run: (input: LossInput) => Promise<LossOutput>,
): Promise<LossOutput> {
  const gradEmbeds = new Float32Array(input.embeds.length);
  let loss = 0;
  for (const s of slices) {
    const out = await run(s.input);
    loss += out.loss * s.weight;
    const g = gradEmbeds.subarray(s.row * C, (s.row + s.rows) * C);
    for (let i = 0; i < g.length; i++) g[i] = out.gradEmbeds[i] * s.weight;
  }
  return { loss, gradEmbeds };
}
