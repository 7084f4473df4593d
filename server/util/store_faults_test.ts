import { assertEquals, assertRejects } from "../../test/assert.ts";
import { diskFull, notFound, ServiceError } from "../errors.ts";
import { countingFaults, storeFault } from "./store_faults.ts";

class Store {
  #rows = new Map<string, number>([["a", 1]]);
  readonly durable = true;
  get size(): number {
    return this.#rows.size;
  }
  get(key: string): Promise<number> {
    const v = this.#rows.get(key);
    return v === undefined ? Promise.reject(notFound(`no ${key}`)) : Promise.resolve(v);
  }
  broken(): Promise<void> {
    return Promise.reject(new TypeError("a bug"));
  }
  full(): Promise<void> {
    const e = Object.assign(new Error("write failed"), { code: "ENOSPC" });
    return Promise.reject(diskFull(e, "the registry"));
  }
  down(): Promise<void> {
    return Promise.reject(new ServiceError("unavailable", "the database is away"));
  }
  names(): string[] {
    return [...this.#rows.keys()];
  }
}

Deno.test("countingFaults reports the store's failures, not its answers, and passes both on", async () => {
  const faults: string[] = [];
  const s = countingFaults(new Store(), (op, kind) => faults.push(`${op}:${kind}`));
  assertEquals(await s.get("a"), 1);
  assertEquals([s.durable, s.size, s.names()], [true, 1, ["a"]]);
  await assertRejects(() => s.get("b"), ServiceError, "no b");
  await assertRejects(() => s.broken(), TypeError, "a bug");
  await assertRejects(() => s.full(), ServiceError, "is full");
  await assertRejects(() => s.down(), ServiceError, "away");
  assertEquals(faults, ["broken:internal", "full:resource_exhausted", "down:unavailable"]);
});

Deno.test("storeFault: a limit on tasks is an answer, a full disk a fault", () => {
  assertEquals(storeFault(new ServiceError("resource_exhausted", "too many tasks")), undefined);
  assertEquals(storeFault(new ServiceError("data_loss", "checksum")), "data_loss");
  assertEquals(storeFault(notFound("x")), undefined);
});
