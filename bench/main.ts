/**
 * `deno task bench`: every benchmark in one run, so each ratio compares figures taken under the
 * same machine load.
 * - engine: the ../shared/bench work (prompt tuning, batch 32, 10 virtual tokens, answer-only
 *   loss, AdamW; then greedy generation) with the fast engine, and the PyTorch baseline script
 *   (bench/torch_prompt_tuning_cpu.py) when Debian's python3-torch is installed;
 * - serving: 64 requests over tasks with 5, 10 and 20 virtual tokens, mixed continuous batch vs
 *   one task per batch vs one request at a time;
 * - scoring: one Infer of 64 sentiment requests ranking 3 labels (choices) against the same 64
 *   generated greedily, and each way's accuracy (bench/scoring_bench.ts);
 * - contention: Infer p50/p99 under 50 clients x 40 calls with no training, with a training job and
 *   inference first (the default), and with a training job that never waits (the state before);
 *   and the same idle load with the engine in a worker thread; bench/contention_bench.ts;
 * - grpc: the time the gRPC layer adds per Infer call (when bench/grpc_bench.ts exists);
 * - latency: one request at a time through gRPC, with the engine in a worker thread (the service's
 *   default) and on the event loop: latency, time inside InferenceService and the rest; the stack's
 *   calls/s answered at once (bench/request_latency.ts; `--root` there measures another checkout);
 * - memory: resident memory with the model loaded and with 1,000 registered tasks;
 * - health: the worst Health/Check latency while a training job and a full inference batch run,
 *   with the engine in a worker thread (the service's default) and on the event loop.
 * - decode: generation ms/token of one request at gpt2 (124M) and gpt2-medium (345M) shapes with
 *   random weights kept as float32 (F32), bf16 (a BF16 checkpoint) and int8 (`WEIGHTS=int8`), on
 *   the oneDNN engine's fp32 products, each against its floor (its weights' bytes read once at the
 *   bandwidth measured in the same run); bench/load_bench.ts.
 * - int8-quality (with --only int8-quality, after scripts/walkthrough.sh): the walk-through's tasks
 *   on their test splits with the checkpoint's weights and with WEIGHTS=int8: answer loss, greedy
 *   answers identical, metrics (bench/int8_quality.ts).
 * - model (with --model gpt2,gpt2-medium,smollm2-135m,...): real-size shapes with random weights,
 *   oneDNN fp32 and bf16, fast, and PyTorch fp32 and bf16 autocast on the same weights
 *   (bench/model_bench.ts: training and forward tokens/s, generation ms/token for 1 and 32
 *   sequences, GFLOP/s, the GEMM peak and memory bandwidth measured in the same run). GPT-2 shapes
 *   are generated in the bench; Llama-family ones (smollm2-135m, qwen2.5-0.5b) are written by
 *   test/python/llama_reference.py and timed in PyTorch by bench/torch_llama_bench.py. The summary
 *   ends with every shape's figures side by side, ours against PyTorch's at the same threads.
 *   --model alone runs only this part.
 * - load (with --memory; pick shapes with --model, e.g. --model gpt2,gpt2-medium,gpt2-large,gpt2-xl
 *   --memory): each shape's random fp32 checkpoint written to a temp dir and loaded as the service
 *   loads it (memory-mapped) in a fresh process: resident memory at peak while loading, after
 *   loading and after a forward pass; the machine's memory bandwidth; generation ms/token of one
 *   request against reading the weights once (bench/load_bench.ts). --memory alone runs only this;
 *   --dtype F32,BF16,F16 stores each shape in each dtype (16-bit weights stay 16-bit in memory).
 * Prints a summary and writes all results as JSON (default .bench/latest.json).
 * - replicas (with --only replicas): inference throughput of 1 and 2 replicas on one PostgreSQL
 *   (bench/replicas_bench.ts), and the time a registration takes to reach the other replica.
 * Flags: --quick (fewer examples), --no-torch, --json FILE, --only
 * engine,serving,scoring,contention,grpc,memory,health,decode,int8-quality,model,load,replicas,
 * --model NAMES, --memory.
 */
