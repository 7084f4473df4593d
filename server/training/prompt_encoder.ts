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
 * - embedding (NeMo's): the embedding itself, Xavier-normal initialised.
 *
 * The embedding is N(0, 1) (torch.nn.Embedding) except for kind embedding, and Linear/LSTM layers
 * other than tpmlp's use PyTorch's default initialisation.
 * The input is always arange(n), so the embedding lookup is the embedding matrix itself; this
 * also keeps tf.gather (whose gradient the wasm backend lacks) out of the graph.
 * Dropout (NeMo's p_tuning.dropout) exists only where NeMo applies it: between the LSTM's layers
 * (nn.LSTM's dropout), in training passes, which take their masks explicitly (dropoutMasks()).
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
   * lstm only: nn.LSTM's dropout, on the output of every LSTM layer but the last, in training
   * passes (NeMo p_tuning.dropout, passed as lstm_dropout). Default 0; in [0, 1).
   */
  dropout?: number;
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

/**
 * The dropout masks of one training pass: one per LSTM layer but the last, [n * 2h] each, every
 * value 0 (dropped) or 1 / (1 - p) (kept and rescaled, as torch's dropout).
 */
export type DropoutMasks = readonly Float32Array[];

export interface PromptEncoder {
  readonly options: Readonly<Required<PromptEncoderOptions>>;
  /** Trainable parameters under their PyTorch names, in PyTorch's named_parameters() order. */
  readonly params: Map<string, tf.Variable>;
  /**
   * encoder(arange(n)): [numVirtualTokens, tokenDim]. The caller disposes it. Without masks it is
   * the encoder in eval mode (validation, the tables that are served); with them, a training pass.
   */
  forward(masks?: DropoutMasks): tf.Tensor2D;
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
  if ((o.kind === "tpmlp" || o.kind === "peft_mlp" || o.kind === "embedding") && numLayers !== 2) {
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
  const dropout = o.dropout ?? 0;
  if (typeof dropout !== "number" || !(dropout >= 0 && dropout < 1)) {
    throw new RangeError(
      `PromptEncoder option dropout must be a number in [0, 1): found ${JSON.stringify(o.dropout)}`,
    );
  }
  if (dropout !== 0 && o.kind !== "lstm") {
    throw new RangeError(
      `PromptEncoder option dropout must be 0 for kind "${o.kind}" (only the LSTM has dropout): ` +
        `found ${dropout}`,
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
    dropout,
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
  if (o.kind === "embedding") {
    // NeMo prompt_encoder.py v1.20.0:233-234: init.xavier_normal_(self.embedding.weight), whose
    // std is sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (d + n)) for an [n, d] weight.
    return [{
      name: "embedding.weight",
      shape: [n, d],
      init: { kind: "normal", std: Math.sqrt(2 / (n + d)) },
    }];
  }
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

/** Masks given to forward() must be the encoder's: one per LSTM layer but the last, [n * 2h]. */
function checkMasks(o: Required<PromptEncoderOptions>, masks: DropoutMasks | undefined) {
  if (!masks) return;
  const want = o.kind === "lstm" ? o.numLayers - 1 : 0;
  const size = o.numVirtualTokens * 2 * o.hiddenSize;
  if (masks.length !== want || masks.some((m) => m.length !== size)) {
    throw new RangeError(
      `PromptEncoder dropout masks must be ${want} of ${size} values (one per LSTM layer but ` +
        `the last, numVirtualTokens x 2 x hiddenSize): found ${masks.length} of ` +
        `[${masks.map((m) => m.length).join(", ")}]`,
    );
  }
}

/**
 * The masks of one training pass, drawn from `seed` (the same seed, the same masks), or
 * undefined when the encoder has no dropout: a training pass is then the eval forward.
 */
export function dropoutMasks(encoder: PromptEncoder, seed: number): DropoutMasks | undefined {
  const o = encoder.options;
  if (o.kind !== "lstm" || o.dropout === 0 || o.numLayers < 2) return undefined;
  const rand = mulberry32(seed);
  const keep = 1 / (1 - o.dropout);
  return Array.from({ length: o.numLayers - 1 }, () => {
    const m = new Float32Array(o.numVirtualTokens * 2 * o.hiddenSize);
    for (let i = 0; i < m.length; i++) m[i] = rand() < o.dropout ? 0 : keep;
    return m;
  });
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

  const forward = (masks?: DropoutMasks): tf.Tensor2D => {
    live();
    checkMasks(o, masks);
    return tf.tidy(() => {
      const emb = p("embedding.weight") as tf.Tensor2D; // [n, d]
      // NeMo prompt_encoder.py v1.20.0:321-323: output_embeds = input_embeds. A copy, so that
      // the caller's dispose() leaves the variable alone.
      if (o.kind === "embedding") return tf.clone(emb);
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
        // nn.LSTM: "a Dropout layer on the outputs of each LSTM layer except the last layer".
        if (masks && l < o.numLayers - 1) {
          x = tf.mul(x, tf.tensor2d(masks[l], x.shape)) as tf.Tensor2D;
        }
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
  masks?: DropoutMasks, // the training pass's, as given to forward()
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
    const { grads } = tf.variableGrads(() => tf.sum(tf.mul(encoder.forward(masks), g)), vars);
    for (const [name, v] of encoder.params) {
      out.set(name, Float32Array.from(grads[v.name].dataSync() as Float32Array));
    }
  });
  return out;
}

/** encoder() as plain data [n * tokenDim], e.g. to materialise a task's prompt table. */
export function encoderOutput(encoder: PromptEncoder, masks?: DropoutMasks): Float32Array {
  const t = encoder.forward(masks);
  try {
    return Float32Array.from(t.dataSync() as Float32Array);
  } finally {
    t.dispose();
  }
}
