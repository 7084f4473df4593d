/**
 * Real-size GPT-2 and Llama-family shapes (`deno task bench --model gpt2,smollm2-135m`): random
 * weights of each published shape, the same weights given to PyTorch in the same run. GPT-2
 * weights are generated here and written for bench/torch_gpt2_bench.py; a Llama-family shape
 * (smollm2-135m, qwen2.5-0.5b: test/python/llama_reference.py's real shapes) is written as a
 * Hugging Face checkpoint by that script (float32, all layers, the full vocabulary), loaded here as
 * the service loads it and by bench/torch_llama_bench.py there. Both PyTorch scripts need Debian's
 * python3-torch; a Llama shape needs it to exist at all. For each engine (oneDNN fp32, oneDNN bf16
 * where the CPU has bf16 kernels, fast) and PyTorch fp32 and bf16 autocast:
 * - train: prompt-tuning step (B sequences of T rows, V virtual, answer-only loss on A rows, input
 *   gradient only), tokens/s and GFLOP/s;
 * - forward: the same batch, logits at each last row, tokens/s and GFLOP/s;
 * - generation: greedy decode with a KV cache after G prompt tokens, ms/token for 1 sequence and
 *   ms per step for N concurrent sequences;
 * plus the machine's GEMM peak measured in the same run (oneDNN fp32 and bf16 matmul, and
 * OpenBLAS sgemm, at the model's MLP shape: C x 4C, Llama C x intermediate) and its memory
 * bandwidth (every core reading 512 MiB), from which the decode floor (weights read once per step)
 * follows; resident memory with the fp32 weights alone (a Llama checkpoint is memory-mapped: its
 * pages count once read), with each engine built (bf16 adds its converted copy), and after its run.
 *
 * FLOPs counted: 2 per multiply-add of every block product (GPT-2 24 C^2 per token per layer;
 * Llama at its q/k/v/o and SwiGLU widths: engine_work.ts), the attention products over the causal
 * context, and the LM head at the rows where logits are taken; training adds the input-gradient
 * products (same count again; attention 2x again), no weight gradient. Figures are only as quiet
 * as the machine.
 *
 * An engine name followed by `+bf16w` (e.g. `onednn-fp32+bf16w`) runs on the weights rounded to
 * bf16 and kept 16-bit, as a BF16 checkpoint loads (half the weights' memory).
 *
 * Run: deno run -A bench/model_bench.ts --model gpt2,gpt2-medium,smollm2-135m
 *        [--engines onednn-fp32,...] [--batch 4] [--seq 128] [--virtual 10] [--answer 8]
 *        [--steps 3] [--gen-prompt 32] [--gen-tokens 16] [--concurrent 32] [--threads N]
 *        [--no-torch] [--quick] [--json FILE]
 * Prints a table and, last, one JSON line.
 */
import { parseArgs } from "node:util";
import type { Engine } from "../server/model/engine.ts";
import { loadBlas } from "../server/model/fast/blas.ts";
import { matrixLength } from "../server/model/half.ts";
import { loadModel } from "../server/model/loader.ts";
import { createFastEngine } from "../server/model/fast/fast_engine.ts";
import { loadOnednn, type OnednnLib } from "../server/model/onednn/lib.ts";
import { createOnednnEngine } from "../server/model/onednn/onednn_engine.ts";
import {
  GPT2_SHAPES,
  gpt2Shape,
  halved,
  parameterCount,
  randomGpt2,
  writeHfCheckpoint,
} from "../server/model/testing/gpt2_checkpoint.ts";
import { asGpt2, isLlama, type LoadedModel, weightArrays } from "../server/model/weights.ts";
import {
  type Figures,
  figures as figuresOf,
  flops as flopsOf,
  ratios,
  round,
  timeEngine,
  type Timings,
  torchWorkloadArgs,
  type Workload,
} from "./engine_work.ts";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "gpt2" },
    engines: { type: "string", default: "onednn-fp32,onednn-fp32+bf16w,onednn-bf16,fast" },
    batch: { type: "string", default: "4" },
    seq: { type: "string", default: "128" },
    virtual: { type: "string", default: "10" },
    answer: { type: "string", default: "8" },
    steps: { type: "string", default: "3" },
    "gen-prompt": { type: "string", default: "32" },
    "gen-tokens": { type: "string", default: "16" },
    concurrent: { type: "string", default: "32" },
    threads: { type: "string" },
    "no-torch": { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});

