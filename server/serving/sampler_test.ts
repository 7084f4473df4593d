import assert from "node:assert/strict";
import { type GenerationOptions, resolveGenerationOptions } from "./generation_options.ts";
import { ServiceError } from "../errors.ts";
import {
  applyRepetitionPenalty,
  greedy,
  kthLargest,
  nucleus,
  SequenceSampler,
} from "../model/decoding/sampler.ts";
import { Prng } from "../model/decoding/prng.ts";

const LIMITS = {
  maxNewTokens: 64,
  defaultMaxNewTokens: 16,
  maxStopStrings: 4,
  maxStopStringLength: 8,
};
const EOS = 9;

function params(opts: GenerationOptions) {
  return resolveGenerationOptions(opts, LIMITS, () => 1234);
}

function sampler(opts: GenerationOptions, promptIds: number[] = []) {
  return new SequenceSampler(params(opts), promptIds, 10, EOS);
}

const row = (xs: number[]) => Float32Array.from(xs);

function logSoftmax(xs: number[], i: number): number {
  const m = Math.max(...xs);
  return xs[i] - m - Math.log(xs.reduce((s, x) => s + Math.exp(x - m), 0));
}

/** Token counts over many draws of the same logits, each from a fresh seed. */
function histogram(opts: GenerationOptions, logits: number[], draws = 2000): number[] {
  const counts = new Array(logits.length).fill(0);
  for (let seed = 0; seed < draws; seed++) {
    counts[sampler({ ...opts, seed }).next(row(logits)).tokenId]++;
  }
  return counts;
}

Deno.test("greedy picks the largest logit and the lowest id on ties", () => {
  assert.equal(sampler({}).next(row([0, 3, 1, 3, 2, 0, 0, 0, 0, 0])).tokenId, 1);
  assert.equal(greedy(row([-1, -2, -0.5]), false).tokenId, 2);
});

Deno.test("greedy logprobs are the log-softmax of the chosen token", () => {
  const xs = [0.5, 2, -1, 0, 0, 0, 0, 0, 0, 0];
  const t = sampler({ logprobs: true }).next(row(xs));
  assert.equal(t.tokenId, 1);
  assert.ok(Math.abs(t.logprob! - logSoftmax(xs, 1)) < 1e-6);
  assert.equal(sampler({}).next(row(xs)).logprob, undefined);
});

Deno.test("sampled logprobs use the temperature-scaled distribution", () => {
  const xs = [1, 2, 0.5, 0, -1, 0, 0.3, 0, 0, 0];
  const t = sampler({ doSample: true, temperature: 0.5, seed: 7, logprobs: true }).next(row(xs));
  const scaled = xs.map((x) => x / 0.5);
  assert.ok(Math.abs(t.logprob! - logSoftmax(scaled, t.tokenId)) < 1e-5);
});

Deno.test("the same seed gives the same draws; another seed gives others", () => {
  const xs = Array.from({ length: 10 }, (_, i) => Math.sin(i));
  const run = (seed: number) => {
    const s = sampler({ doSample: true, seed });
    return Array.from({ length: 40 }, () => s.next(row(xs)).tokenId);
  };
  assert.deepEqual(run(42), run(42));
  assert.notDeepEqual(run(42), run(43));
});

Deno.test("a low temperature concentrates draws on the top token, a high one spreads them", () => {
  const xs = [2, 1, 0, 0, 0, 0, 0, 0, 0, 0];
  const cold = histogram({ doSample: true, temperature: 0.1 }, xs, 500);
  assert.equal(cold[0], 500);
  const hot = histogram({ doSample: true, temperature: 5 }, xs, 500);
  assert.ok(hot[0] < 150, `top token drawn ${hot[0]} of 500 times at temperature 5`);
  assert.ok(hot.filter((c) => c > 0).length >= 8);
});

Deno.test("temperature has one rule, finite and > 0, whether sampling or not", () => {
  for (const t of [0, -1, NaN, Infinity]) {
    for (const doSample of [true, false]) {
      assert.throws(
        () => params({ doSample, temperature: t }),
        /temperature must be a finite number > 0/,
      );
    }
  }
});

Deno.test("top_k keeps only the k most likely tokens", () => {
  const xs = [0, 3, 1, 2.9, 0, 0, 2.8, 0, 0, 0];
  const counts = histogram({ doSample: true, topK: 2 }, xs);
  assert.deepEqual(counts.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0), [1, 3]);
  assert.equal(histogram({ doSample: true, topK: 1 }, xs, 200)[1], 200);
});

