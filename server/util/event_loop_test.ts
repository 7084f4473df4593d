import { assertEquals } from "../../test/assert.ts";
import { createYielder } from "./event_loop.ts";

Deno.test("createYielder() gives timers a turn only once its interval has passed", async () => {
  let clock = 0;
  const yieldNow = createYielder(20, () => clock);
  let fired = 0;
  setTimeout(() => fired++, 0);
  clock = 5;
  await yieldNow(); // 5 ms since the last turn: no macrotask turn
  assertEquals(fired, 0);
  clock = 25;
  await yieldNow(); // 25 ms: the pending timer runs first
  assertEquals(fired, 1);
});