import { parseArgs } from "node:util";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    "no-torch": { type: "boolean", default: false },
    json: { type: "string", default: `${root}.bench/latest.json` },
    only: { type: "string" },
    model: { type: "string" },
    memory: { type: "boolean", default: false },
    dtype: { type: "string" },
  },
});
const only = new Set(
  (args.only ??
    (args.memory
      ? "load"
      : args.model
      ? "model"
      : "engine,forward,serving,scoring,contention,grpc,latency,memory,health,decode"))
    .split(","),
);

/** Runs one benchmark script; its last stdout line is its JSON result. */
async function run(script: string, extra: string[]): Promise<Record<string, unknown>> {
  const path = `${root}bench/${script}`;
  try {
    await Deno.stat(path);
  } catch {
    return { skipped: `${script} not present` };
  }
  console.error(`running ${script} ${extra.join(" ")}`);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path, ...extra],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) return { failed: `${script} exited ${out.code}`, output: text.slice(-2000) };
  const last = text.split("\n").at(-1) ?? "{}";
  try {
    return JSON.parse(last);
  } catch {
    return { failed: `${script} printed no JSON`, output: text.slice(-2000) };
  }
}

const torchFlag = args["no-torch"] ? ["--no-torch"] : [];
const results: Record<string, unknown> = {
  time: new Date().toISOString(),
  commit: await gitCommit(),
  machine: { cores: navigator.hardwareConcurrency, deno: Deno.version.deno },
};
if (only.has("engine")) {
  results.engine = await run("engine_bench.ts", [
    ...torchFlag,
    "--torch-tuned",
    ...(args.quick ? ["--limit", "320"] : []),
  ]);
}
if (only.has("forward")) results.forward = await run("forward_bench.ts", []);
if (only.has("serving")) {
  results.serving = await run("serving_bench.ts", [...torchFlag, "--repeat", "7"]);
}
if (only.has("scoring")) results.scoring = await run("scoring_bench.ts", []);
if (only.has("contention")) {
  results.contention = await run("contention_bench.ts", args.quick ? ["--calls", "10"] : []);
}
if (only.has("grpc")) results.grpc = await run("grpc_bench.ts", args.quick ? ["--quick"] : []);
if (only.has("latency")) {
  results.latency = await run(
    "request_latency.ts",
    args.quick ? ["--warm", "200", "--calls", "100"] : [],
  );
}
if (only.has("memory")) results.memory = await run("memory_bench.ts", []);
if (only.has("health")) results.health = await run("health_bench.ts", []);
if (only.has("decode")) {
  results.decode = await run("load_bench.ts", [
    ...["--model", args.quick ? "gpt2" : "gpt2,gpt2-medium"],
    ...["--dtype", "F32,BF16,INT8", "--engines", "onednn-fp32"],
  ]);
}
if (only.has("int8-quality")) results.int8_quality = await run("int8_quality.ts", []);
if (only.has("replicas")) {
  results.replicas = await run("replicas_bench.ts", args.quick ? ["--seconds", "5"] : []);
}
if (only.has("model")) {
  results.model = await run("model_bench.ts", [
    "--model",
    args.model ?? "gpt2,gpt2-medium",
    ...torchFlag,
    ...(args.quick ? ["--quick"] : []),
  ]);
}
if (only.has("load")) {
  results.load = await run("load_bench.ts", [
    "--model",
    args.model ?? "gpt2,gpt2-medium",
    ...(args.dtype ? ["--dtype", args.dtype] : []),
  ]);
}

/**
 * Each shape's headline figures next to the other shapes', engine by engine: train and forward
 * tokens/s, ms/token of one sequence and ms per step of N together, each with PyTorch's at the
 * same precision and threads and the ratio (> 1: ours faster).
 */
