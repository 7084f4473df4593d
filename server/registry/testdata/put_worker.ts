/**
 * A separate writer process for the registry's crash and concurrency tests.
 *
 *   deno run -A put_worker.ts <root> <name> <worker> <count> <tokens> [pause-at]
 *
 * Puts `count` versions of task `name` whose tables are filled with `worker * 1000 + i`, printing
 * one JSON line per version. With `pause-at` ("chunk" or "written"), the first put stops at that
 * point of its write, prints "PAUSED" and waits on stdin forever, so the parent can SIGKILL it
 * mid-write without guessing with timers. With `pause-at` "start", it prints "READY" and waits for
 * a byte on stdin before its first put, so that two workers can be released together.
 */
import { DiskTaskStore, type WriteEvent } from "../disk_store.ts";
import { draft, FP } from "../_test_util.ts";

const [root, name, worker, count, tokens, pauseAt] = Deno.args;

async function pause(event: WriteEvent): Promise<void> {
  const hit = event.stage === "chunk"
    ? pauseAt === "chunk" && event.file === "table.safetensors" && event.written < event.total
    : pauseAt === "written";
  if (!hit) return;
  await Deno.stdout.write(new TextEncoder().encode("PAUSED\n"));
  await Deno.stdin.read(new Uint8Array(1));
  throw new Error("put_worker: released from a pause; it should have been killed");
}

const store = await DiskTaskStore.open(root, { fingerprint: FP, onWrite: pause });
if (pauseAt === "start") {
  await Deno.stdout.write(new TextEncoder().encode("READY\n"));
  await Deno.stdin.read(new Uint8Array(1));
}
for (let i = 0; i < Number(count); i++) {
  const seed = Number(worker) * 1000 + i;
  const d = draft(name, 0, { tokens: Number(tokens) });
  d.table.fill(seed);
  d.metrics = { worker: Number(worker), i };
  const v = await store.put(name, d);
  console.log(JSON.stringify({ version: v.version, seed }));
}
