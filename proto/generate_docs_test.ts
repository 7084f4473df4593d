import { assert, assertEquals } from "../test/assert.ts";
import { apiDocs, DOCS_FILE, renderApiDocs } from "./generate_docs.ts";

Deno.test("docs/api.md is what proto/generate_docs.ts makes from the proto's comments (not stale)", async () => {
  const fresh = await apiDocs();
  const committed = await Deno.readTextFile(DOCS_FILE);
  assertEquals(
    committed,
    fresh,
    "docs/api.md is stale: run node_modules/deno/deno run -A proto/generate_docs.ts",
  );
});

Deno.test("the API reference lays out each RPC, message, oneof, map and enum value with its comment", () => {
  const docs = renderApiDocs();
  // Spot checks of each kind of entry: an RPC, a message, a oneof member, a map, an enum value.
  for (
    const line of [
      "```proto\nrpc Train(TrainRequest) returns (stream TrainEvent);\n```",
      "Starts a training job and streams its events until it ends.",
      "#### `TrainEvent.Queued`",
      "One of `event`. The job failed (terminal).",
      "map<`string`, [`TaskMetrics`](#promptlearning.v1.TaskMetrics)>",
      "| `JOB_STATE_CANCELLING` | 6 | Cancel was asked for while the job ran;",
      '<a id="grpc.health.v1.Health"></a>',
    ]
  ) {
    assert(docs.includes(line), `docs/api.md lacks ${JSON.stringify(line)}`);
  }
  // proto3 `optional` fields are shown as such, not as a oneof of their own.
  assert(!docs.includes("Oneof `_"), "a synthetic oneof of a proto3 optional field is listed");
  assert(docs.includes("| `truncate_field` "), "TaskTemplate.truncate_field");
});
