/**
 * What /metrics shows under load: the real service (server/main.ts, METRICS_PORT=0) runs a
 * training job while 50 clients each make 40 unary Infer calls of 4 requests; /metrics is scraped
 * mid-load (after --after-ms, default 6000) and printed, bucket lines left out unless --buckets.
 * Run: deno run -A bench/metrics_scrape.ts [--after-ms N] [--buckets]
 */
import { parseArgs } from "node:util";
import { PromptLearningClient } from "../client/client.ts";
import { startService } from "../test/support/service_process.ts";
import { sentimentTrainRequest } from "../test/support/train_request.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    "after-ms": { type: "string", default: "6000" },
    buckets: { type: "boolean", default: false },
  },
});
const root = new URL("../", import.meta.url).pathname;
const registry = await Deno.makeTempDir();
const s = await startService({
  REGISTRY_DIR: registry,
  RUNS_DIR: `${registry}/runs`,
  DATA_DIR: root,
  METRICS_PORT: "0",
});
const url = s.serving.metrics as string;
const admin = new PromptLearningClient({ address: s.address });
// The task the clients infer with, then a longer job training beside them.
for await (const _ of admin.train(sentimentTrainRequest("served", "sent", 4, 4))) { /* done */ }
let jobId = "";
const training = (async () => {
  for await (const e of admin.train(sentimentTrainRequest("beside", "sent2", 200, 100))) {
    jobId ||= e.jobId;
  }
})().catch(() => {/* cancelled below */});
const clients = Array.from({ length: 50 }, () => new PromptLearningClient({ address: s.address }));
const load = Promise.all(clients.map(async (c, i) => {
  for (let k = 0; k < 40; k++) {
    await c.infer(Array.from({ length: 4 }, (_, j) => ({
      task: "sent",
      fields: { sentence: `Sales rose ${i} ${k} ${j} .` },
      maxNewTokens: 4,
    })));
  }
}));
await new Promise((r) => setTimeout(r, Number(args["after-ms"])));
const scrape = await (await fetch(url)).text();
await load;
if (jobId) await admin.cancelJob(jobId).catch(() => {});
await training;
for (const c of [...clients, admin]) c.close();
s.child.kill("SIGTERM");
await s.child.status;
await Deno.remove(registry, { recursive: true });
console.log(`# GET ${url} after ${args["after-ms"]} ms of load`);
console.log(
  scrape.split("\n").filter((l) => args.buckets || !l.includes("_bucket{")).join("\n"),
);
Deno.exit(0);
