import assert from "node:assert/strict";
import { longestStopPrefixSuffix, StopStringTracker } from "./stop_strings.ts";

/** Each id decodes to one entry of `pieces`; "\uFFFD" stands for half a multi-byte character. */
function decoderOf(pieces: string[]) {
  return (ids: readonly number[]) => ids.map((i) => pieces[i]).join("");
}

Deno.test("a stop string split across tokens stops generation and is trimmed", () => {
  const t = new StopStringTracker(decoderOf(["Hello", " wor", "ld", "\n", "Q", ":"]), ["\nQ:"]);
  assert.equal(t.push(0), false);
  assert.equal(t.push(1), false);
  assert.equal(t.push(3), false);
  assert.equal(t.push(4), false);
  assert.equal(t.push(5), true);
  assert.equal(t.text, "Hello wor");
  assert.ok(t.stopped);
});

Deno.test("the earliest of several stop strings wins", () => {
  const t = new StopStringTracker(decoderOf(["a.b;c"]), [";", "."]);
  assert.equal(t.push(0), true);
  assert.equal(t.text, "a");
});

Deno.test("without stop strings the text is the whole decode", () => {
  const t = new StopStringTracker(decoderOf(["x", "y"]), []);
  assert.equal(t.push(0), false);
  assert.equal(t.push(1), false);
  assert.equal(t.text, "xy");
});

Deno.test("stream deltas hold back a possible stop-string start and release it when it is not", () => {
  const t = new StopStringTracker(decoderOf(["ab", "<e", "n", "x", "<end>"]), ["<end>"]);
  t.push(0);
  assert.equal(t.takeDelta(false), "ab");
  t.push(1);
  assert.equal(t.takeDelta(false), ""); // "<e" may become "<end>"
  t.push(2);
  assert.equal(t.takeDelta(false), "");
  t.push(3);
  assert.equal(t.takeDelta(false), "<enx");
  assert.equal(t.push(4), true);
  assert.equal(t.takeDelta(true), "");
  assert.equal(t.text, "ab<enx");
});

Deno.test("stream deltas hold back an incomplete character", () => {
  const t = new StopStringTracker(decoderOf(["a", "\uFFFD"]), []);
  t.push(0);
  t.push(1);
  assert.equal(t.takeDelta(false), "a");
  assert.equal(t.takeDelta(true), "\uFFFD");
});

Deno.test("concatenated deltas equal the final text", () => {
  const pieces = ["I", " said", " st", "o", "p", " now", "STOP", "!"];
  const t = new StopStringTracker(decoderOf(pieces), ["STOP", "stop!"]);
  let streamed = "";
  for (let i = 0; i < pieces.length; i++) {
    const stopped = t.push(i);
    streamed += t.takeDelta(stopped || i === pieces.length - 1);
    if (stopped) break;
  }
  assert.equal(t.text, "I said stop now");
  assert.equal(streamed, t.text);
});

Deno.test("longestStopPrefixSuffix finds the longest tail that starts a stop string", () => {
  assert.equal(longestStopPrefixSuffix("abc</s", ["</s>", "c<"]), 3);
  assert.equal(longestStopPrefixSuffix("abc", ["x"]), 0);
});
