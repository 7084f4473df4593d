/**
 * DiskTaskStore's request ids and commit point beyond the contract every store shares: an id is
 * read back from meta.json after a restart, and a put whose caller gives up after its files are
 * written, before the rename that publishes them, leaves nothing behind.
 */
import { ServiceError } from "../errors.ts";
import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { DiskTaskStore } from "./disk_store.ts";
import { draft } from "./_test_util.ts";

const ID = "0f6e2a4c-1b3d-4e5f-9a8b-7c6d5e4f3a2b";

Deno.test("DiskTaskStore: a request id is remembered across a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "registry_request_id_" });
  try {
    const o = { requestId: ID, requestDigest: "d" };
    const first = await (await DiskTaskStore.open(dir)).put("t", draft("t", 1), o);
    const reopened = await DiskTaskStore.open(dir);
    const again = await reopened.put("t", draft("t", 1), o);
    assertEquals([again.version, again.createdAt], [first.version, first.createdAt]);
    assertEquals(await reopened.versions("t"), [1]);
    await assertRejects(
      () => reopened.put("t", draft("t", 1), { requestId: ID, requestDigest: "other" }),
      ServiceError,
      "which made version 1",
    );
    // A version written without an id carries none in its meta.json.
    await reopened.put("t", draft("t", 2));
    const meta = JSON.parse(await Deno.readTextFile(`${dir}/t/v2/meta.json`));
    assertEquals([meta.requestId, meta.requestDigest], [undefined, undefined]);
    const meta1 = JSON.parse(await Deno.readTextFile(`${dir}/t/v1/meta.json`));
    assertEquals([meta1.requestId, meta1.requestDigest], [ID, "d"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DiskTaskStore: a put whose signal aborts after its files are written renames nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "registry_commit_point_" });
  try {
    const ac = new AbortController();
    const store = await DiskTaskStore.open(dir, {
      onWrite: (e) => {
        if (e.stage === "written") ac.abort(new DOMException("deadline exceeded", "TimeoutError"));
      },
    });
    const e = await store.put("t", draft("t", 1), { signal: ac.signal, requestId: ID }).then(
      () => null,
      (e) => e,
    );
    assert(e instanceof ServiceError && e.kind === "deadline_exceeded", String(e));
    assertEquals(await store.has("t"), false);
    assertEquals(await Array.fromAsync(Deno.readDir(`${dir}/.tmp`)), []);
    // Nothing recorded the id: the retry writes version 1.
    assertEquals((await store.put("t", draft("t", 1), { requestId: ID })).version, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
