/**
 * Assertions for the suite. JSR (@std/assert) is unreachable from CI, so these wrap node:assert
 * with the @std/assert names the tests use.
 */
import nodeAssert from "node:assert/strict";

export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg ?? "assertion failed");
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg ?? "values differ");
}

export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, msg ?? "values differ");
}

export function assertAlmostEquals(
  actual: number,
  expected: number,
  tolerance = 1e-7,
  msg?: string,
): void {
  nodeAssert.ok(
    Math.abs(actual - expected) <= tolerance,
    msg ?? `expected ${actual} to be within ${tolerance} of ${expected}`,
  );
}

export function assertMatch(actual: string, re: RegExp, msg?: string): void {
  nodeAssert.ok(re.test(actual), msg ?? `expected ${JSON.stringify(actual)} to match ${re}`);
}

export function assertStringIncludes(actual: string, part: string, msg?: string): void {
  nodeAssert.ok(
    actual.includes(part),
    msg ?? `expected ${JSON.stringify(actual)} to include ${JSON.stringify(part)}`,
  );
}

// deno-lint-ignore no-explicit-any
type ErrorClass<E extends Error> = abstract new (...args: any[]) => E;

function check<E extends Error>(e: unknown, cls?: ErrorClass<E>, includes?: string): E {
  if (!(e instanceof Error)) {
    throw new nodeAssert.AssertionError({ message: `expected an Error, got ${String(e)}` });
  }
  if (cls && !(e instanceof cls)) {
    throw new nodeAssert.AssertionError({
      message: `expected ${cls.name}, got ${e.name}: ${e.message}`,
    });
  }
  if (includes !== undefined && !e.message.includes(includes)) {
    throw new nodeAssert.AssertionError({
      message: `expected error message to include ${JSON.stringify(includes)}: got ${
        JSON.stringify(e.message)
      }`,
    });
  }
  return e as E;
}

/** Asserts `fn` throws (an instance of `cls` whose message contains `includes`); returns it. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  cls?: ErrorClass<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (e) {
    return check(e, cls, includes);
  }
  throw new nodeAssert.AssertionError({ message: "expected the function to throw" });
}

/** Like assertThrows for a promise, or a function returning one. */
export async function assertRejects<E extends Error = Error>(
  p: Promise<unknown> | (() => Promise<unknown>),
  cls?: ErrorClass<E>,
  includes?: string,
): Promise<E> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    return check(e, cls, includes);
  }
  throw new nodeAssert.AssertionError({ message: "expected the promise to reject" });
}
