/**
 * Prometheus `/metrics` of the real service (server/main.ts with METRICS_PORT): scraped before and
 * after a client trains a job and infers, parsed by Prometheus' own Python parser
 * (python3-prometheus-client), and checked to move as the calls say they should.
 */
import { assert, assertEquals } from "./assert.ts";
import { PromptLearningClient, RpcCallError } from "../client/client.ts";
import { startService } from "./support/service_process.ts";
import { sentimentTrainRequest } from "./support/train_request.ts";
import { PYTHON, pythonMissing, requireTool } from "./support/required_tool.ts";
import { runWithInput } from "./support/run_with_input.ts";

const root = new URL("../", import.meta.url).pathname;

const tool = requireTool(
  await pythonMissing("prometheus_client.parser", "python3-prometheus-client"),
  "metrics_test.ts",
);

type Labels = Record<string, string>;
interface Family {
  name: string;
  type: string;
  samples: [string, Labels, number][];
}

/** GET /metrics, parsed by prometheus_client: sample value by name and labels. */
async function scrape(url: string) {
  const res = await fetch(url);
  assertEquals(res.status, 200);
  const text = await res.text();
  const out = await runWithInput(PYTHON, [`${root}test/python/parse_metrics.py`], text);
  if (out.code !== 0) throw new Error(`the parser refused the scrape: ${out.stderr}`);
  const families = JSON.parse(out.stdout) as Family[];
  const value = (name: string, labels: Labels = {}): number =>
    families.flatMap((f) => f.samples)
      .filter(([n, l]) => n === name && Object.entries(labels).every(([k, v]) => l[k] === v))
      .reduce((sum, [, , v]) => sum + v, 0);
  const type = (name: string) => families.find((f) => f.name === name)?.type;
  const names = new Set(families.flatMap((f) => f.samples.map(([n]) => n)));
  return { value, type, names };
}

Deno.test({
  name: "/metrics: a real client's training and inference move the counters and histograms",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const registry = await Deno.makeTempDir();
    const server = await startService({
      REGISTRY_DIR: registry,
      RUNS_DIR: `${registry}/runs`,
      DATA_DIR: root,
      METRICS_PORT: "0",
    });
    const url = server.serving.metrics as string;
    const client = new PromptLearningClient({ address: server.address });
    try {
      assert(url.startsWith("http://127.0.0.1:"), `metrics address: ${url}`);
      assertEquals((await fetch(url.replace("/metrics", "/other"))).status, 404);
      const before = await scrape(url);
      assertEquals(before.value("promptlearning_inference_generated_tokens_total"), 0);
      assertEquals(before.value("promptlearning_prompt_slots_capacity"), 64);
      assert(before.value("promptlearning_model_weights_bytes") > 1e6, "the model's bytes");
      assert(before.value("process_resident_memory_bytes") > 1e7, "the process's memory");

      let ended = "";
      for await (const e of client.train(sentimentTrainRequest("m", "sent", 2, 2))) {
        if (e.completed) ended = "completed";
      }
      assertEquals(ended, "completed");
      const results = await client.infer(
        ["Sales rose .", "Profit fell .", "Costs were flat ."].map((sentence) => ({
          task: "sent",
          fields: { sentence },
          maxNewTokens: 3,
        })),
      );
      const generated = results.reduce((n, r) => n + r.completion!.tokenIds.length, 0);
      try {
        await client.getJob("no-such-job");
        throw new Error("GetJob of an unknown job succeeded");
      } catch (e) {
        assert(e instanceof RpcCallError, String(e));
      }

      const after = await scrape(url);
      const rpc = (method: string, code: number) =>
        after.value("rpc_server_duration_seconds_count", {
          rpc_method: method,
          rpc_grpc_status_code: String(code),
        });
      assertEquals([rpc("Train", 0), rpc("Infer", 0), rpc("GetJob", 5)], [1, 1, 1]);
      assertEquals(after.type("rpc_server_duration_seconds"), "histogram");
      assert(after.value("rpc_server_duration_seconds_sum", { rpc_method: "Infer" }) > 0);
      assertEquals(after.value("promptlearning_inference_generated_tokens_total"), generated);
      assertEquals(after.value("promptlearning_inference_requests_total"), 3);
      assertEquals(after.value("promptlearning_inference_time_to_first_token_seconds_count"), 3);
      assert(after.value("promptlearning_inference_batch_size_count") >= 1, "engine steps");
      assert(after.value("promptlearning_inference_prompt_tokens_total") > 0, "prompt rows");
      // The first request loads the task's table; the other two find it resident.
      assertEquals(after.value("promptlearning_prompt_slot_misses_total"), 1);
      assertEquals(after.value("promptlearning_prompt_slot_hits_total"), 2);
      assertEquals(after.value("promptlearning_prompt_slots_resident"), 1);
      assertEquals(after.value("promptlearning_inference_queue_length"), 0);
      assertEquals(after.value("promptlearning_training_global_step"), 2);
      assertEquals(
        after.value("promptlearning_training_jobs_ended_total", { state: "completed" }),
        1,
      );
      assertEquals(after.type("promptlearning_training_jobs_ended"), "counter");
      const loss = after.value("promptlearning_training_loss");
      assert(Number.isFinite(loss) && loss > 0, `training loss ${loss}`);
      assertEquals(after.value("promptlearning_jobs_waiting"), 0);
      assertEquals(after.value("promptlearning_registry_errors_total"), 0);

      // Every series the Grafana dashboard queries is one the service exports (the store error
      // counters appear with their first error).
      const dash = await Deno.readTextFile(`${root}k8s/monitoring/promptlearning-dashboard.json`);
      const queried = new Set(
        [...dash.matchAll(/\b(?:promptlearning|rpc_server|process)_[a-z0-9_]+/g)].map((m) => m[0]),
      );
      const notYet = [
        "promptlearning_job_store_errors_total",
        "promptlearning_registry_errors_total",
      ];
      const unknown = [...queried].filter((n) => !after.names.has(n) && !notYet.includes(n));
      assertEquals(unknown, [], "dashboard series the service does not export");
      assert(queried.size >= 15, `the dashboard queries ${queried.size} series`);
    } finally {
      client.close();
      server.child.kill("SIGTERM");
      await server.child.status;
      await server.reader.cancel();
      await server.child.stderr.cancel();
      await Deno.remove(registry, { recursive: true });
    }
  },
});
