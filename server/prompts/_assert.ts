/**
 * Test assertions on node:assert, which needs no network (jsr:@std/assert cannot be fetched
 * where these tests run).
 */
import nodeAssert from "node:assert/strict";

export function assert(v: unknown, msg = "assertion failed"): asserts v {
  nodeAssert.ok(v, msg);
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (msg === undefined) nodeAssert.deepStrictEqual(actual, expected);
  else nodeAssert.deepStrictEqual(actual, expected, `${msg}: ${show(actual)} != ${show(expected)}`);
}

/** Asserts `fn` throws an instance of `cls` whose message contains `includes`; returns it. */
/** Any error constructor, whatever its parameters. */
type ErrorClass<E extends Error> = new (...args: never[]) => E;

export function assertThrows<E extends Error>(
  fn: () => unknown,
  cls: ErrorClass<E>,
  includes: string,
): E {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert(caught !== undefined, `expected ${cls.name} containing ${show(includes)}; nothing thrown`);
  assert(caught instanceof cls, `expected ${cls.name}, got ${caught}`);
  assert(
    caught.message.includes(includes),
    `${show(caught.message)} lacks ${show(includes)}`,
  );
  return caught;
}

/** Like assertThrows for a promise. */
export async function assertRejects<E extends Error>(
  p: Promise<unknown>,
  cls: ErrorClass<E>,
  includes: string,
): Promise<E> {
  const caught = await p.then(() => undefined, (e: unknown) => e ?? new Error("undefined"));
  return assertThrows(
    () => {
      if (caught !== undefined) throw caught;
    },
    cls,
    includes,
  );
}

function show(v: unknown): string {
  return ArrayBuffer.isView(v)
    ? `[${Array.from(v as unknown as ArrayLike<number>)}]`
    : JSON.stringify(v);
}
