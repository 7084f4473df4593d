/**
 * The fast engine doing the work of bench/torch_prompt_tuning_cpu.py (a copy of
 * ../shared/bench's), and (when Debian's python3-torch is installed) that script in the same run,
 * so the ratio is measured under the same machine load: prompt tuning (10 virtual tokens
 * prepended, batch 32, answer-only loss, AdamW lr 0.03, one pass over the examples), then greedy
 * generation of each answer with a KV cache.
 *
 * Run: deno run -A bench/engine_bench.ts [--limit N] [--no-torch] [--torch-tuned] [--ts]
 *        [--threads N] [--profile] [--examples FILE] [--model DIR] [--json FILE]
 * --ts: the TypeScript sgemm instead of OpenBLAS; --profile: time per engine phase;
 * --torch-tuned: also run PyTorch with the OpenBLAS kernel family this engine requested;
 * --engine onednn: the oneDNN engine instead of the fast one.
 * Prints the figures and, last, one JSON line (also written to --json FILE when given).
 */
import { parseArgs } from "node:util";
import { embedRows, type Engine } from "../server/model/engine.ts";
import { loadBlas } from "../server/model/fast/blas.ts";
import { createFastEngine } from "../server/model/fast/fast_engine.ts";
import { loadModel } from "../server/model/loader.ts";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: `${root}models/tiny-gpt2` },
    examples: {
      type: "string",
      default: `${root}test/fixtures/bench/sentiment_train_tokens.jsonl`,
    },
    limit: { type: "string" },
    virtual: { type: "string", default: "10" },
    batch: { type: "string", default: "32" },
    lr: { type: "string", default: "0.03" },
    threads: { type: "string" },
    "no-torch": { type: "boolean", default: false },
    "torch-tuned": { type: "boolean", default: false },
    ts: { type: "boolean", default: false },
    profile: { type: "boolean", default: false },
    engine: { type: "string", default: "fast" },
    json: { type: "string" },
  },
});

interface Example {
  prompt_ids: number[];
  answer_ids: number[];
}

function positiveInt(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`--${name} must be a positive integer: found ${v}`);
  }
  return n;
}

const VIRTUAL = positiveInt("virtual", args.virtual);
const BATCH = positiveInt("batch", args.batch);
const LR = Number(args.lr);
const threads = args.threads === undefined ? undefined : positiveInt("threads", args.threads);

let examples: Example[] = (await Deno.readTextFile(args.examples)).split("\n").filter((l) =>
  l.trim()
).map((l) => JSON.parse(l));
if (args.limit) examples = examples.slice(0, positiveInt("limit", args.limit));

/** Deterministic uniform [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** AdamW as torch.optim.AdamW defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01). */
class AdamW {
  readonly m: Float32Array;
  readonly v: Float32Array;
  t = 0;
  constructor(readonly p: Float32Array, readonly lr: number) {
    this.m = new Float32Array(p.length);
    this.v = new Float32Array(p.length);
  }
  step(g: Float32Array): void {
    const b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    this.t++;
    const c1 = 1 - b1 ** this.t, c2 = 1 - b2 ** this.t;
    for (let i = 0; i < this.p.length; i++) {
      this.p[i] *= 1 - this.lr * wd;
      this.m[i] = b1 * this.m[i] + (1 - b1) * g[i];
      this.v[i] = b2 * this.v[i] + (1 - b2) * g[i] * g[i];
      this.p[i] -= this.lr * (this.m[i] / c1) / (Math.sqrt(this.v[i] / c2) + eps);
    }
  }
}

async function train(engine: Engine, prompt: Float32Array) {
  const C = engine.config.nEmbd;
  const opt = new AdamW(prompt, LR);
  const grad = new Float32Array(prompt.length); // [VIRTUAL, C]
  let tokens = 0, loss = 0;
  const t0 = performance.now();
  for (let s = 0; s < examples.length; s += BATCH) {
    const batch = examples.slice(s, s + BATCH);
    const lens = batch.map((e) => VIRTUAL + e.prompt_ids.length + e.answer_ids.length);
    const N = lens.reduce((a, b) => a + b, 0);
    const embeds = new Float32Array(N * C); // [N, C]
    const lossRows: number[] = [], targets: number[] = [];
    let at = 0;
    for (const e of batch) {
      embeds.set(prompt, at * C);
      const ids = [...e.prompt_ids, ...e.answer_ids];
      embeds.set(engine.embed(ids), (at + VIRTUAL) * C);
      const first = at + VIRTUAL + e.prompt_ids.length; // row of the first answer token
      for (let i = 0; i < e.answer_ids.length; i++) {
        lossRows.push(first - 1 + i);
        targets.push(e.answer_ids[i]);
      }
      at += VIRTUAL + ids.length;
    }
    const out = await engine.lossAndGrad({
      embeds,
      seqs: lens.map((length) => ({ length })),
      lossRows: Int32Array.from(lossRows),
      targets: Int32Array.from(targets),
    });
    grad.fill(0);
    at = 0;
    for (const len of lens) {
      for (let i = 0; i < VIRTUAL * C; i++) grad[i] += out.gradEmbeds[at * C + i];
      at += len;
    }
    opt.step(grad);
    loss = out.loss;
    tokens += N;
  }
  const s = (performance.now() - t0) / 1000;
  return { tokens, s, loss };
}

