/** Request ids: the UUID check and the canonical digest that tells a retry from another request. */
import { ServiceError } from "../errors.ts";
import { assert, assertEquals, assertNotEquals } from "../../test/assert.ts";
import { canonicalJson, parseRequestId, requestDigest } from "./request_digest.ts";

const ID = "0f6e2a4c-1b3d-4e5f-9a8b-7c6d5e4f3a2b";

function refusal(fn: () => unknown): ServiceError {
  try {
    fn();
  } catch (e) {
    assert(e instanceof ServiceError && e.kind === "invalid_argument", String(e));
    return e;
  }
  throw new Error("expected invalid_argument");
}

Deno.test("parseRequestId: empty is none, a UUID in any case is kept in lower case, else invalid_argument naming the field", () => {
  assertEquals(parseRequestId(undefined), undefined);
  assertEquals(parseRequestId(""), undefined);
  assertEquals(parseRequestId(ID.toUpperCase()), ID);
  for (const bad of ["x", ID.replaceAll("-", ""), `{${ID}}`, `${ID} `, ID.replace("0", "g")]) {
    assert(refusal(() => parseRequestId(bad)).message.startsWith("request_id must be a UUID"));
  }
  assertEquals(
    refusal(() => parseRequestId("nope", "train.request_id")).message,
    'train.request_id must be a UUID (8-4-4-4-12 hex digits, AIP-155) or empty: found "nope"',
  );
});

Deno.test("canonicalJson sorts keys at every depth, writes typed arrays as numbers and drops undefined as JSON does", () => {
  assertEquals(
    canonicalJson({ b: 1, a: { d: [1, { z: true, y: null }], c: "x" }, u: undefined }),
    '{"a":{"c":"x","d":[1,{"y":null,"z":true}]},"b":1}',
  );
  assertEquals(canonicalJson(new Float32Array([0.5, -0, NaN])), "[0.5,0,null]");
  assertEquals(canonicalJson({ v: new Uint8Array([1, 255]) }), '{"v":[1,255]}');
  assertEquals(canonicalJson([undefined, () => 1]), "[null,null]");
  assertEquals(canonicalJson(new Date(0)), '"1970-01-01T00:00:00.000Z"');
  // Beyond one chunk of a typed array.
  const big = Float32Array.from({ length: 10_000 }, (_, i) => i / 4);
  assertEquals(canonicalJson(big), JSON.stringify(Array.from(big)));
});

Deno.test("requestDigest: the same request in any key order or array type digests alike; any change differs", () => {
  const values = Array.from({ length: 5000 }, (_, i) => Math.fround(Math.sin(i)));
  const a = { name: "t", source: { kind: "table", rows: 1, values }, createOnly: false };
  const b = {
    createOnly: false,
    source: { values: Float32Array.from(values), rows: 1, kind: "table" },
    name: "t",
  };
  assert(/^[0-9a-f]{64}$/.test(requestDigest(a)));
  assertEquals(requestDigest(a), requestDigest(b));
  const changed = values.slice();
  changed[4999] += 1;
  assertNotEquals(
    requestDigest(a),
    requestDigest({ ...a, source: { ...a.source, values: changed } }),
  );
  assertNotEquals(requestDigest(a), requestDigest({ ...a, createOnly: true }));
});