function sideBySide(models: Record<string, Obj>): string[] {
  const N = get(results.model, "gen", "concurrent");
  const shapes = Object.entries(models).filter(([, m]) => typeof m === "object" && m.ours);
  const label = (name: string, m: Obj) => `${name} (${Math.round(Number(m.params) / 1e5) / 10}M)`;
  const width = Math.max(0, ...shapes.map(([name, m]) => label(name, m).length));
  const out = [
    `side by side (threads ${
      get(results.model, "threads")
    }; ours vs PyTorch, ratio > 1: ours faster):`,
  ];
  const pairs = [
    ["onednn-fp32", "fp32"],
    ["onednn-fp32+bf16w", "fp32"],
    ["onednn-bf16", "bf16"],
    ["fast", "fp32"],
  ];
  for (const [engine, precision] of pairs) {
    for (const [name, m] of shapes) {
      const o = get(m, "ours", engine) as Obj | string | undefined;
      if (typeof o !== "object") continue;
      const t = get(m, "torch", precision) as Obj | undefined;
      const r = get(m, "ratio_vs_torch", `${engine}_vs_${precision}`) as Obj | null | undefined;
      const fig = (key: string, rkey: string, unit: string) =>
        t && typeof t === "object" && key in t && r
          ? `${o[key]} vs ${t[key]} ${unit} (${r[rkey]}x)`
          : `${o[key]} ${unit}`;
      out.push(
        `  ${label(name, m).padEnd(width)} ${engine} vs torch-${precision}: train ${
          fig("train_tokens_per_s", "train", "tokens/s")
        }, forward ${fig("forward_tokens_per_s", "forward", "tokens/s")}, 1 sequence ${
          fig("gen1_ms_per_token", "gen1", "ms/token")
        }, ${N} sequences ${fig("genN_ms_per_step", "genN", "ms/step")}`,
      );
    }
  }
  return out;
}

async function gitCommit(): Promise<string> {
  const out = await new Deno.Command("git", {
    args: ["rev-parse", "--short", "HEAD"],
    cwd: root,
    stdout: "piped",
    stderr: "null",
  })
    .output().catch(() => null);
  return out?.success ? new TextDecoder().decode(out.stdout).trim() : "unknown";
}

// Summary with the targets.
type Obj = Record<string, unknown>;
const get = (o: unknown, ...path: string[]): unknown =>
  path.reduce((x: unknown, k) => (x as Obj | undefined)?.[k], o);
const lines: string[] = [];
const ratio = get(results.engine, "ratio") as { train: number; infer: number } | undefined;
const ours = get(results.engine, "ours") as Obj | undefined;
const torch = get(results.engine, "torch");
if (ours) {
  lines.push(
    `train: ${ours.train_tokens_per_s} tokens/s, inference: ${ours.infer_examples_per_s} examples/s (${ours.engine})`,
  );
}
if (typeof torch === "object" && torch) {
  const t = torch as Obj;
  lines.push(
    `pytorch baseline: ${t.train_tokens_per_s} train tokens/s, ${t.infer_examples_per_s} inference examples/s`,
  );
}
if (ratio) {
  lines.push(
    `ratio vs pytorch: train ${ratio.train}x (target >= 1.0) ${ratio.train >= 1 ? "PASS" : "MISS"}`,
  );
  lines.push(
    `ratio vs pytorch: inference ${ratio.infer}x (target >= 1.0) ${
      ratio.infer >= 1 ? "PASS" : "MISS"
    }`,
  );
} else if (typeof torch === "string") lines.push(`pytorch baseline ${torch}`);
const tuned = get(results.engine, "ratio_same_kernels") as
  | { train: number; infer: number }
  | undefined;