async function infer(engine: Engine, prompt: Float32Array) {
  const { nEmbd: C, vocabSize: V } = engine.config;
  let correct = 0;
  const t0 = performance.now();
  for (let s = 0; s < examples.length; s += BATCH) {
    const batch = examples.slice(s, s + BATCH);
    const steps = Math.max(...batch.map((e) => e.answer_ids.length));
    const caches = batch.map(() => engine.newCache());
    const lens = batch.map((e) => VIRTUAL + e.prompt_ids.length);
    const N = lens.reduce((a, b) => a + b, 0);
    const embeds = new Float32Array(N * C); // [N, C]
    const last = new Int32Array(batch.length);
    let at = 0;
    for (const [i, e] of batch.entries()) {
      embeds.set(prompt, at * C);
      embeds.set(engine.embed(e.prompt_ids), (at + VIRTUAL) * C);
      at += lens[i];
      last[i] = at - 1;
    }
    let out = await engine.forward({
      embeds,
      seqs: lens.map((length, i) => ({ length, cache: caches[i] })),
      logitRows: last,
    });
    const generated: number[][] = batch.map(() => []);
    for (let step = 0; step < steps; step++) {
      const next = new Array<number>(batch.length);
      for (let i = 0; i < batch.length; i++) {
        let best = 0;
        const base = i * V;
        for (let v = 1; v < V; v++) if (out.logits[base + v] > out.logits[base + best]) best = v;
        next[i] = best;
        generated[i].push(best);
      }
      if (step === steps - 1) break;
      out = await engine.forward({
        embeds: engine.embed(next),
        seqs: caches.map((cache) => ({ length: 1, cache })),
        logitRows: Int32Array.from(next, (_, i) => i),
      });
    }
    for (const [i, e] of batch.entries()) if (generated[i][0] === e.answer_ids[0]) correct++;
    for (const c of caches) c.dispose();
  }
  const s = (performance.now() - t0) / 1000;
  return { s, accuracy: correct / examples.length };
}

/**
 * Runs the PyTorch script. `coreType` undefined runs it as Debian ships it (without the
 * OPENBLAS_CORETYPE that loadBlas may have set in this process); a value runs it with that kernel
 * family, i.e. with the same OpenBLAS kernels as this engine.
 */
