/**
 * Loads the checkpoint in a fresh process and prints, as one JSON line, the resident memory before
 * loading, the peak (VmHWM) and resident memory after, and the bytes of the loaded weights; with
 * `--forward`, also resident memory after one forward pass of the fast engine. Run by the load
 * memory test and the memory benchmark: a process of its own so nothing else counts in the peak.
 *
 * Run: deno run -A server/model/testing/load_rss.ts DIR [--read] [--forward] [--int8]
 * (`--read`: read the files instead of mapping them; `--int8`: load as WEIGHTS=int8 does.)
 */
import { parseArgs } from "node:util";
import { loadModel } from "../loader.ts";
import { weightBytes } from "../weights.ts";

/** A field of /proc/self/status in bytes (VmRSS, VmHWM, RssFile, RssAnon). */
export function procStatus(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(
    Deno.readTextFileSync("/proc/self/status"),
  );
  if (!m) throw new Error(`/proc/self/status has no ${field}`);
  return Number(m[1]) * 1024;
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      read: { type: "boolean", default: false },
      forward: { type: "boolean" },
      int8: { type: "boolean", default: false },
    },
  });
  const dir = positionals[0];
  if (!dir) throw new RangeError("usage: load_rss.ts DIR [--read] [--forward] [--int8]");
  const before = procStatus("VmRSS");
  const t0 = performance.now();
  const model = await loadModel(dir, {
    map: !values.read,
    weights: values.int8 ? "int8" : "stored",
  });
  const loadMs = performance.now() - t0;
  const out: Record<string, number | string> = {
    rss_before: before,
    peak_during_load: procStatus("VmHWM"),
    rss_loaded: procStatus("VmRSS"),
    rss_file_loaded: procStatus("RssFile"),
    weight_bytes: weightBytes(model.weights),
    load_ms: Math.round(loadMs),
  };
  if (values.forward) {
    const { createFastEngine } = await import("../fast/fast_engine.ts");
    const engine = createFastEngine(model);
    const T = 8;
    const ids = Int32Array.from({ length: T }, (_, i) => i);
    const cache = engine.newCache();
    await engine.forward({
      embeds: engine.embed(ids),
      seqs: [{ length: T, cache }],
      logitRows: Int32Array.of(T - 1),
    });
    out.rss_after_forward = procStatus("VmRSS");
    out.engine = engine.name;
    engine.dispose();
  }
  console.log(JSON.stringify(out));
}
