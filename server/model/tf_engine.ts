/**
 * GPT-2 on TensorFlow.js: the portable "pure" engine, on any tfjs backend (wasm, cpu, tensorflow).
 * Packed inputs are laid out as a padded [B, T, C] batch internally (with an additive attention
 * bias for padding, causality and each sequence's cache), because tfjs works on dense tensors.
 * Gradients are taken with respect to the input embeddings only: the weights are constants.
 */
import type * as TF from "@tensorflow/tfjs-core";
import type { Gpt2Config } from "./gpt2_config.ts";
import {
  checkForkRows,
  defaultPositions,
  embedRows,
  type Engine,
  type ForwardInput,
  type ForwardOutput,
  type KvCache,
  type LossInput,
  type LossOutput,
  type SeqSpan,
  spanStarts,
  validatePacked,
} from "./engine.ts";
import type { Gpt2Model } from "./weights.ts";
import { toFloat32 } from "./half.ts";

type Tf = typeof TF;

interface TfLayer {
  ln1G: TF.Tensor1D;
  ln1B: TF.Tensor1D;
  attnW: TF.Tensor2D; // [C, 3C]
  attnB: TF.Tensor1D; // [3C]
  projW: TF.Tensor2D; // [C, C]
  projB: TF.Tensor1D;
  ln2G: TF.Tensor1D;
  ln2B: TF.Tensor1D;
  fcW: TF.Tensor2D; // [C, F]
  fcB: TF.Tensor1D;
  fcProjW: TF.Tensor2D; // [F, C]
  fcProjB: TF.Tensor1D;
}

/** Per-sequence cache: per layer keys and values [H, P, d]. */
class TfKvCache implements KvCache {
  keys: TF.Tensor3D[] = [];
  values: TF.Tensor3D[] = [];
  length = 0;
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
    this.keys = [];
    this.values = [];
    this.length = 0;
  }
}

/** How packed rows map onto the padded [B, T] grid of one call. */
interface Layout {
  B: number;
  T: number; // longest span this call
  P: number; // longest past among the caches
  starts: Int32Array;
  /** packed row -> padded row b*T+t */
  padIndex: Int32Array;
}

function layoutOf(seqs: SeqSpan[]): Layout {
  const B = seqs.length;
  const T = Math.max(1, ...seqs.map((s) => s.length));
  const P = Math.max(0, ...seqs.map((s) => s.cache?.length ?? 0));
  const starts = spanStarts(seqs);
  const total = seqs.reduce((n, s) => n + s.length, 0);
  const padIndex = new Int32Array(total);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < seqs[b].length; t++) padIndex[starts[b] + t] = b * T + t;
  }
  return { B, T, P, starts, padIndex };
}

export class TfEngine implements Engine {
  readonly name: string;
  readonly config: Gpt2Config;
  readonly #tf: Tf;
  readonly #model: Gpt2Model;
  readonly #wte: TF.Tensor2D; // [V, C]
  readonly #lmHead: TF.Tensor2D; // [V, C]
  readonly #lnFG: TF.Tensor1D;
  readonly #lnFB: TF.Tensor1D;
  readonly #layers: TfLayer[];

