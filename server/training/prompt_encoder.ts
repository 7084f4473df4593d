/**
 * P-tuning prompt encoders built exactly as PEFT's `PromptEncoder` builds them, so a PEFT
 * state dict loads by name and the outputs match PyTorch:
 *
 * - lstm: embedding [n, d] -> bidirectional LSTM (numLayers, hidden h, gate order i, f, g, o,
 *   bias_ih and bias_hh) -> Linear(2h, 2h) -> ReLU -> Linear(2h, d)
 * - mlp:  embedding [n, d] -> Linear(d, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, d)
 *
 * The input is always arange(n), so the embedding lookup is the embedding matrix itself; this
 * also keeps tf.gather (whose gradient the wasm backend lacks) out of the graph.
 * Dropout is not implemented: PEFT and NeMo default it to 0.
 */
import * as tf from "@tensorflow/tfjs-core";
import { mulberry32 } from "../util/random.ts";

export type EncoderKind = "lstm" | "mlp";

export interface PromptEncoderOptions {
  kind: EncoderKind;
  /** Rows of the encoder's output: the virtual tokens of one task (PEFT num_virtual_tokens). */
  numVirtualTokens: number;
  /** Width of each output row: the frozen model's embedding size (PEFT token_dim). */
  tokenDim: number;
  /** PEFT encoder_hidden_size (NeMo p_tuning.encoder_hidden). */
  hiddenSize: number;
  /**
   * LSTM layers (PEFT encoder_num_layers). Default 2. PEFT's MLP always has the depth
   * described above, so "mlp" accepts only 2.
   */
  numLayers?: number;
  /**
   * LSTM only: lengths of independent sequences the rows form (the tasks sharing the encoder),
   * summing to numVirtualTokens. The recurrence restarts at each, so one task's rows never depend
   * on another's embeddings. Default: one sequence of all rows (PEFT).
   */
  segments?: number[];
  /** Seed of the initialisation. */
  seed: number;
}

/** One parameter as plain data: PyTorch layout (Linear weight is [out, in]). */
export interface StateTensor {
  shape: number[];
  data: Float32Array;
}

export type EncoderState = Record<string, StateTensor>;

export interface PromptEncoder {
  readonly options: Readonly<Required<PromptEncoderOptions>>;
  /** Trainable parameters under their PyTorch names, in PyTorch's named_parameters() order. */
  readonly params: Map<string, tf.Variable>;
  /** encoder(arange(n)): [numVirtualTokens, tokenDim]. The caller disposes it. */
  forward(): tf.Tensor2D;
  /** Replaces every parameter; all names must be present with their exact shapes. */
  loadState(tensors: Record<string, { shape: readonly number[]; data: ArrayLike<number> }>): void;
  /** A copy of every parameter. */
  state(): EncoderState;
  dispose(): void;
}

interface ParamSpec {
  name: string;
  shape: number[];
  /** How PyTorch initialises it. */
  init: { kind: "normal" } | { kind: "uniform"; bound: number };
}

function checkPositiveInt(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw new RangeError(
      `PromptEncoder option ${field} must be a positive integer: found ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function validateOptions(o: PromptEncoderOptions): Required<PromptEncoderOptions> {
  if (o.kind !== "lstm" && o.kind !== "mlp") {
    throw new RangeError(
      `PromptEncoder option kind must be "lstm" or "mlp": found ${JSON.stringify(o.kind)}`,
    );
  }
  const numLayers = checkPositiveInt(o.numLayers ?? 2, "numLayers");
  if (o.kind === "mlp" && numLayers !== 2) {
    throw new RangeError(
      `PromptEncoder option numLayers must be 2 for kind "mlp" (PEFT's MLP encoder has a fixed ` +
        `depth): found ${numLayers}`,
    );
  }
  if (!Number.isFinite(o.seed)) {
    throw new RangeError(`PromptEncoder option seed must be a finite number: found ${o.seed}`);
  }
  const n = checkPositiveInt(o.numVirtualTokens, "numVirtualTokens");
  const segments = o.segments ?? [n];
  segments.forEach((len, i) => checkPositiveInt(len, `segments[${i}]`));
  const total = segments.reduce((a, b) => a + b, 0);
  if (total !== n) {
    throw new RangeError(
      `PromptEncoder option segments must sum to numVirtualTokens (${n}): current sum is ${total}`,
    );
  }
  return {
    kind: o.kind,
    numVirtualTokens: n,
    segments,
    tokenDim: checkPositiveInt(o.tokenDim, "tokenDim"),
    hiddenSize: checkPositiveInt(o.hiddenSize, "hiddenSize"),
    numLayers,
    seed: o.seed,
  };
}

function linearSpecs(prefix: string, inDim: number, outDim: number): ParamSpec[] {
  // nn.Linear: kaiming_uniform_(a=sqrt(5)) on the weight gives bound 1/sqrt(fan_in); the bias
  // uses the same bound.
  const bound = 1 / Math.sqrt(inDim);
  return [
    { name: `${prefix}.weight`, shape: [outDim, inDim], init: { kind: "uniform", bound } },
    { name: `${prefix}.bias`, shape: [outDim], init: { kind: "uniform", bound } },
  ];
}

