/**
 * scripts/perf_owners.py (behind scripts/profile-infer.sh): each `perf script` sample is charged to
 * the owner of its innermost JavaScript frame, samples without one to native work, and the
 * milliseconds per call follow from the sample count, the period and the calls.
 */
import { fileURLToPath } from "node:url";
import { assertEquals, assertStringIncludes } from "./assert.ts";
import { runWithInput } from "./support/run_with_input.ts";

const SCRIPT = fileURLToPath(new URL("../scripts/perf_owners.py", import.meta.url));

/** One `perf script` sample: a header line, then frames innermost first. */
const sample = (...frames: string[]) =>
  `deno 4242 [001] 100.000000:     100000 cpu-clock:ppp:\n` +
  frames.map((f, i) => `\t    7f00000${i} ${f}`).join("\n") + "\n\n";

const HTTP2 = "JS:+'respond ext:deno_node/http2.ts:1:36611+0x1a (/tmp/perf-4242.map)";
const GRPC_SERVER =
  "JS:+'sendMessage file:///w/node_modules/@grpc/grpc-js/build/src/server-interceptors.js:663:16+0x3 (/tmp/perf-4242.map)";
const GENERATED = "JS:+InferRequest$decode :3:36+0x40 (/tmp/perf-4242.map)";
const NATIVE = "[unknown] (/w/node_modules/deno/deno)";
const LIBC = "__libc_start_call_main (/usr/lib/x86_64-linux-gnu/libc.so.6)";

async function owners(input: string, ...args: string[]): Promise<string[]> {
  const o = await runWithInput("python3", [SCRIPT, ...args], input);
  assertEquals(o.code, 0, o.stderr);
  return o.stdout.trim().split("\n").map((l) => l.trim());
}

Deno.test("perf_owners: each sample goes to its innermost JavaScript frame's owner, per call", async () => {
  const input = sample(NATIVE, HTTP2, GRPC_SERVER, LIBC) + // native leaf, then http2: http2's
    sample(HTTP2, GRPC_SERVER) +
    sample(GRPC_SERVER, HTTP2) + // grpc-js innermost: grpc-js, though http2 is above it
    sample(GENERATED, GRPC_SERVER) + // protobufjs's generated code has no file
    sample(NATIVE, LIBC);
  assertEquals(await owners(input, "--calls", "2", "--period-ms", "0.1"), [
    "40.00%  0.100 ms/call  Deno node:http2",
    "20.00%  0.050 ms/call  grpc-js server",
    "20.00%  0.050 ms/call  protobuf (proto-loader, protobufjs)",
    "20.00%  0.050 ms/call  native (no JavaScript frame: runtime, GC, kernel, malloc)",
    "0.250 ms/call on this thread in all (5 samples)",
  ]);
});

Deno.test("perf_owners: --detail lists one owner's deciding frames, without offsets", async () => {
  const input = sample(HTTP2) + sample(HTTP2, GRPC_SERVER) + sample(GRPC_SERVER);
  const lines = await owners(input, "--detail", "Deno node:http2");
  assertEquals(lines.length, 1);
  assertStringIncludes(lines[0], "100.00%  JS:+'respond ext:deno_node/http2.ts:1:36611");
  assertEquals(lines[0].includes("0x1a"), false);
});