  /**
   * `kernels` names kernels swapped in for the backend's own (e.g. "openblas"). TF.js holds its
   * own float32 copy of every weight, so 16-bit matrices are widened here.
   */
  constructor(tf: Tf, model: Gpt2Model, kernels?: string) {
    this.#tf = tf;
    this.#model = model;
    this.config = model.config;
    this.name = `tfjs-${tf.getBackend()}${kernels ? `+${kernels}` : ""}`;
    const c = model.config, w = model.weights, C = c.nEmbd, F = c.nInner;
    this.#wte = tf.tensor2d(toFloat32(w.wte), [c.vocabSize, C]);
    this.#lmHead = w.lmHead ? tf.tensor2d(toFloat32(w.lmHead), [c.vocabSize, C]) : this.#wte;
    this.#lnFG = tf.tensor1d(w.lnFG);
    this.#lnFB = tf.tensor1d(w.lnFB);
    this.#layers = w.layers.map((l) => ({
      ln1G: tf.tensor1d(l.ln1G),
      ln1B: tf.tensor1d(l.ln1B),
      attnW: tf.tensor2d(toFloat32(l.attnW), [C, 3 * C]),
      attnB: tf.tensor1d(l.attnB),
      projW: tf.tensor2d(toFloat32(l.attnProjW), [C, C]),
      projB: tf.tensor1d(l.attnProjB),
      ln2G: tf.tensor1d(l.ln2G),
      ln2B: tf.tensor1d(l.ln2B),
      fcW: tf.tensor2d(toFloat32(l.fcW), [C, F]),
      fcB: tf.tensor1d(l.fcB),
      fcProjW: tf.tensor2d(toFloat32(l.fcProjW), [F, C]),
      fcProjB: tf.tensor1d(l.fcProjB),
    }));
  }

  embed(ids: ArrayLike<number>): Float32Array {
    return embedRows(this.#model.weights.wte, this.config.nEmbd, ids);
  }

  newCache(): KvCache {
    return new TfKvCache();
  }

  forkCache(cache: KvCache, rows = cache.length): KvCache {
    if (!(cache instanceof TfKvCache)) {
      throw new TypeError("forkCache(): the cache must come from this engine's newCache()");
    }
    checkForkRows(rows, cache.length);
    const tf = this.#tf;
    const copy = new TfKvCache();
    if (rows === 0) return copy;
    // Keys and values are [H, P, d]: the first `rows` positions of each layer.
    const cut = (t: TF.Tensor3D) =>
      tf.keep(rows === cache.length ? tf.clone(t) : tf.slice(t, [0, 0, 0], [-1, rows, -1]));
    copy.keys = cache.keys.map(cut);
    copy.values = cache.values.map(cut);
    copy.length = rows;
    return copy;
  }

  /** Padded input [B*T, C]: embeddings plus position embeddings, zero rows for padding. */
  #paddedInput(embeds: Float32Array, positions: Int32Array, lay: Layout): Float32Array {
    const C = this.config.nEmbd, wpe = this.#model.weights.wpe;
    const x = new Float32Array(lay.B * lay.T * C);
    for (let r = 0; r < lay.padIndex.length; r++) {
      const dst = lay.padIndex[r] * C, src = r * C, pe = positions[r] * C;
      for (let c = 0; c < C; c++) x[dst + c] = embeds[src + c] + wpe[pe + c];
    }
    return x;
  }

  /**
   * Additive attention bias [B, 1, T, P + T]: key j < P is sequence b's past (valid when
   * j < its cache length); key P + u is this call's token u (valid when u <= t and u < len).
   */
  #attentionBias(seqs: SeqSpan[], lay: Layout): Float32Array {
    const { B, T, P } = lay, S = P + T;
    const bias = new Float32Array(B * T * S).fill(-1e9);
    for (let b = 0; b < B; b++) {
      const past = seqs[b].cache?.length ?? 0, len = seqs[b].length;
      for (let t = 0; t < T; t++) {
        const row = (b * T + t) * S;
        for (let j = 0; j < past; j++) bias[row + j] = 0;
        for (let u = 0; u <= Math.min(t, len - 1); u++) bias[row + P + u] = 0;
      }
    }
    return bias;
  }

  #layerNorm(x: TF.Tensor, g: TF.Tensor1D, b: TF.Tensor1D): TF.Tensor {
    const tf = this.#tf;
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(
      tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, this.config.layerNormEpsilon))), g),
      b,
    );
  }

  #activation(x: TF.Tensor): TF.Tensor {
    const tf = this.#tf;
    switch (this.config.activation) {
      case "relu":
        return tf.relu(x);
      case "gelu": {
        // exact erf form
        return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
      }
      default: {
        // gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
        return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
      }
    }
  }

  /**
   * The transformer stack on a padded batch. `x` [B*T, C] already holds position embeddings.
   * With `caches`, past keys/values are prepended and this call's are returned for appending.
   * Returns the final hidden states before ln_f, [B*T, C].
   */
  #blocks(
    x: TF.Tensor2D,
    bias: TF.Tensor4D,
    lay: Layout,
    caches: (TfKvCache | undefined)[] | null,
    newKv: { k: TF.Tensor4D; v: TF.Tensor4D }[] | null,
  ): TF.Tensor2D {
    const tf = this.#tf, c = this.config, C = c.nEmbd, H = c.nHead, d = C / H;
    const { B, T, P } = lay;
    const scale = 1 / Math.sqrt(d);
    let h: TF.Tensor2D = x;
    for (let li = 0; li < this.#layers.length; li++) {
      const L = this.#layers[li];
      const a = this.#layerNorm(h, L.ln1G, L.ln1B) as TF.Tensor2D;
      const qkv = tf.add(tf.matMul(a, L.attnW), L.attnB) as TF.Tensor2D; // [B*T, 3C]
      const [q2, k2, v2] = tf.split(qkv, 3, 1) as TF.Tensor2D[]; // [B*T, C] each
      const heads = (t: TF.Tensor2D) =>
        tf.transpose(tf.reshape(t, [B, T, H, d]), [0, 2, 1, 3]) as TF.Tensor4D;
      const q = heads(q2); // [B, H, T, d]
      let k = heads(k2), v = heads(v2);
      if (newKv) newKv.push({ k, v });
      if (caches && P > 0) {
        // [B, H, P, d]: each sequence's past, zero-padded to the longest past.
        const pastOf = (which: "keys" | "values") =>
          tf.stack(caches.map((cache) => {
            const len = cache?.length ?? 0;
            if (len === 0) return tf.zeros([H, P, d]);
            const t = cache![which][li];
            return len === P ? t : tf.pad(t, [[0, 0], [0, P - len], [0, 0]]);
          })) as TF.Tensor4D;
        k = tf.concat([pastOf("keys"), k], 2);
        v = tf.concat([pastOf("values"), v], 2);
      }
      const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), scale), bias); // [B, H, T, P+T]
      const y = tf.matMul(tf.softmax(scores), v); // [B, H, T, d]
      const merged = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [B * T, C]) as TF.Tensor2D;
      h = tf.add(h, tf.add(tf.matMul(merged, L.projW), L.projB));
      const m = this.#layerNorm(h, L.ln2G, L.ln2B) as TF.Tensor2D;
      const f = this.#activation(tf.add(tf.matMul(m, L.fcW), L.fcB)) as TF.Tensor2D; // [B*T, F]
      h = tf.add(h, tf.add(tf.matMul(f, L.fcProjW), L.fcProjB));
    }
    return h;
  }

  forward(input: ForwardInput): Promise<ForwardOutput> {
    const tf = this.#tf, c = this.config;
    validatePacked(c, input.embeds, input.seqs, input.positions, input.logitRows, "logitRows");
    const positions = input.positions ?? defaultPositions(input.seqs);
    const lay = layoutOf(input.seqs);
    const caches = input.seqs.map((s) => s.cache as TfKvCache | undefined);
    if (caches.some((x) => x !== undefined && !(x instanceof TfKvCache))) {
      throw new TypeError("seqs[].cache must come from this engine's newCache()");
    }
    const rows = Int32Array.from(input.logitRows, (r) => lay.padIndex[r]);
    const newKv: { k: TF.Tensor4D; v: TF.Tensor4D }[] = [];
    const withCache = caches.some((x) => x !== undefined);
    const logits = tf.tidy(() => {
      const x = tf.tensor2d(this.#paddedInput(input.embeds, positions, lay), [
        lay.B * lay.T,
        c.nEmbd,
      ]);
      const bias = tf.tensor4d(this.#attentionBias(input.seqs, lay), [
        lay.B,
        1,
        lay.T,
        lay.P + lay.T,
      ]);
      const h = this.#blocks(x, bias, lay, withCache ? caches : null, withCache ? newKv : null);
      if (withCache) this.#appendToCaches(caches, input.seqs, newKv);
      const sel = tf.gather(h, tf.tensor1d(rows, "int32")); // [R, C]
      const hf = this.#layerNorm(sel, this.#lnFG, this.#lnFB) as TF.Tensor2D;
      return tf.matMul(hf, this.#lmHead, false, true); // [R, V]
    });
    const out = logits.dataSync() as Float32Array;
    logits.dispose();
    return Promise.resolve({ logits: out });
  }

  /** Appends this call's keys/values (valid rows only) to each sequence's cache; kept past tidy. */
  #appendToCaches(
    caches: (TfKvCache | undefined)[],
    seqs: SeqSpan[],
    newKv: { k: TF.Tensor4D; v: TF.Tensor4D }[],
  ): void {
    const tf = this.#tf;
    for (let b = 0; b < caches.length; b++) {
      const cache = caches[b];
      if (!cache || seqs[b].length === 0) continue;
      const len = seqs[b].length;
      for (let li = 0; li < newKv.length; li++) {
        const take = (t: TF.Tensor4D) =>
          tf.squeeze(tf.slice(t, [b, 0, 0, 0], [1, -1, len, -1]), [0]) as TF.Tensor3D;
        const k = take(newKv[li].k), v = take(newKv[li].v);
        const oldK = cache.keys[li], oldV = cache.values[li];
        cache.keys[li] = tf.keep(oldK ? tf.concat([oldK, k], 1) : k);
        cache.values[li] = tf.keep(oldV ? tf.concat([oldV, v], 1) : v);
        oldK?.dispose();
        oldV?.dispose();
      }
      cache.length += len;
    }
  }

  lossAndGrad(input: LossInput): Promise<LossOutput> {
    const tf = this.#tf, c = this.config, C = c.nEmbd;
    validatePacked(c, input.embeds, input.seqs, input.positions, input.lossRows, "lossRows");
    if (input.targets.length !== input.lossRows.length) {
      throw new RangeError(
        `targets must have one id per lossRows entry (${input.lossRows.length}): found ${input.targets.length}`,
      );
    }
    if (input.seqs.some((s) => s.cache)) throw new RangeError("lossAndGrad takes no KV caches");
    const R = input.lossRows.length;
    if (R === 0) throw new RangeError("lossRows must not be empty");
    const positions = input.positions ?? defaultPositions(input.seqs);
    const lay = layoutOf(input.seqs);
    // Row selection as a dense [R, B*T] matrix: tf.gather's gradient needs UnsortedSegmentSum,
    // which the wasm backend lacks; at R ~ 2 rows per sequence the product is cheap.
    const select = new Float32Array(R * lay.B * lay.T);
    for (let i = 0; i < R; i++) select[i * lay.B * lay.T + lay.padIndex[input.lossRows[i]]] = 1;
    const { loss, grad } = tf.tidy(() => {
      const x = tf.tensor2d(this.#paddedInput(input.embeds, positions, lay), [lay.B * lay.T, C]);
      const bias = tf.tensor4d(this.#attentionBias(input.seqs, lay), [lay.B, 1, lay.T, lay.T]);
      const sel = tf.tensor2d(select, [R, lay.B * lay.T]);
      const onehot = tf.oneHot(tf.tensor1d(input.targets, "int32"), c.vocabSize).toFloat();
      const f = (xIn: TF.Tensor) => {
        const h = this.#blocks(xIn as TF.Tensor2D, bias, lay, null, null);
        const hs = this.#layerNorm(tf.matMul(sel, h), this.#lnFG, this.#lnFB) as TF.Tensor2D; // [R, C]
        const logp = tf.logSoftmax(tf.matMul(hs, this.#lmHead, false, true)); // [R, V]
        return tf.div(tf.neg(tf.sum(tf.mul(onehot, logp))), R) as TF.Scalar;
      };
      const { value, grad } = tf.valueAndGrad(f)(x);
      return { loss: value, grad };
    });
    const lossValue = (loss.dataSync() as Float32Array)[0];
    const gPad = grad.dataSync() as Float32Array;
    loss.dispose();
    grad.dispose();
    // d(loss)/d(embeds) = d(loss)/d(x) at each packed row (x = embeds + wpe[pos]).
    const gradEmbeds = new Float32Array(input.embeds.length);
    for (let r = 0; r < lay.padIndex.length; r++) {
      gradEmbeds.set(gPad.subarray(lay.padIndex[r] * C, lay.padIndex[r] * C + C), r * C);
    }
    return Promise.resolve({ loss: lossValue, gradEmbeds });
  }

  dispose(): void {
    const all: TF.Tensor[] = [this.#wte, this.#lnFG, this.#lnFB];
    if (this.#lmHead !== this.#wte) all.push(this.#lmHead);
    for (const l of this.#layers) all.push(...Object.values(l));
    for (const t of all) t.dispose();
  }
}