function int(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--${name} must be a positive integer`);
  return n;
}
const q = args.quick;
const B = q ? 2 : int("batch", args.batch), T = q ? 64 : int("seq", args.seq);
const NV = int("virtual", args.virtual), A = int("answer", args.answer);
const STEPS = q ? 1 : int("steps", args.steps);
const G = q ? 16 : int("gen-prompt", args["gen-prompt"]);
const GT = q ? 4 : int("gen-tokens", args["gen-tokens"]);
const N = q ? 8 : int("concurrent", args.concurrent);
const threads = args.threads ? int("threads", args.threads) : navigator.hardwareConcurrency;
if (T <= NV + A) throw new RangeError("--seq must exceed --virtual + --answer");
const work: Workload = {
  batch: B,
  seq: T,
  virtual: NV,
  answer: A,
  steps: STEPS,
  genPrompt: G,
  genTokens: GT,
  concurrent: N,
};

let lib: OnednnLib | null = null;
try {
  lib = loadOnednn();
  lib.setThreads(threads);
} catch (e) {
  console.error(`oneDNN engine unavailable: ${(e as Error).message}`);
}
const blas = loadBlas({ threads });

/**
 * OpenBLAS's idle pthreads keep spinning after a call and, on a machine with few cores, starve
 * oneDNN's OpenMP threads in the same process (measured here: the oneDNN engine 3 to 5 times
 * slower right after OpenBLAS ran with 2 threads). A service runs one engine, so each engine is
 * measured with the other library's pool idle: OpenBLAS at 1 thread except while `fast` runs.
 */
function quietBlas(engine: string): void {
  blas?.setThreads(engine.startsWith("fast") ? threads : 1);
}

// ---- Machine figures ------------------------------------------------------------------------

/** GFLOP/s of C [m, n] = A [m, k] @ B [k, n] repeated for about 1 s. */
function gemmRate(run: () => void, m: number, k: number, n: number): number {
  run();
  let reps = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < 1000 || reps < 2) {
    run();
    reps++;
  }
  return (2 * m * k * n * reps) / ((performance.now() - t0) / 1000) / 1e9;
}

function machinePeaks(k: number, n: number): Record<string, number | string> {
  const m = 512;
  const x = new Float32Array(m * k).fill(0.01), w = new Float32Array(k * n).fill(0.01);
  const y = new Float32Array(m * n);
  const out: Record<string, number | string> = { shape: `${m} x ${k} x ${n}` };
  if (lib) {
    for (const [name, mode] of [["onednn_fp32", 0], ["onednn_bf16", 1]] as const) {
      if (mode === 1 && !lib.bf16Supported) {
        out[name] = "no bf16 kernels on this CPU";
        continue;
      }
      const l = lib.linear(w, k, n, false, mode);
      out[`${name}_gflops`] = round(gemmRate(() => l.forward(m, x, y, {}), m, k, n));
      l.free();
    }
  }
  if (blas) {
    blas.setThreads(threads);
    out.openblas_fp32_gflops = round(
      gemmRate(() => blas.sgemm(false, false, m, n, k, 1, x, 0, k, w, 0, n, 0, y, 0, n), m, k, n),
    );
    blas.setThreads(1); // see quietBlas()
  }
  return out;
}

/** GB/s of every core summing 512 MiB (best of 5). */
function bandwidth(): number | null {
  if (!lib) return null;
  const a = new Float32Array(128 * 1024 * 1024).fill(1);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    lib.sum(a);
    best = Math.min(best, performance.now() - t0);
  }
  return round(a.byteLength / (best / 1000) / 1e9);
}

// ---- PyTorch --------------------------------------------------------------------------------

/**
 * PyTorch on the same weights, twice: with libgomp's default wait policy (PyTorch as installed)
 * and with idle threads sleeping (OMP_WAIT_POLICY=passive), which on this 2-core machine makes
 * PyTorch up to 1.7x faster (its workers otherwise spin against its own Python thread). Each
 * figure is the faster of the two runs, so our engines are compared with PyTorch at its best.
 */
async function runTorch(m: LoadedModel): Promise<Record<string, unknown> | string> {
  // A Llama-family model was loaded from the checkpoint PyTorch reads; GPT-2's is written here.
  const llama = isLlama(m);
  const dir = llama ? m.dir : await Deno.makeTempDir({ prefix: "gpt2-bench-" });
  const script = llama ? "torch_llama_bench.py" : "torch_gpt2_bench.py";
  try {
    if (!llama) await writeHfCheckpoint(dir, asGpt2(m), { dtype: "F32" });
    const runs: Record<string, Record<string, unknown>> = {};
    for (const policy of ["default", "passive"]) {
      const r = await runTorchOnce(dir, policy, script);
      if (typeof r === "string") return `${policy} wait policy: ${r}`;
      runs[policy] = r;
    }
    const best: Record<string, unknown> = { torch: runs.default.torch, runs };
    for (const p of ["fp32", "bf16"]) {
      const a = runs.default[p] as Record<string, number> | undefined;
      const b = runs.passive[p] as Record<string, number> | undefined;
      if (!a || !b || "failed" in a || "failed" in b) {
        best[p] = a ?? b;
        continue;
      }
      best[p] = Object.fromEntries(Object.keys(a).map((k) => [k, Math.min(a[k], b[k])]));
    }
    return best;
  } finally {
    if (!llama) await Deno.remove(dir, { recursive: true });
  }
}

async function runTorchOnce(
  dir: string,
  policy: string,
  script: string,
): Promise<Record<string, unknown> | string> {
  const env = Deno.env.toObject();
  if (policy === "default") delete env.OMP_WAIT_POLICY;
  else env.OMP_WAIT_POLICY = policy;
  const cmd = new Deno.Command("/usr/bin/python3", {
    clearEnv: true,
    env,
    args: [
      `${root}bench/${script}`,
      dir,
      ...torchWorkloadArgs(work),
      ...["--threads", `${threads}`],
      // Without bf16 kernels PyTorch emulates bf16 autocast: at gpt2-medium one run went past
      // 17 minutes on this machine's AVX2 cores, so only fp32 is compared there.
      ...["--precision", lib?.bf16Supported ? "fp32,bf16" : "fp32"],
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const out = await cmd.output().catch((e) => e as Error);
  if (out instanceof Error) return `not run: ${out.message}`;
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    return `failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").at(-1)}`;
  }
  return JSON.parse(text.split("\n").at(-1)!);
}

