/**
 * A Llama-family model with random weights built in memory, for the engine's own consistency tests
 * (cache, batching, gradients); the numbers themselves are checked against PyTorch elsewhere
 * (test/python/llama_reference.py).
 */
import type { Llama3RopeScaling, LlamaConfig } from "../llama_config.ts";
import { Prng } from "../decoding/prng.ts";
import type { LlamaLayerWeights, LlamaModel } from "../weights.ts";

export interface LlamaShape {
  vocabSize: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  nKvHead: number;
  nInner: number;
  headDim?: number;
  qkvBias?: boolean;
  tied?: boolean;
  ropeScaling?: Llama3RopeScaling;
}

/**
 * The engines' test shape: grouped-query heads (8 over 2) of a head_dim that is not hidden/heads'
 * default, q/k/v biases, Llama 3 rope scaling, an untied head.
 */
export const GQA_TEST_SHAPE: LlamaShape = {
  vocabSize: 64,
  nEmbd: 32,
  nLayer: 2,
  nHead: 8,
  nKvHead: 2,
  nInner: 48,
  headDim: 8,
  qkvBias: true,
  tied: false,
  ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64 },
};

export function randomLlama(shape: LlamaShape, seed = 1): LlamaModel {
  const rng = new Prng(seed);
  const D = shape.headDim ?? shape.nEmbd / shape.nHead;
  const config: LlamaConfig = {
    arch: "llama",
    modelType: shape.qkvBias ? "qwen2" : "llama",
    vocabSize: shape.vocabSize,
    nPositions: 512,
    nEmbd: shape.nEmbd,
    nLayer: shape.nLayer,
    nHead: shape.nHead,
    nKvHead: shape.nKvHead,
    headDim: D,
    nInner: shape.nInner,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: shape.ropeScaling,
    qkvBias: shape.qkvBias ?? false,
    oBias: false,
    bosTokenId: 0,
    eosTokenId: 1,
    tieWordEmbeddings: shape.tied ?? true,
  };
  const rnd = (n: number, std = 0.08, mean = 0) =>
    Float32Array.from({ length: n }, () => mean + (rng.next() * 2 - 1) * std * 1.7);
  const { nEmbd: C, nInner: F, vocabSize: V, nHead: H, nKvHead: KVH } = config;
  const layers: LlamaLayerWeights[] = Array.from({ length: config.nLayer }, () => {
    const l: LlamaLayerWeights = {
      inNorm: rnd(C, 0.1, 1),
      q: rnd(H * D * C),
      k: rnd(KVH * D * C),
      v: rnd(KVH * D * C),
      o: rnd(C * H * D),
      postNorm: rnd(C, 0.1, 1),
      gate: rnd(F * C),
      up: rnd(F * C),
      down: rnd(C * F),
    };
    if (config.qkvBias) {
      l.qB = rnd(H * D, 0.05);
      l.kB = rnd(KVH * D, 0.05);
      l.vB = rnd(KVH * D, 0.05);
    }
    return l;
  });
  return {
    dir: "(random llama)",
    config,
    weights: {
      wte: rnd(V * C, 0.3),
      layers,
      norm: rnd(C, 0.1, 1),
      lmHead: config.tieWordEmbeddings ? undefined : rnd(V * C, 0.3),
    },
    weightsHash: `random-llama-${seed}`,
  };
}
