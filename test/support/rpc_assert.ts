/** Assertions on gRPC calls made through the typed client. */
import * as grpc from "@grpc/grpc-js";
import { RpcCallError } from "../../client/client.ts";
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";

/** Awaits `p`, which must fail with status `code` and details including each of `includes`. */
export async function rejectsWith(
  p: Promise<unknown>,
  code: grpc.status,
  ...includes: string[]
): Promise<RpcCallError> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof RpcCallError, `expected RpcCallError, got ${e}`);
    assertEquals(e.codeName, grpc.status[code], e.details);
    for (const part of includes) assertStringIncludes(e.details, part);
    return e;
  }
  throw new Error(`expected ${grpc.status[code]}, the call succeeded`);
}