// ---- Models ---------------------------------------------------------------------------------

/** Llama-family shapes test/python/llama_reference.py writes at their real size. */
const LLAMA_SHAPES = ["smollm2-135m", "qwen2.5-0.5b"];
for (const name of args.model.split(",")) {
  const known = [...Object.keys(GPT2_SHAPES), ...LLAMA_SHAPES];
  if (!known.includes(name)) {
    throw new RangeError(`--model must name ${known.join(", ")}: found ${JSON.stringify(name)}`);
  }
}

interface BenchModel {
  model: LoadedModel;
  params: number;
  /** The MLP's first product, [C] -> [F], where the GEMM peak is measured. */
  mlp: [number, number];
  /** Removes what was written for it (a Llama shape's checkpoint). */
  cleanup(): Promise<void>;
}

/** `name`'s random weights: GPT-2 built in memory, a Llama shape written and loaded. */
async function benchModel(name: string): Promise<BenchModel> {
  if (!LLAMA_SHAPES.includes(name)) {
    const shape = gpt2Shape(name);
    console.error(`${name}: generating ${round(parameterCount(shape) / 1e6)}M random parameters`);
    return {
      model: randomGpt2(shape, { seed: 1 }),
      params: parameterCount(shape),
      mlp: [shape.nEmbd, 4 * shape.nEmbd],
      cleanup: () => Promise.resolve(),
    };
  }
  const dir = await Deno.makeTempDir({ prefix: `${name}-bench-` });
  const cleanup = () => Deno.remove(dir, { recursive: true });
  try {
    console.error(`${name}: writing random weights with test/python/llama_reference.py`);
    const out = await new Deno.Command("/usr/bin/python3", {
      args: [`${root}test/python/llama_reference.py`, "--shape", name, "--out", dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
      throw new Error(`test/python/llama_reference.py exited ${out.code}: ${err}`);
    }
    const model = await loadModel(dir);
    const params = weightArrays(model.weights).reduce((n, a) => n + matrixLength(a), 0);
    return { model, params, mlp: [model.config.nEmbd, model.config.nInner], cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

// ---- Report ---------------------------------------------------------------------------------

const flops = (m: LoadedModel) => flopsOf(m.config, work);
const figures = (t: Timings, f: ReturnType<typeof flops>) => figuresOf(t, f, work);

const results: Record<string, unknown> = {
  time: new Date().toISOString(),
  threads,
  workload: { batch: B, seq: T, virtual: NV, answer: A, steps: STEPS, gen_prompt: G },
  gen: { tokens: GT, concurrent: N },
  bandwidth_gb_s: bandwidth(),
  models: {} as Record<string, unknown>,
};
const lines: string[] = [
  `bandwidth: ${results.bandwidth_gb_s} GB/s (every core reading 512 MiB); threads ${threads}`,
];
for (const name of args.model.split(",")) {
  let bm: BenchModel;
  try {
    bm = await benchModel(name);
  } catch (e) {
    const why = `unavailable: ${(e as Error).message}`;
    (results.models as Record<string, unknown>)[name] = why;
    lines.push(`${name}: ${why}`);
    continue;
  }
  try {
    const { model, params } = bm;
    const mib = () => round(Deno.memoryUsage().rss / 2 ** 20, 0);
    const rssModel = mib();
    const f = flops(model);
    const peaks = machinePeaks(...bm.mlp);
    const entry: Record<string, unknown> = {
      params,
      fp32_weights_mib: round((params * 4) / 2 ** 20, 0),
      rss_with_fp32_weights_mib: rssModel,
      peaks,
    };
    lines.push(`${name} (${round(params / 1e6)}M): GEMM peak ${JSON.stringify(peaks)}`);
    const ours: Record<string, unknown> = {};
    let bf16Weights: LoadedModel | undefined;
    for (const which of args.engines.split(",")) {
      let engine: Engine;
      quietBlas(which);
      // `name+bf16w`: the same engine on the weights rounded to bf16 and kept 16-bit.
      const [base, suffix] = which.split("+");
      try {
        if (suffix !== undefined && suffix !== "bf16w") {
          throw new RangeError(`unknown weights ${suffix}`);
        }
        const m = suffix ? (bf16Weights ??= halved(model, "bf16")) : model;
        if (base === "fast") engine = createFastEngine(m, { blas: blas ?? null });
        else if (base.startsWith("onednn-")) {
          engine = createOnednnEngine(m, { precision: base.slice(7), threads });
        } else throw new RangeError(`unknown engine ${which}`);
      } catch (e) {
        ours[which] = `unavailable: ${(e as Error).message}`;
        lines.push(`  ${which}: unavailable (${(e as Error).message.split(":")[0]})`);
        continue;
      }
      console.error(`${name}: ${engine.name}`);
      const rssEngine = mib();
      const fig = {
        ...figures(await timeEngine(engine, work), f),
        rss_engine_built_mib: rssEngine,
        rss_after_run_mib: mib(),
      };
      engine.dispose();
      ours[which] = fig;
      lines.push(`  ${which.padEnd(12)} ${JSON.stringify(fig)}`);
    }
    entry.ours = ours;
    if (!args["no-torch"]) {
      console.error(`${name}: pytorch`);
      const t = await runTorch(model);
      if (typeof t === "string") {
        entry.torch = t;
        lines.push(`  pytorch: ${t}`);
      } else {
        const tf: Record<string, unknown> = { version: t.torch };
        const runs = t.runs as Record<string, Record<string, Timings>>;
        tf.runs = Object.fromEntries(
          Object.entries(runs).map(([policy, r]) => [
            policy,
            r.fp32 && !("failed" in r.fp32) ? figures(r.fp32, f) : r.fp32,
          ]),
        );
        for (const p of ["fp32", "bf16"]) {
          const r = t[p] as Timings | { failed: string } | undefined;
          if (!r) continue;
          tf[p] = "failed" in r ? r : figures(r as Timings, f);
          lines.push(`  torch-${p.padEnd(6)} ${JSON.stringify(tf[p])}`);
        }
        entry.torch = tf;
        const ratio = (a: string, b: string) => {
          const x = ours[a] as Figures | undefined, y = tf[b] as Figures | undefined;
          if (typeof x !== "object" || typeof y !== "object" || !y.train_tokens_per_s) return null;
          return ratios(x, y);
        };
        entry.ratio_vs_torch = {
          "onednn-fp32_vs_fp32": ratio("onednn-fp32", "fp32"),
          // fp32 arithmetic on bf16-stored weights against PyTorch on fp32 weights.
          "onednn-fp32+bf16w_vs_fp32": ratio("onednn-fp32+bf16w", "fp32"),
          "onednn-bf16_vs_bf16": ratio("onednn-bf16", "bf16"),
          "fast_vs_fp32": ratio("fast", "fp32"),
        };
        lines.push(`  ratios (>1: ours faster): ${JSON.stringify(entry.ratio_vs_torch)}`);
      }
    }
    // Decode floor: every weight read once per step at the measured bandwidth.
    const bw = results.bandwidth_gb_s as number | null;
    if (bw) {
      const floor = (bytes: number) => round((params * bytes) / (bw * 1e9) * 1000, 2);
      entry.decode_floor_ms = { fp32: floor(4), bf16: floor(2) };
      // One request's decode step over that floor (issue 12's target: at most 1.3).
      const vs: Record<string, number> = {};
      for (const [k, v] of Object.entries(ours)) {
        if (typeof v !== "object") continue;
        const fl = k.endsWith("bf16") ? floor(2) : floor(4);
        vs[k] = round((v as { gen1_ms_per_token: number }).gen1_ms_per_token / fl, 2);
      }
      entry.decode_vs_floor = vs;
      lines.push(
        `  decode floor (weights read once): ${JSON.stringify(entry.decode_floor_ms)} ms; ` +
          `one request's step / floor: ${JSON.stringify(vs)}`,
      );
    }
    (results.models as Record<string, unknown>)[name] = entry;
  } finally {
    await bm.cleanup();
  }
}
console.log(lines.join("\n"));
if (args.json) await Deno.writeTextFile(args.json, JSON.stringify(results, null, 2) + "\n");
console.log(JSON.stringify(results));