Deno.test("top_p keeps the smallest set of top tokens whose mass reaches p", () => {
  const probs = [0.05, 0.5, 0.15, 0.3];
  const p = row(probs);
  assert.deepEqual([...nucleus(p, 1, 0.7)], [1, 3]);
  assert.deepEqual([...nucleus(p, 1, 0.8)], [1, 3]);
  assert.deepEqual([...nucleus(p, 1, 0.81)], [1, 3, 2]);
  assert.deepEqual([...nucleus(p, 1, 0.01)], [1]);
  const xs = [...probs.map(Math.log), -1e9, -1e9, -1e9, -1e9, -1e9, -1e9];
  const counts = histogram({ doSample: true, topP: 0.7 }, xs);
  assert.deepEqual(counts.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0), [1, 3]);
  // Renormalised over the nucleus: 0.5 / 0.8 of draws go to token 1.
  assert.ok(Math.abs(counts[1] / 2000 - 0.625) < 0.04, `token 1 drawn ${counts[1]} of 2000`);
});

Deno.test("top_p finds the nucleus among many tiny probabilities", () => {
  const n = 50_000;
  const p = new Float32Array(n).fill(1);
  p[123] = 1000;
  const total = 1000 + (n - 1);
  const keep = nucleus(p, total, 0.5);
  assert.equal(keep[0], 123);
  // 1000 + k >= 0.5 * 50999 -> k = 24500 more tokens, lowest ids first among the ties.
  assert.equal(keep.length, 1 + Math.ceil(0.5 * total - 1000));
  assert.equal(keep[1], 0);
});

Deno.test("kthLargest agrees with a sort", () => {
  const rng = new Prng(5);
  const xs = Float32Array.from({ length: 1000 }, () => rng.next() * 10 - 5);
  const sorted = [...xs].sort((a, b) => b - a);
  for (const k of [1, 2, 17, 999, 1000]) assert.equal(kthLargest(xs, k), sorted[k - 1]);
});

Deno.test("repetition_penalty divides positive logits and multiplies negative ones", () => {
  const r = row([2, -2, 1, 4]);
  applyRepetitionPenalty(r, new Set([0, 1]), 2);
  assert.deepEqual([...r], [1, -4, 1, 4]);
});

Deno.test("repetition_penalty covers prompt and generated tokens, not virtual ones", () => {
  // Token 0 is in the prompt; 12 is a virtual id (>= vocab 10) and must be ignored.
  const s = sampler({ repetitionPenalty: 4 }, [0, 12]);
  const xs = [2, 1.5, 1, 0, 0, 0, 0, 0, 0, 0];
  assert.equal(s.next(row(xs)).tokenId, 1); // 2 / 4 = 0.5 < 1.5
  assert.equal(s.next(row(xs)).tokenId, 2); // now 1 is penalised too: 1.5 / 4 < 1
  assert.equal(sampler({}, [0]).next(row(xs)).tokenId, 0);
});

Deno.test("min_new_tokens suppresses EOS until enough tokens exist", () => {
  const xs = [0, 1, 0, 0, 0, 0, 0, 0, 0, 5]; // EOS (9) is the favourite
  const s = sampler({ minNewTokens: 2 });
  assert.equal(s.next(row(xs)).tokenId, 1);
  assert.equal(s.next(row(xs)).tokenId, 1);
  assert.equal(s.next(row(xs)).tokenId, EOS);
});

Deno.test("generation options are refused with the field, the bound and the value", () => {
  const bad: [GenerationOptions, string][] = [
    [
      { maxNewTokens: 65 },
      "max_new_tokens must be at most the server's max_new_tokens limit (64): found 65",
    ],
    [{ maxNewTokens: 0 }, "max_new_tokens must be an integer >= 1: found 0"],
    [{ minNewTokens: 20 }, "min_new_tokens must be at most max_new_tokens (16): found 20"],
    [{ temperature: -1 }, "temperature must be a finite number > 0: found -1"],
    [{ topP: 0 }, "top_p must be a number in (0, 1]: found 0"],
    [{ topP: NaN }, "top_p must be a number in (0, 1]: found NaN"],
    [
      { repetitionPenalty: Infinity },
      "repetition_penalty must be a finite number > 0: found Infinity",
    ],
    [{ topK: 1.5 }, "top_k must be an integer >= 0: found 1.5"],
    [{ repetitionPenalty: 0 }, "repetition_penalty must be a finite number > 0: found 0"],
    [{ seed: -1 }, "seed must be a non-negative safe integer: found -1"],
    [{ stop: ["a", "b", "c", "d", "e"] }, "stop must hold at most 4 strings: found 5"],
    [{ stop: [""] }, 'stop[0] must be a non-empty string of at most 8 characters: found ""'],
  ];
  for (const [opts, message] of bad) {
    assert.throws(() => params(opts), (e: unknown) => {
      assert.ok(e instanceof ServiceError);
      assert.equal(e.kind, "invalid_argument");
      assert.equal(e.message, message);
      return true;
    });
  }
});

Deno.test("a request without a seed gets one it can be replayed with", () => {
  assert.equal(params({ doSample: true }).seed, 1234);
  assert.notEqual(params({ seed: 2 ** 40 }).seed, params({ seed: 0 }).seed);
});
