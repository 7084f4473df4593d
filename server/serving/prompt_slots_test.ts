import assert from "node:assert/strict";
import { ServiceError } from "../errors.ts";
import { PromptSlots, type ServableTable } from "./prompt_slots.ts";

const V = 6, C = 2;
const wte = Float32Array.from({ length: V * C }, (_, i) => i); // row v = [2v, 2v + 1]

function task(name: string, n: number, fill: number, version = 1): ServableTable {
  const table = Float32Array.from({ length: n * C }, (_, i) => fill + i);
  return { name, version, totalVirtualTokens: n, table };
}

function slots(maxSlots = 2, maxVirtualTokens = 4) {
  return new PromptSlots({ vocabSize: V, hidden: C, wte, maxSlots, maxVirtualTokens });
}

function assertServiceError(fn: () => unknown, kind: string, includes: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ServiceError, `expected a ServiceError: ${e}`);
    assert.equal(e.kind, kind);
    assert.ok(e.message.includes(includes), e.message);
    return true;
  });
}

Deno.test("embedTokens gathers word rows and the rows of tasks with different virtual counts", () => {
  const s = slots();
  const a = s.acquire(task("a", 2, 100));
  const b = s.acquire(task("b", 3, 200));
  // A mixed batch: task a's prompt [v0, 1, v1] and task b's [v2, 5, v0].
  const ids = new Int32Array([...a.toGlobalIds([V, 1, V + 1]), ...b.toGlobalIds([V + 2, 5, V])]);
  const out = s.embedTokens(ids);
  assert.deepEqual(
    [...out],
    [100, 101, 2, 3, 102, 103, 204, 205, 10, 11, 200, 201],
  );
});

Deno.test("a virtual id past the task's count is refused with the count", () => {
  const s = slots();
  const a = s.acquire(task("a", 2, 0));
  assertServiceError(
    () => a.toGlobalIds([V + 2]),
    "invalid_argument",
    "the task has 2 virtual tokens",
  );
});

Deno.test("acquiring a resident task reuses its slot", () => {
  const s = slots();
  const t = task("a", 2, 0);
  const l1 = s.acquire(t);
  const l2 = s.acquire(t);
  assert.equal(l1.slot, l2.slot);
  assert.deepEqual(s.stats(), {
    capacity: 2,
    resident: 1,
    inUse: 1,
    hits: 1,
    loads: 1,
    evictions: 0,
  });
});

Deno.test("when full, the least recently used idle task is evicted", () => {
  const s = slots(2);
  const a = task("a", 1, 10), b = task("b", 1, 20), c = task("c", 1, 30);
  s.acquire(a).release();
  s.acquire(b).release();
  s.acquire(a).release(); // a is now more recent than b
  const lc = s.acquire(c);
  assert.ok(s.isResident(a));
  assert.ok(!s.isResident(b));
  assert.deepEqual([...s.embedTokens(lc.toGlobalIds([V]))], [30, 31]);
  assert.equal(s.stats().evictions, 1);
});

Deno.test("a task in use is never evicted; all slots in use refuses with the limit's name", () => {
  const s = slots(2);
  const la = s.acquire(task("a", 1, 10));
  s.acquire(task("b", 1, 20));
  assertServiceError(() => s.acquire(task("c", 1, 30)), "resource_exhausted", "max_prompt_slots");
  la.release();
  la.release(); // idempotent: must not free b's reference
  const lc = s.acquire(task("c", 1, 30));
  assert.equal(lc.slot, la.slot);
  assert.ok(s.isResident(task("b", 1, 20)));
  assertServiceError(() => s.acquire(task("d", 1, 40)), "resource_exhausted", "all 2 prompt slots");
});

Deno.test("a re-created task with the same version but another checksum is loaded afresh", () => {
  const s = slots();
  const old = { ...task("a", 1, 10), checksum: "x" };
  const fresh = { ...task("a", 1, 50), checksum: "y" };
  s.acquire(old).release();
  const l = s.acquire(fresh);
  assert.deepEqual([...s.embedTokens(l.toGlobalIds([V]))], [50, 51]);
});

Deno.test("tables that do not fit a slot or the hidden size are refused", () => {
  const s = slots(2, 4);
  assertServiceError(() => s.acquire(task("big", 5, 0)), "invalid_argument", "max_virtual_tokens");
  const bad = { ...task("a", 2, 0), table: new Float32Array(3) };
  assertServiceError(() => s.acquire(bad), "invalid_argument", "2 x 2 = 4 values: found 3");
});

Deno.test("embedTokens refuses ids outside [0, vocab + slot rows)", () => {
  const s = slots(2, 4);
  assert.throws(() => s.embedTokens([V + 8]), /ids\[0\] must be an integer in \[0, 14\): found 14/);
});
