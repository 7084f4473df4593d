/**
 * For test/disk_full_test.ts, run on a small tmpfs of its own (`unshare -rm`): a DiskJobStore in
 * DIR appends events until the disk is full, then, with space freed, appends one more; it prints
 * what the store refused and what a store reopened on the directory reads back, as JSON.
 */
import { DiskJobStore } from "../../server/training/disk_job_store.ts";
import type { ServiceError } from "../../server/errors.ts";

const dir = Deno.args[0];
const store = await DiskJobStore.open(`${dir}/.jobs`, () => {});
const { job } = await store.create({ name: "j", tasks: ["t"], request: {}, maxActive: 1 });
const claim = (await store.claim("w", 60_000))!;
// Ballast that leaves the disk nearly full, then events (each with a long note) until it is.
const ballast = `${dir}/ballast`;
const f = await Deno.open(ballast, { write: true, create: true });
try {
  for (;;) await f.write(new Uint8Array(4096));
} catch { /* full */ }
f.close();
let appended = 0;
let refused: { kind: string; message: string } | null = null;
const note = "x".repeat(1500);
for (let step = 1; step < 10_000 && !refused; step++) {
  try {
    await store.append(claim.job.id, "w", {
      type: "started",
      tasks: ["t"],
      totalSteps: step,
      totalEpochs: 1,
      trainExamples: {},
      droppedExamples: {},
      skippedRecords: 0,
      resumedFromStep: 0,
      notes: [note],
    });
    appended++;
  } catch (e) {
    refused = { kind: (e as ServiceError).kind, message: (e as Error).message };
  }
}
await Deno.remove(ballast);
await store.append(job.id, "w", { type: "checkpoint", step: 1, kind: "latest" });
const reopened = await DiskJobStore.open(`${dir}/.jobs`, () => {});
const events = await reopened.events(job.id, 0, 100_000);
console.log(JSON.stringify({
  appended,
  refused,
  sequences: events.map((e) => e.sequence),
  last: events.at(-1)?.event.type,
}));