if (tuned) {
  lines.push(
    `ratio vs pytorch given the same OpenBLAS kernels (OPENBLAS_CORETYPE): train ${tuned.train}x, inference ${tuned.infer}x`,
  );
}
for (const name of ["fast", "onednn", "wasm", "cpu"]) {
  const f = get(results.forward, name) as Obj | string | undefined;
  if (typeof f === "string") lines.push(`${name}: ${f}`);
  else if (f) {
    lines.push(
      `${f.engine}: forward ${f.forward_tokens_per_s} tokens/s, training step ${f.train_step_tokens_per_s} tokens/s`,
    );
  }
}
const mvg = get(results.serving, "mixed_vs_grouped") as number | undefined;
if (mvg !== undefined) {
  lines.push(
    `serving: mixed ${get(results.serving, "mixed", "requests_per_s")} req/s, grouped ${
      get(results.serving, "grouped", "requests_per_s")
    } req/s, single ${get(results.serving, "single", "requests_per_s")} req/s`,
  );
  lines.push(
    `mixed vs single-task batches: ${mvg}x (target >= 0.9) ${mvg >= 0.9 ? "PASS" : "MISS"}`,
  );
  lines.push(
    `prefix cache: ${get(results.serving, "mixed_prefix_cache", "requests_per_s")} req/s vs ${
      get(results.serving, "mixed", "requests_per_s")
    } req/s without (${get(results.serving, "prefix_cache_vs_none")}x)`,
  );
}
const sc = results.scoring as Obj | undefined;
if (sc && "choices_ms" in sc) {
  lines.push(
    `scoring: 64 requests x 3 choices ${sc.choices_ms} ms vs 64 generated greedily ${sc.greedy_ms} ms (${sc.choices_vs_greedy}x); accuracy ${sc.choices_accuracy} vs ${sc.greedy_accuracy}`,
  );
}
const ct = results.contention as Record<string, Obj> | undefined;
if (ct?.idle) {
  const ratio = Number(ct.p99_with_training_vs_idle);
  lines.push(
    `inference first: Infer p99 ${ct.idle.p99_ms} ms idle, ${ct.training_inference_first.p99_ms} ms with training (${ratio}x, target <= 1.5 ${
      ratio <= 1.5 ? "PASS" : "MISS"
    }), ${ct.training_no_priority.p99_ms} ms with training that never waits (${ct.p99_no_priority_vs_idle}x); training ${ct.training_inference_first.training_steps_per_s} vs ${ct.training_no_priority.training_steps_per_s} steps/s`,
  );
  const w = Number(ct.worker_vs_in_process_requests);
  lines.push(
    `engine worker: ${ct.idle_engine_worker.requests_per_s} req/s vs ${ct.idle.requests_per_s} in process at the same load (${w}x, target >= 0.95 ${
      w >= 0.95 ? "PASS" : "MISS"
    })`,
  );
}
const g = results.grpc as Obj | undefined;
if (g && !("skipped" in g)) {
  lines.push(
    `grpc: overhead per one-request Infer p50 ${g.grpc_overhead_p50_ms} ms in steady state (target <= 1; ${
      get(g, "grpc_1_client_cold", "overhead_p50_ms")
    } ms for the first calls after start, before the JIT has optimised them; echo ${
      get(g, "grpc_1_client_echo", "overhead_p50_ms")
    } ms with the answer at once; bare node:http2 round trip ${
      JSON.stringify(g.http2_round_trip_p50_ms)
    } ms)`,
  );
  // The transport's own cost after inference moves with the machine's state (0.5-0.9 ms here);
  // what the gRPC stack adds above it is what this project's code can change.
  const floor = Number(get(g, "http2_round_trip_p50_ms", "after_inference"));
  if (Number.isFinite(floor)) {
    lines.push(
      `grpc: above the bare transport after the same inference (${floor} ms), the stack adds ${
        Math.round((Number(g.grpc_overhead_p50_ms) - floor) * 100) / 100
      } ms`,
    );
  }
  lines.push(
    `grpc: with Prometheus metrics on (METRICS_PORT) the same overhead is ${
      get(g, "grpc_1_client_with_metrics", "overhead_p50_ms")
    } ms; a /metrics scrape takes ${get(g, "metrics_scrape", "p50_ms")} ms`,
  );
  lines.push(`grpc: ${JSON.stringify(g)}`);
}
const lt = results.latency as Obj | undefined;
if (lt && !("skipped" in lt) && !("failed" in lt)) {
  const line = (k: string) =>
    `${get(lt, k, "latency_p50_ms")} ms (${get(lt, k, "inside_p50_ms")} inside, ${
      get(lt, k, "grpc_overhead_p50_ms")
    } gRPC)`;
  lines.push(
    `latency: one request, 2 tokens, p50 ${line("engine_worker")} with the engine in a worker; ${
      line("engine_on_event_loop")
    } on the event loop; the stack answers ${lt.echo_16_clients_calls_per_s} calls/s at once`,
  );
}
const m = results.memory as Obj | undefined;
if (m?.rss_model_loaded_mib) {
  lines.push(
    `memory: ${m.rss_model_loaded_mib} MiB with the model loaded, ${m.rss_with_resident_tasks_mib} MiB with ${m.tasks} tasks registered and resident (${m.per_task_kib} KiB each)`,
  );
}
const h = results.health as { worker?: Obj; event_loop?: Obj } | undefined;
if (h?.worker) {
  lines.push(
    `health under load: worst ${h.worker.worst_ms} ms (p99 ${h.worker.p99_ms} ms) with the engine in a worker; worst ${h.event_loop?.worst_ms} ms on the event loop`,
  );
}
const models = get(results.model, "models") as Record<string, Obj> | undefined;
if (models) {
  lines.push(
    `memory bandwidth ${get(results.model, "bandwidth_gb_s")} GB/s, threads ${
      get(results.model, "threads")
    }`,
  );
  for (const [name, m] of Object.entries(models)) {
    if (typeof m !== "object") {
      lines.push(`${name}: ${m}`);
      continue;
    }
    lines.push(`${name}: GEMM peak ${JSON.stringify(m.peaks)}`);
    for (const [k, v] of Object.entries((m.ours ?? {}) as Obj)) {
      lines.push(`  ${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
    }
    for (const [k, v] of Object.entries((m.torch ?? {}) as Obj)) {
      if (k !== "version") lines.push(`  torch ${k}: ${JSON.stringify(v)}`);
    }
    if (m.ratio_vs_torch) {
      lines.push(`  ratios vs pytorch (target >= 1.5): ${JSON.stringify(m.ratio_vs_torch)}`);
    }
    if (m.decode_floor_ms) {
      lines.push(`  decode floor (weights read once, ms): ${JSON.stringify(m.decode_floor_ms)}`);
    }
  }
  lines.push(...sideBySide(models));
}
const decodes = get(results.decode, "models") as Record<string, Obj> | undefined;
if (decodes) {
  lines.push(
    `decode, one request, oneDNN fp32 products (bandwidth ${
      get(results.decode, "bandwidth", "best_gb_s")
    } GB/s):`,
  );
  for (const [name, m] of Object.entries(decodes)) {
    const e = get(m, "engines", "onednn-fp32") as Obj | string | undefined;
    lines.push(
      typeof e === "object"
        ? `  ${name}: weights ${
          Math.round((m.weight_bytes as number) / 2 ** 20)
        } MiB, ${e.decode_ms_per_token} ms/token = ${e.decode_vs_floor}x its floor (${m.decode_floor_ms} ms)`
        : `  ${name}: ${JSON.stringify(e ?? m)}`,
    );
  }
}
const quality = results.int8_quality as Obj | undefined;
if (quality && !quality.failed && !quality.skipped) {
  for (const [task, q] of Object.entries(quality)) {
    if (typeof q === "object" && q !== null) {
      lines.push(`int8 vs stored, ${task}: ${JSON.stringify(q)}`);
    }
  }
}
const loads = get(results.load, "models") as Record<string, Obj> | undefined;
if (loads) {
  lines.push(`memory bandwidth (best probe) ${get(results.load, "bandwidth", "best_gb_s")} GB/s`);
  for (const [name, m] of Object.entries(loads)) {
    if (!m.weight_bytes) {
      lines.push(`${name}: ${JSON.stringify(m)}`);
      continue;
    }
    lines.push(
      `${name}: weights ${
        Math.round((m.weight_bytes as number) / 2 ** 20)
      } MiB; RSS ${m.rss_before_mib} MiB before loading, peak ${m.peak_while_loading_mib} while loading (growth ${m.peak_growth_vs_weights}x the weights, target <= 1.2), ${m.rss_loaded_mib} loaded; decode floor ${m.decode_floor_ms} ms`,
    );
    for (const [k, e] of Object.entries(m.engines as Record<string, Obj | string>)) {
      lines.push(
        typeof e === "string"
          ? `  ${k}: ${e}`
          : `  ${k}: RSS ${e.rss_after_forward_mib} MiB after a forward; decode ${e.decode_ms_per_token} ms/token = ${e.decode_vs_reading_weights_once}x reading its weights once, measured alongside (target <= 1.3; ${e.decode_vs_floor}x the floor at the bandwidth above)`,
      );
    }
  }
}
console.log(lines.join("\n"));
await Deno.mkdir(new URL(".", `file://${args.json}`).pathname, { recursive: true });
await Deno.writeTextFile(args.json, JSON.stringify(results, null, 2) + "\n");
console.log(JSON.stringify(results));
