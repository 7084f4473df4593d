import { assertEquals } from "../../test/assert.ts";
import { ByteLru } from "./_lru.ts";

Deno.test("ByteLru evicts the least recently used entries once over its byte budget", () => {
  const lru = new ByteLru<string>(10);
  lru.set("a", "A", 4);
  lru.set("b", "B", 4);
  lru.get("a"); // a is now more recent than b
  lru.set("c", "C", 4);
  assertEquals([lru.get("a"), lru.get("b"), lru.get("c"), lru.bytes], ["A", undefined, "C", 8]);
  lru.set("huge", "H", 11); // larger than the budget: not kept, nothing else evicted
  assertEquals([lru.get("huge"), lru.bytes], [undefined, 8]);
  lru.set("a2", "A2", 1);
  lru.deletePrefix("a");
  assertEquals([lru.get("a"), lru.get("a2"), lru.get("c"), lru.bytes], [
    undefined,
    undefined,
    "C",
    4,
  ]);
});
