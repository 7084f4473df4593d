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
type ErrorClass = abstract new (...args: any[]) => Error;

function check(e: unknown, cls?: ErrorClass, includes?: string): Error {
  if (!(e instanceof Error)) {
    throw new nodeAssert.AssertionError({ message: `expected an Error, got ${String(e)}` });
  }
  if (cls && !(e instanceof cls)) {
    const err = e as Error;
    throw new nodeAssert.AssertionError({
      message: `expected ${cls.name}, got ${err.name}: ${err.message}`,
    });
  }
  if (includes !== undefined && !e.message.includes(includes)) {
    throw new nodeAssert.AssertionError({
      message: `expected error message to include ${JSON.stringify(includes)}: got ${
        JSON.stringify(e.message)
      }`,
    });
  }
  return e;
}

export function assertThrows(fn: () => unknown, cls?: ErrorClass, includes?: string): Error {
  try {
    fn();
  } catch (e) {
    return check(e, cls, includes);
  }
  throw new nodeAssert.AssertionError({ message: "expected the function to throw" });
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  cls?: ErrorClass,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return check(e, cls, includes);
  }
  throw new nodeAssert.AssertionError({ message: "expected the promise to reject" });
}
