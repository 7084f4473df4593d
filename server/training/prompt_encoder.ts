/**
 * P-tuning prompt encoders, built as NeMo 1.20 and PEFT build them so that a state dict loads by
 * name and the outputs match PyTorch. Kinds (NeMo's names where NeMo has the encoder):
 *
 * - tpmlp (NeMo's default): embedding [n, d] -> Linear(d, h) -> GELU (tanh approximation, as
 *   Megatron's fused bias_gelu) -> Linear(h, d); weights N(0, initStd), biases zero.
 * - mlp (NeMo's MLP): embedding -> Linear(d, h) -> ReLU -> [Linear(h, h) -> ReLU] x (numLayers - 2)
 *   -> Linear(h, d); numLayers counts the Linear layers (NeMo's num_layers, at least 2).
 * - lstm (NeMo and PEFT alike): embedding -> bidirectional LSTM (numLayers, hidden h, gate order
 *   i, f, g, o, bias_ih and bias_hh) -> Linear(2h, 2h) -> ReLU -> Linear(2h, d)
 * - peft_mlp (PEFT's MLP, fixed depth): embedding -> Linear(d, h) -> ReLU -> Linear(h, h) -> ReLU
 *   -> Linear(h, d); the same network as NeMo's mlp with numLayers 3.
 *
 * The embedding is N(0, 1) (torch.nn.Embedding) and Linear/LSTM layers other than tpmlp's use
 * PyTorch's default initialisation.
 * The input is always arange(n), so the embedding lookup is the embedding matrix itself; this
 * also keeps tf.gather (whose gradient the wasm backend lacks) out of the graph.
 * Dropout is not implemented: PEFT and NeMo default it to 0.
 */
import * as tf from "@tensorflow/tfjs-core";
import { mulberry32 } from "../util/random.ts";
// One list of kinds for the encoders and the registry that stores them.
import { ENCODER_KINDS, type EncoderKind } from "../registry/types.ts";

export { ENCODER_KINDS, type EncoderKind };

/** NeMo's p_tuning.init_std default: the std of tpmlp's weights. */
export const DEFAULT_INIT_STD = 0.023;

export interface PromptEncoderOptions {
  kind: EncoderKind;
  /** Rows of the encoder's output: the virtual tokens of one task (PEFT num_virtual_tokens). */
  numVirtualTokens: number;
  /** Width of each output row: the frozen model's embedding size (PEFT token_dim). */
  tokenDim: number;
  /** PEFT encoder_hidden_size (NeMo p_tuning.encoder_hidden). */
  hiddenSize: number;
  /**
   * NeMo p_tuning.num_layers / PEFT encoder_num_layers. Default 2. lstm: LSTM layers; mlp: Linear
   * layers (at least 2). tpmlp and peft_mlp have a fixed depth, so they accept only 2 (the
   * default of both libraries, which ignore it there) rather than silently ignoring another value.
   */
  numLayers?: number;
  /** tpmlp only: std of its weights (NeMo p_tuning.init_std). Default 0.023. */
  initStd?: number;
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
  /** How its library initialises it (PyTorch's defaults; Megatron's for tpmlp). */
  init: { kind: "normal"; std: number } | { kind: "uniform"; bound: number } | { kind: "zeros" };
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
  if (!ENCODER_KINDS.includes(o.kind)) {
    const kinds = ENCODER_KINDS.map((k) => `"${k}"`).join(", ");
    throw new RangeError(
      `PromptEncoder option kind must be one of ${kinds}: found ${JSON.stringify(o.kind)}`,
    );
  }
  const numLayers = checkPositiveInt(o.numLayers ?? 2, "numLayers");
  if ((o.kind === "tpmlp" || o.kind === "peft_mlp") && numLayers !== 2) {
    throw new RangeError(
      `PromptEncoder option numLayers must be 2 for kind "${o.kind}" (its depth is fixed; use ` +
        `kind "mlp" for NeMo's MLP of numLayers Linear layers): found ${numLayers}`,
    );
  }
  if (o.kind === "mlp" && numLayers < 2) {
    throw new RangeError(
      `PromptEncoder option numLayers must be at least 2 for kind "mlp" (NeMo's MLP has at least ` +
        `two Linear layers): found ${numLayers}`,
    );
  }
  const initStd = o.initStd ?? DEFAULT_INIT_STD;
  if (typeof initStd !== "number" || !Number.isFinite(initStd) || initStd <= 0) {
    throw new RangeError(
      `PromptEncoder option initStd must be a positive finite number: found ${
        JSON.stringify(o.initStd)
      }`,
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
    initStd,
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

/** Linear layers of mlp and peft_mlp: PEFT's MLP is NeMo's with three. */
function mlpDepth(o: Required<PromptEncoderOptions>): number {
  return o.kind === "peft_mlp" ? 3 : o.numLayers;
}

function paramSpecs(o: Required<PromptEncoderOptions>): ParamSpec[] {
  const { numVirtualTokens: n, tokenDim: d, hiddenSize: h } = o;
  const specs: ParamSpec[] = [
    { name: "embedding.weight", shape: [n, d], init: { kind: "normal", std: 1 } },
  ];
  if (o.kind === "tpmlp") {
    // Megatron's parallel linears: init_method_normal(init_std) weights, zeroed biases.
    const w = { kind: "normal" as const, std: o.initStd };
    const zeros = { kind: "zeros" as const };
    return specs.concat(
      { name: "tpmlp.first.weight", shape: [h, d], init: w },
      { name: "tpmlp.first.bias", shape: [h], init: zeros },
      { name: "tpmlp.second.weight", shape: [d, h], init: w },
      { name: "tpmlp.second.bias", shape: [d], init: zeros },
    );
  }
  if (o.kind === "mlp" || o.kind === "peft_mlp") {
    // nn.Sequential(Linear, ReLU, ..., Linear): the Linear layers sit at even indices.
    const depth = mlpDepth(o);
    for (let i = 0; i < depth; i++) {
      specs.push(...linearSpecs(`mlp_head.${2 * i}`, i === 0 ? d : h, i === depth - 1 ? d : h));
    }
    return specs;
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
  } else if (spec.init.kind === "normal") {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    const std = spec.init.std;
    for (let i = 0; i < out.length; i += 2) {
      const r = Math.sqrt(-2 * Math.log(1 - rand())) * std;
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

/**
 * GELU, tanh approximation: Megatron's fused bias_gelu (which NeMo's tpmlp uses), not the exact
 * erf form of torch.nn.GELU().
 */
function geluTanh(x: tf.Tensor2D): tf.Tensor2D {
  const inner = tf.mul(tf.mul(x, 0.79788456), tf.add(1, tf.mul(0.044715, tf.square(x))));
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(inner)));
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

/** Builds an encoder initialised as its library initialises it, drawn from `seed`. */
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
      if (o.kind === "tpmlp") {
        const a = geluTanh(linear(emb, p("tpmlp.first.weight"), p("tpmlp.first.bias"))); // [n, h]
        return linear(a, p("tpmlp.second.weight"), p("tpmlp.second.bias")); // [n, d]
      }
      if (o.kind === "mlp" || o.kind === "peft_mlp") {
        const depth = mlpDepth(o);
        let x: tf.Tensor2D = emb;
        for (let i = 0; i < depth; i++) {
          x = linear(x, p(`mlp_head.${2 * i}.weight`), p(`mlp_head.${2 * i}.bias`)); // [n, h|d]
          if (i < depth - 1) x = tf.relu(x);
        }
        return x;
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
