import { assert, assertEquals, assertThrows } from "../../../test/assert.ts";
import { maskLogits } from "./sampler.ts";
import { TokenTrie } from "./token_trie.ts";

const EOS = 0;

Deno.test("TokenTrie: a cursor allows only tokens on an answer's path and ends on a whole one", () => {
  // Answers: [5, 6, EOS], [5, 7, EOS], [8, EOS].
  const trie = new TokenTrie([[5, 6, EOS], [5, 7, EOS], [8, EOS]]);
  assertEquals(trie.longest, 3);
  const c = trie.start();
  assertEquals(c.allowed(EOS).sort(), [5, 8]);
  assertEquals(c.take(5, EOS), -1);
  assertEquals(c.allowed(EOS).sort(), [6, 7]);
  assertEquals(c.take(7, EOS), -1);
  assertEquals(c.allowed(EOS), [EOS]);
  assertEquals(c.take(EOS, EOS), 1);
  assertThrows(() => trie.start().take(9, EOS), RangeError, "token 9 is not allowed here");
});

Deno.test("TokenTrie: an answer that is a prefix of another may end with EOS, or at once when nothing goes on", () => {
  // Without EOS in the paths (a template that adds none): "a" = [3], "ab" = [3, 4].
  const trie = new TokenTrie([[3], [3, 4], [9]]);
  const c = trie.start();
  assertEquals(c.take(3, EOS), -1); // "ab" may still come
  assertEquals(c.allowed(EOS).sort(), [EOS, 4]);
  assertEquals(c.take(EOS, EOS), 0); // EOS ends it as "a"
  const d = trie.start();
  d.take(3, EOS);
  assertEquals(d.take(4, EOS), 1);
  assertEquals(trie.start().take(9, EOS), 2); // nothing longer: complete at once
  // Two answers with one path are one answer: the first.
  assertEquals(new TokenTrie([[1], [1]]).start().take(1, EOS), 0);
  assertThrows(() => new TokenTrie([[1], []]), RangeError, "paths[1] must hold at least one token");
});

Deno.test("maskLogits() keeps the allowed logits and makes every other -Infinity", () => {
  const row = Float32Array.of(1, 2, 3, 4);
  const m = maskLogits(row, [1, 3]);
  assertEquals(Array.from(m), [-Infinity, 2, -Infinity, 4]);
  assert(row[0] === 1, "the row itself is left as it was");
});
