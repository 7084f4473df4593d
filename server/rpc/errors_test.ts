import { status } from "@grpc/grpc-js";
import { assert, assertEquals, assertMatch } from "../../test/assert.ts";
import { diskFull, ERROR_KINDS, isDiskFull, ServiceError, writingTo } from "../errors.ts";
import { TaskCorruptError, TaskNotFoundError } from "../registry/errors.ts";
import { toStatus } from "./errors.ts";

Deno.test("toStatus() is the one map from kind to code: corrupt stored data is DATA_LOSS", () => {
  assertEquals(
    toStatus(new TaskCorruptError("v1/meta.json: fails its checksum")).code,
    status.DATA_LOSS,
  );
  assertEquals(toStatus(new TaskNotFoundError('task "x" does not exist')), {
    code: status.NOT_FOUND,
    details: 'task "x" does not exist',
  });
  // Every kind has a code, and none falls back to UNKNOWN.
  for (const kind of ERROR_KINDS) {
    const s = toStatus(new ServiceError(kind, "m"));
    assert(s.code !== status.UNKNOWN && s.code !== status.OK, kind);
  }
});

Deno.test("toStatus(): anything without a kind is INTERNAL and its message is not sent", () => {
  for (
    const bug of [
      new TypeError("x is undefined at /srv/app"),
      new SyntaxError("raw"),
      "thrown string",
    ]
  ) {
    const s = toStatus(bug);
    assertEquals(s.code, status.INTERNAL);
    assertMatch(
      s.details,
      /^internal error: a bug in the service; the server log has the details under [0-9a-f]{8}$/,
    );
  }
});

Deno.test("toStatus(): a call that was cancelled or timed out reports that, whatever the work threw", () => {
  const ac = new AbortController();
  ac.abort(new DOMException("deadline", "TimeoutError"));
  assertEquals(toStatus(new Error("engine interrupted"), ac.signal).code, status.DEADLINE_EXCEEDED);
  const cancelled = new AbortController();
  cancelled.abort(new DOMException("client went away", "AbortError"));
  assertEquals(toStatus(new Error("engine interrupted"), cancelled.signal), {
    code: status.CANCELLED,
    details: "cancelled",
  });
});

Deno.test("a full disk (the kernel's ENOSPC, here from /dev/full) is RESOURCE_EXHAUSTED naming the storage", async () => {
  const f = await Deno.open("/dev/full", { write: true });
  let raw: unknown;
  try {
    await f.write(new Uint8Array(16));
  } catch (e) {
    raw = e;
  } finally {
    f.close();
  }
  assert(isDiskFull(raw), String(raw));
  // Before, it was a bug's INTERNAL with the reason hidden.
  const s = toStatus(diskFull(raw, "the registry's disk (REGISTRY_DIR)"));
  assertEquals(s.code, status.RESOURCE_EXHAUSTED);
  assertMatch(
    s.details,
    /^the registry's disk \(REGISTRY_DIR\) is full \(no space left on device\)/,
  );
  // Anything else passes through as it was.
  const other = new Error("boom");
  assertEquals(diskFull(other, "x"), other);
  assertEquals(toStatus(await writingTo("x", () => Promise.reject(raw)).catch((e) => e)).code, 8);
});