function paramSpecs(o: Required<PromptEncoderOptions>): ParamSpec[] {
  const { numVirtualTokens: n, tokenDim: d, hiddenSize: h } = o;
  const specs: ParamSpec[] = [
    { name: "embedding.weight", shape: [n, d], init: { kind: "normal" } },
  ];
  if (o.kind === "mlp") {
    return specs.concat(
      linearSpecs("mlp_head.0", d, h),
      linearSpecs("mlp_head.2", h, h),
      linearSpecs("mlp_head.4", h, d),
    );
  }
  // nn.LSTM initialises every weight and bias uniform(-1/sqrt(h), 1/sqrt(h)).
  const init = { kind: "uniform" as const, bound: 1 / Math.sqrt(h) };
  for (let l = 0; l < o.numLayers; l++) {
    const inDim = l === 0 ? d : 2 * h;
    for (const dir of ["", "_reverse"]) {
      const s = `l${l}${dir}`;
      specs.push(
        { name: `lstm_head.weight_ih_${s}`, shape: [4 * h, inDim], init },
        { name: `lstm_head.weight_hh_${s}`, shape: [4 * h, h], init },
        { name: `lstm_head.bias_ih_${s}`, shape: [4 * h], init },
        { name: `lstm_head.bias_hh_${s}`, shape: [4 * h], init },
      );
    }
  }
  return specs.concat(linearSpecs("mlp_head.0", 2 * h, 2 * h), linearSpecs("mlp_head.2", 2 * h, d));
}

function initialValues(spec: ParamSpec, rand: () => number): Float32Array {
  const out = new Float32Array(spec.shape.reduce((a, b) => a * b, 1));
  if (spec.init.kind === "uniform") {
    const b = spec.init.bound;
    for (let i = 0; i < out.length; i++) out[i] = (2 * rand() - 1) * b;
  } else {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    for (let i = 0; i < out.length; i += 2) {
      const r = Math.sqrt(-2 * Math.log(1 - rand()));
      const theta = 2 * Math.PI * rand();
      out[i] = r * Math.cos(theta);
      if (i + 1 < out.length) out[i + 1] = r * Math.sin(theta);
    }
  }
  return out;
}

/** y = x W^T + b with a PyTorch-layout weight. */
function linear(x: tf.Tensor2D, w: tf.Tensor, b: tf.Tensor): tf.Tensor2D {
  return tf.add(tf.matMul(x, w as tf.Tensor2D, false, true), b);
}

/** One direction of one LSTM layer over the whole sequence (batch 1). */
function lstmDirection(
  x: tf.Tensor2D, // [n, in]
  p: (name: string) => tf.Variable,
  suffix: string,
  reverse: boolean,
): tf.Tensor2D {
  const n = x.shape[0];
  const wHh = p(`lstm_head.weight_hh_${suffix}`) as tf.Tensor2D; // [4h, h]
  const h = wHh.shape[1];
  // Input projections for every step at once; both biases fold in here.
  const xw = linear(
    x,
    p(`lstm_head.weight_ih_${suffix}`),
    tf.add(p(`lstm_head.bias_ih_${suffix}`), p(`lstm_head.bias_hh_${suffix}`)),
  ); // [n, 4h]
  const rows = tf.split(xw, n, 0); // n x [1, 4h]
  let hPrev: tf.Tensor2D = tf.zeros([1, h]);
  let cPrev: tf.Tensor2D = tf.zeros([1, h]);
  const outs: tf.Tensor2D[] = new Array(n);
  for (let s = 0; s < n; s++) {
    const t = reverse ? n - 1 - s : s;
    const gates = tf.add(rows[t], tf.matMul(hPrev, wHh, false, true)); // [1, 4h]
    const [i, f, g, o] = tf.split(gates, 4, 1); // 4 x [1, h], PyTorch order i, f, g, o
    const c = tf.add(tf.mul(tf.sigmoid(f), cPrev), tf.mul(tf.sigmoid(i), tf.tanh(g))); // [1, h]
    const hNext = tf.mul(tf.sigmoid(o), tf.tanh(c)) as tf.Tensor2D; // [1, h]
    outs[t] = hNext;
    hPrev = hNext;
    cPrev = c as tf.Tensor2D;
  }
  return tf.concat(outs, 0); // [n, h]
}

