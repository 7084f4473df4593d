/**
 * Scale-out on PostgreSQL: the same load generator against 1 replica, then 2 replicas (THREADS=1
 * each) on one throwaway cluster, in one run. Each of `--clients` concurrent callers sends Infer
 * requests (one request of `--tokens` new tokens each) for `--seconds`, spread round-robin over
 * the replicas; requests/s and generated tokens/s are reported per setting. Also measured: how long
 * a task registered on one replica takes to be served by the other.
 *
 *   deno run -A bench/replicas_bench.ts [--seconds 10] [--clients 8] [--tokens 16]
 *
 * The last stdout line is the JSON result. Needs PostgreSQL's initdb/pg_ctl (Debian: postgresql).
 */
import { parseArgs } from "node:util";
import { createDatabase, startPostgres } from "../test/support/postgres.ts";
import { type Replica, startReplica, until } from "../test/support/replicas.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "10" },
    clients: { type: "string", default: "8" },
    tokens: { type: "string", default: "16" },
  },
});
const SECONDS = Number(args.seconds);
const CLIENTS = Number(args.clients);
const TOKENS = Number(args.tokens);
const HIDDEN = 256;
const TEMPLATE = {
  promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  promptTemplateFields: ["sentence", "label"],
  totalVirtualTokens: 2,
  virtualTokenSplits: [2],
  answerField: "label",
};
const values = Array.from({ length: 2 * HIDDEN }, (_, i) => Math.sin(i) * 0.1);

async function load(replicas: Replica[]): Promise<Record<string, number>> {
  const deadline = performance.now() + SECONDS * 1000;
  let requests = 0, tokens = 0, errors = 0;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (performance.now() < deadline) {
      const r = replicas[next++ % replicas.length];
      const [res] = await r.client.infer([{
        task: "bench",
        fields: { sentence: "Net sales increased by 18.5 % to EUR 167.7 mn ." },
        maxNewTokens: TOKENS,
        minNewTokens: TOKENS,
      }]);
      if (res.completion) {
        requests++;
        tokens += res.completion.tokenIds.length;
      } else errors++;
    }
  }));
  const s = (performance.now() - t0) / 1000;
  return {
    replicas: replicas.length,
    requests_per_s: Math.round(requests / s * 10) / 10,
    tokens_per_s: Math.round(tokens / s),
    errors,
  };
}

const pg = await startPostgres();
const replicas: Replica[] = [];
try {
  const url = await createDatabase(pg, "bench");
  replicas.push(await startReplica("r1", url));
  await replicas[0].client.registerTask({
    name: "bench",
    template: TEMPLATE,
    table: { rows: 2, hidden: HIDDEN, values },
  });
  await load(replicas); // warm-up: the prompt slot, the engine's buffers
  const one = await load(replicas);

  replicas.push(await startReplica("r2", url));
  const t0 = performance.now();
  await replicas[0].client.registerTask({
    name: "bench_probe",
    template: TEMPLATE,
    table: { rows: 2, hidden: HIDDEN, values },
  });
  const seen = await until(
    "r2 serves what r1 registered",
    async () => {
      const [r] = await replicas[1].client.infer([{
        task: "bench_probe",
        fields: { sentence: "x" },
        maxNewTokens: 1,
      }]);
      return r.completion ?? undefined;
    },
    10_000,
    5,
  );
  const registerToServedMs = performance.now() - t0;
  await load(replicas); // warm-up of r2
  const two = await load(replicas);
  const result = {
    seconds: SECONDS,
    clients: CLIENTS,
    new_tokens: TOKENS,
    threads_per_replica: 1,
    cores: navigator.hardwareConcurrency,
    one_replica: one,
    two_replicas: two,
    speedup: Math.round(two.tokens_per_s / one.tokens_per_s * 100) / 100,
    register_on_r1_served_by_r2_ms: Math.round(registerToServedMs),
    probe_version: seen.value.taskVersion,
  };
  console.log(JSON.stringify(result));
} finally {
  await Promise.all(replicas.map((r) => r.stop()));
  await pg.destroy();
}
