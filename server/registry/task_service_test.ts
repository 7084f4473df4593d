/** TaskService.register's request ids and signal (the stores' side: store_contract_test.ts). */
import { ServiceError } from "../errors.ts";
import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { MemoryTaskStore } from "./memory_store.ts";
import { TaskService } from "./task_service.ts";
import { FP } from "./_test_util.ts";

const ID = "0f6e2a4c-1b3d-4e5f-9a8b-7c6d5e4f3a2b";

function service(store = new MemoryTaskStore({ fingerprint: FP })) {
  return new TaskService({ store, fingerprint: FP, hiddenSize: FP.hiddenSize });
}

const TEMPLATE = {
  prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  prompt_template_fields: ["sentence", "label"],
  total_virtual_tokens: 2,
  virtual_token_splits: [2],
  answer_field: "label",
};

function registration(seed = 1, requestId?: string) {
  const values = Array.from({ length: 2 * FP.hiddenSize }, (_, i) => seed + i / 100);
  return {
    name: "sent",
    template: TEMPLATE,
    source: { kind: "table" as const, rows: 2, hidden: FP.hiddenSize, values },
    requestId,
  };
}

Deno.test("TaskService.register with a request id: the retry returns the first version, another request is already_exists", async () => {
  const tasks = service();
  const first = await tasks.register(registration(1, ID));
  assertEquals([first.version, first.versions], [1, [1]]);
  const retry = await tasks.register(registration(1, ID.toUpperCase()));
  assertEquals([retry.version, retry.versions, retry.createdAt], [1, [1], first.createdAt]);
  const e = await tasks.register(registration(2, ID)).then(() => null, (e) => e);
  assert(e instanceof ServiceError && e.kind === "already_exists", String(e));
  assert(e.message.startsWith(`request_id: "${ID}"`) && e.message.includes("version 1"), e.message);
  await assertRejects(
    () => tasks.register(registration(1, "12345")),
    ServiceError,
    "request_id must be a UUID",
  );
  assertEquals((await tasks.register(registration(1))).versions, [1, 2]);
  assertEquals((await tasks.register(registration(1, ID))).versions, [1, 2]);
});

Deno.test("TaskService.register with an aborted signal writes nothing", async () => {
  const tasks = service();
  const ac = new AbortController();
  ac.abort(new DOMException("deadline exceeded", "TimeoutError"));
  await assertRejects(
    () => tasks.register(registration(1, ID), ac.signal),
    ServiceError,
    'task "sent": nothing was written: the deadline passed',
  );
  assertEquals(await tasks.store.has("sent"), false);
});
