import { assert, assertEquals, assertThrows } from "../../../test/assert.ts";
import { pickRows } from "./pick.ts";
import { logprobOf, type SamplingParams, SequenceSampler } from "./sampler.ts";

const V = 7;
const PARAMS: SamplingParams = {
  maxNewTokens: 8,
  minNewTokens: 0,
  doSample: true,
  temperature: 0.7,
  topK: 5,
  topP: 0.9,
  seed: 11,
  repetitionPenalty: 1.2,
  stop: [],
  logprobs: true,
};

function rows(n: number): Float32Array {
  return Float32Array.from({ length: n * V }, (_, i) => Math.sin(i * 1.7) * 3);
}

Deno.test("pickRows: a token per spec'd row (as the sampler's next), log-probabilities per target row, null rows skipped", () => {
  const a = new SequenceSampler(PARAMS, [1, 2], V, 0);
  const b = new SequenceSampler(PARAMS, [1, 2], V, 0);
  const logits = rows(3);
  const want0 = a.next(logits.slice(0, V));
  const picked = pickRows(logits.slice(), V, [
    { token: b.spec() },
    { targets: Int32Array.of(3, 5) },
    null,
  ]);
  assertEquals(picked[0], want0);
  const row1 = logits.subarray(V, 2 * V);
  const lp = (picked[1] as { logprobs: number[] }).logprobs;
  assert(
    Math.abs(lp[0] - logprobOf(row1, 3)) < 1e-12 && Math.abs(lp[1] - logprobOf(row1, 5)) < 1e-12,
  );
  assertEquals(picked[2], null);
});

Deno.test("a sampler's spec / pickToken / record steps equal its next() steps, draws included", () => {
  const a = new SequenceSampler(PARAMS, [1, 2], V, 0);
  const b = new SequenceSampler(PARAMS, [1, 2], V, 0);
  for (let step = 0; step < 6; step++) {
    const row = rows(1).map((x, i) => x + step * (i % 3));
    const want = a.next(row.slice(), [0, 2, 4, 6]);
    const [got] = pickRows(row.slice(), V, [{ token: b.spec([0, 2, 4, 6]) }]);
    assertEquals(got, want, `step ${step}`);
    b.record((got as { tokenId: number }).tokenId);
  }
});

Deno.test("pickRows refuses logits that are not one row per pick", () => {
  assertThrows(() => pickRows(rows(2), V, [null]), RangeError, "14 logits are not 1 rows of 7");
});