/** Builds an encoder with PyTorch-default initialisation drawn from `seed`. */
export function createPromptEncoder(options: PromptEncoderOptions): PromptEncoder {
  const o = validateOptions(options);
  const specs = paramSpecs(o);
  const rand = mulberry32(o.seed);
  const params = new Map<string, tf.Variable>();
  for (const spec of specs) {
    const values = initialValues(spec, rand);
    params.set(spec.name, tf.tidy(() => tf.variable(tf.tensor(values, spec.shape), true)));
  }
  const p = (name: string): tf.Variable => params.get(name)!;
  let disposed = false;
  const live = () => {
    if (disposed) throw new TypeError("PromptEncoder is used after dispose()");
  };

  const forward = (): tf.Tensor2D => {
    live();
    return tf.tidy(() => {
      const emb = p("embedding.weight") as tf.Tensor2D; // [n, d]
      if (o.kind === "mlp") {
        const a = tf.relu(linear(emb, p("mlp_head.0.weight"), p("mlp_head.0.bias"))); // [n, h]
        const b = tf.relu(linear(a, p("mlp_head.2.weight"), p("mlp_head.2.bias"))); // [n, h]
        return linear(b, p("mlp_head.4.weight"), p("mlp_head.4.bias")); // [n, d]
      }
      let x: tf.Tensor2D = emb;
      for (let l = 0; l < o.numLayers; l++) {
        const parts: tf.Tensor2D[] = [];
        let at = 0;
        for (const len of o.segments) {
          const xs = o.segments.length === 1 ? x : tf.slice(x, [at, 0], [len, -1]); // [len, .]
          const fwd = lstmDirection(xs, p, `l${l}`, false); // [len, h]
          const bwd = lstmDirection(xs, p, `l${l}_reverse`, true); // [len, h]
          parts.push(tf.concat([fwd, bwd], 1)); // [len, 2h]
          at += len;
        }
        x = parts.length === 1 ? parts[0] : tf.concat(parts, 0); // [n, 2h]
      }
      const a = tf.relu(linear(x, p("mlp_head.0.weight"), p("mlp_head.0.bias"))); // [n, 2h]
      return linear(a, p("mlp_head.2.weight"), p("mlp_head.2.bias")); // [n, d]
    });
  };

  const loadState: PromptEncoder["loadState"] = (tensors) => {
    live();
    // Check everything before assigning anything, so a bad state leaves the encoder as it was.
    const unknown = Object.keys(tensors).filter((k) => !params.has(k));
    if (unknown.length > 0) {
      throw new RangeError(
        `PromptEncoder state has unknown parameter(s) ${unknown.join(", ")}: expected ` +
          `${[...params.keys()].join(", ")}`,
      );
    }
    for (const spec of specs) {
      const t = tensors[spec.name];
      if (!t) throw new RangeError(`PromptEncoder state is missing parameter ${spec.name}`);
      const count = spec.shape.reduce((a, b) => a * b, 1);
      if (
        t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i]) ||
        t.data.length !== count
      ) {
        throw new RangeError(
          `PromptEncoder state parameter ${spec.name} has shape ${JSON.stringify(t.shape)} ` +
            `(${t.data.length} values): expected ${JSON.stringify(spec.shape)} (${count} values)`,
        );
      }
    }
    for (const spec of specs) {
      const t = tensors[spec.name];
      tf.tidy(() => p(spec.name).assign(tf.tensor(Float32Array.from(t.data), spec.shape)));
    }
  };

  const state = (): EncoderState => {
    live();
    const out: EncoderState = {};
    for (const spec of specs) {
      out[spec.name] = {
        shape: [...spec.shape],
        data: Float32Array.from(p(spec.name).dataSync() as Float32Array),
      };
    }
    return out;
  };

  const dispose = () => {
    if (disposed) return;
    disposed = true;
    for (const v of params.values()) v.dispose();
  };

  return { options: o, params, forward, loadState, state, dispose };
}

/**
 * Vector-Jacobian product: the gradient of sum(encoder() * gradOut) with respect to each
 * parameter. With gradOut = d(loss)/d(encoder output), computed by the frozen model, this is
 * d(loss)/d(parameter).
 */
export function encoderGradFromOutputGrad(
  encoder: PromptEncoder,
  gradOut: Float32Array, // [n, tokenDim]
): Map<string, Float32Array> {
  const { numVirtualTokens: n, tokenDim: d } = encoder.options;
  if (gradOut.length !== n * d) {
    throw new RangeError(
      `gradOut must hold numVirtualTokens x tokenDim = ${n} x ${d} = ${n * d} values: ` +
        `found ${gradOut.length}`,
    );
  }
  const out = new Map<string, Float32Array>();
  tf.tidy(() => {
    const g = tf.tensor2d(gradOut, [n, d]);
    const vars = [...encoder.params.values()];
    const { grads } = tf.variableGrads(() => tf.sum(tf.mul(encoder.forward(), g)), vars);
    for (const [name, v] of encoder.params) {
      out.set(name, Float32Array.from(grads[v.name].dataSync() as Float32Array));
    }
  });
  return out;
}

/** encoder() as plain data [n * tokenDim], e.g. to materialise a task's prompt table. */
export function encoderOutput(encoder: PromptEncoder): Float32Array {
  const t = encoder.forward();
  try {
    return Float32Array.from(t.dataSync() as Float32Array);
  } finally {
    t.dispose();
  }
}