async function runTorch(coreType?: string): Promise<Record<string, number> | string> {
  const py = "/usr/bin/python3";
  // The copy shipped in bench/, else the original beside the project.
  const candidates = [
    `${root}bench/torch_prompt_tuning_cpu.py`,
    `${root}../shared/bench/torch_prompt_tuning_cpu.py`,
  ];
  const found = await Promise.all(candidates.map((p) => Deno.stat(p).then(() => p, () => null)));
  const script = found.find((p) => p !== null);
  if (!script) return `skipped: ${candidates.join(" and ")} not found`;
  const probe = await new Deno.Command(py, { args: ["-c", "import torch"], stderr: "null" })
    .output().catch(() => null);
  if (!probe?.success) {
    return "skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)";
  }
  let file = args.examples;
  if (args.limit) {
    file = await Deno.makeTempFile({ suffix: ".jsonl" });
    await Deno.writeTextFile(file, examples.map((e) => JSON.stringify(e)).join("\n") + "\n");
  }
  const cmdArgs = [script, args.model, file, "--virtual", `${VIRTUAL}`, "--batch", `${BATCH}`];
  if (threads) cmdArgs.push("--threads", `${threads}`);
  const env = Deno.env.toObject();
  delete env.OPENBLAS_CORETYPE;
  if (coreType) env.OPENBLAS_CORETYPE = coreType;
  // OpenMP's wait policy as the user started this run, whatever the engine set for itself.
  delete env.OMP_WAIT_POLICY;
  if (userOmpPolicy) env.OMP_WAIT_POLICY = userOmpPolicy;
  const out = await new Deno.Command(py, { args: cmdArgs, env, clearEnv: true }).output();
  if (args.limit) await Deno.remove(file);
  if (!out.success) return `failed: ${new TextDecoder().decode(out.stderr).slice(-500)}`;
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

const model = await loadModel(args.model);
const userCoreType = Deno.env.get("OPENBLAS_CORETYPE");
const userOmpPolicy = Deno.env.get("OMP_WAIT_POLICY");
const native = args.ts ? null : loadBlas({ threads });
const profile = args.profile ? new Map<string, number>() : undefined;
if (!["fast", "onednn"].includes(args.engine)) {
  throw new RangeError(`--engine takes fast or onednn: found ${JSON.stringify(args.engine)}`);
}
const engine = args.engine === "onednn"
  ? (await import("../server/model/onednn/onednn_engine.ts")).createOnednnEngine(model, {
    threads,
    profile,
  })
  : createFastEngine(model, { blas: native, profile });
const C = model.config.nEmbd;
// The rows torch.manual_seed(0); torch.randint(0, 5000, (10,)) picks in the baseline script, so
// both runs start from the same prompt and their final losses can be compared.
const TORCH_INIT_IDS = [1044, 3239, 4933, 3760, 3963, 3379, 427, 3503, 3497, 683];
const r = rng(0);
const prompt = new Float32Array(VIRTUAL * C); // [VIRTUAL, C]
for (let i = 0; i < VIRTUAL; i++) {
  const id = VIRTUAL === TORCH_INIT_IDS.length ? TORCH_INIT_IDS[i] : Math.floor(r() * 5000);
  prompt.set(embedRows(model.weights.wte, C, [id]), i * C);
}

// Warm-up (JIT, arena growth) on a few batches that are not timed.
{
  const saved = examples;
  examples = saved.slice(0, Math.min(saved.length, 2 * BATCH));
  await train(engine, prompt.slice());
  await infer(engine, prompt);
  examples = saved;
  profile?.clear();
}

const tr = await train(engine, prompt);
const trainProfile = profile ? new Map(profile) : null;
profile?.clear();
const inf = await infer(engine, prompt);
const inferProfile = profile ? new Map(profile) : null;
engine.dispose();

const ours = {
  engine: engine.name,
  examples: examples.length,
  train_tokens_per_s: Math.round(tr.tokens / tr.s * 10) / 10,
  train_s: Math.round(tr.s * 100) / 100,
  infer_examples_per_s: Math.round(examples.length / inf.s * 10) / 10,
  infer_s: Math.round(inf.s * 100) / 100,
  final_loss: Math.round(tr.loss * 1e4) / 1e4,
  first_token_accuracy: Math.round(inf.accuracy * 1e4) / 1e4,
};
console.log(`fast engine (${engine.name}):`, JSON.stringify(ours));
if (trainProfile && inferProfile) {
  const fmt = (m: Map<string, number>, total: number) => {
    const inside = [...m.values()].reduce((a, b) => a + b, 0) / 1000;
    return [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${(v / 1000).toFixed(2)}`)
      .join(", ") + `, outside the engine ${(total - inside).toFixed(2)} (s)`;
  };
  console.log(`  train profile: ${fmt(trainProfile, tr.s)}`);
  console.log(`  infer profile: ${fmt(inferProfile, inf.s)}`);
}

const ratios = (t: Record<string, number>) => ({
  train: Math.round(ours.train_tokens_per_s / t.train_tokens_per_s * 100) / 100,
  infer: Math.round(ours.infer_examples_per_s / t.infer_examples_per_s * 100) / 100,
});
const result: Record<string, unknown> = { ours };
if (args["no-torch"]) {
  result.torch = "skipped: --no-torch";
  console.log("pytorch baseline skipped: --no-torch");
} else {
  // As shipped, unless the user chose a kernel family for this whole run.
  const torch = await runTorch(userCoreType);
  result.torch = torch;
  if (typeof torch === "object") {
    const r = ratios(torch);
    result.ratio = r;
    console.log(
      `pytorch baseline${userCoreType ? ` (OPENBLAS_CORETYPE=${userCoreType})` : ""}:`,
      JSON.stringify(torch),
    );
    console.log(`ratio vs pytorch: train ${r.train}x, inference ${r.infer}x`);
  } else console.log(`pytorch baseline ${torch}`);
  const oursCore = native?.coreType;
  if (args["torch-tuned"] && oursCore && !userCoreType) {
    const tuned = await runTorch(oursCore);
    result.torch_same_kernels = tuned;
    if (typeof tuned === "object") {
      const r = ratios(tuned);
      result.ratio_same_kernels = r;
      console.log(`pytorch with OPENBLAS_CORETYPE=${oursCore}:`, JSON.stringify(tuned));
      console.log(
        `ratio vs that: train ${r.train}x, inference ${r.infer}x`,
      );
    } else console.log(`pytorch with OPENBLAS_CORETYPE=${oursCore} ${tuned}`);
  }
}
const line = JSON.stringify(result);
console.log(line);
if (args.json) await Deno.writeTextFile(args.json, line + "\n");
