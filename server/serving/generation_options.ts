/**
 * Per-request generation options as callers give them (all optional), and their validated,
 * defaulted form. Validation happens before any work and names the field, the expected range and
 * what was found.
 */
import { invalidArgument } from "../errors.ts";
import type { SamplingParams } from "../model/decoding/sampler.ts";

export type { SamplingParams };

export interface GenerationOptions {
  /** Tokens to generate at most. Default: the scheduler's `defaultMaxNewTokens` (32). */
  maxNewTokens?: number;
  /** EOS is suppressed until this many tokens exist. Default 0. */
  minNewTokens?: number;
  /** false (default): greedy; true: sample with temperature / top_k / top_p. */
  doSample?: boolean;
  /** Finite and > 0; default 1. Sampling only (greedy is `doSample: false`). */
  temperature?: number;
  /** Keep the k most likely tokens; 0 (default) keeps all. Sampling only. */
  topK?: number;
  /** Nucleus: keep the smallest set of top tokens with mass >= p; in (0, 1], 1 (default) keeps all. */
  topP?: number;
  /** Seeds this request's own PRNG: same seed, same output, whoever shares the batch. */
  seed?: number;
  /** HF/CTRL penalty over prompt + generated tokens; 1 (default) is off. */
  repetitionPenalty?: number;
  /** Generation stops when the text contains one of these; it is trimmed from the result. */
  stop?: string[];
  /** Return the log-probability of each chosen token under the processed distribution. */
  logprobs?: boolean;
}

export interface OptionLimits {
  /** Upper bound on `maxNewTokens`. */
  maxNewTokens: number;
  /** Used when a request gives no `maxNewTokens`. */
  defaultMaxNewTokens: number;
  maxStopStrings: number;
  maxStopStringLength: number;
}

/**
 * Checks and defaults `opts`. `randomSeed` supplies the seed of a request that gave none (so a
 * sampled request is still reproducible from its logged seed).
 */
export function resolveGenerationOptions(
  opts: GenerationOptions,
  limits: OptionLimits,
  randomSeed: () => number,
): SamplingParams {
  const int = (field: string, v: number | undefined, fallback: number, min: number) => {
    if (v === undefined) return fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
      throw invalidArgument(`${field} must be an integer >= ${min}: found ${v}`);
    }
    return v;
  };
  const maxNewTokens = int("max_new_tokens", opts.maxNewTokens, limits.defaultMaxNewTokens, 1);
  if (maxNewTokens > limits.maxNewTokens) {
    throw invalidArgument(
      `max_new_tokens must be at most the server's max_new_tokens limit (${limits.maxNewTokens}): found ${maxNewTokens}`,
      "max_new_tokens",
    );
  }
  const minNewTokens = int("min_new_tokens", opts.minNewTokens, 0, 0);
  if (minNewTokens > maxNewTokens) {
    throw invalidArgument(
      `min_new_tokens must be at most max_new_tokens (${maxNewTokens}): found ${minNewTokens}`,
    );
  }
  // Every number is checked with one rule, here: NaN and infinities fail each comparison.
  const temperature = opts.temperature ?? 1;
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || !(temperature > 0)) {
    throw invalidArgument(`temperature must be a finite number > 0: found ${temperature}`);
  }
  const topK = int("top_k", opts.topK, 0, 0);
  const topP = opts.topP ?? 1;
  if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
    throw invalidArgument(`top_p must be a number in (0, 1]: found ${topP}`);
  }
  const repetitionPenalty = opts.repetitionPenalty ?? 1;
  if (
    typeof repetitionPenalty !== "number" || !Number.isFinite(repetitionPenalty) ||
    repetitionPenalty <= 0
  ) {
    throw invalidArgument(
      `repetition_penalty must be a finite number > 0: found ${repetitionPenalty}`,
    );
  }
  let seed: number;
  if (opts.seed === undefined) {
    seed = randomSeed() >>> 0;
  } else if (
    typeof opts.seed !== "number" || !Number.isSafeInteger(opts.seed) || opts.seed < 0
  ) {
    throw invalidArgument(`seed must be a non-negative safe integer: found ${opts.seed}`);
  } else {
    seed = foldSeed(opts.seed);
  }
  const stop = opts.stop ?? [];
  if (!Array.isArray(stop) || stop.length > limits.maxStopStrings) {
    throw invalidArgument(
      `stop must hold at most ${limits.maxStopStrings} strings: found ${
        Array.isArray(stop) ? stop.length : typeof stop
      }`,
      "max_stop_strings",
    );
  }
  for (const [i, s] of stop.entries()) {
    if (typeof s !== "string" || s.length === 0 || s.length > limits.maxStopStringLength) {
      throw invalidArgument(
        `stop[${i}] must be a non-empty string of at most ${limits.maxStopStringLength} characters: found ${
          JSON.stringify(s)
        }`,
        "max_stop_string_length",
      );
    }
  }
  return {
    maxNewTokens,
    minNewTokens,
    doSample: opts.doSample ?? false,
    temperature,
    topK,
    topP,
    seed,
    repetitionPenalty,
    stop: [...stop],
    logprobs: opts.logprobs ?? false,
  };
}

/** Folds a seed of up to 53 bits into 32 so that seeds past 2^32 still differ. */
function foldSeed(seed: number): number {
  const hi = Math.floor(seed / 0x1_0000_0000);
  return ((seed >>> 0) ^ Math.imul(hi, 0x9e3779b1)) >>> 0;
}
