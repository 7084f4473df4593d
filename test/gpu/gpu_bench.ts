/**
 * The bench step: bench/engine_work.ts's prompt-tuning and generation work on the cuda engine at
 * every precision it offers, next to PyTorch on the same checkpoint in the same run
 * (bench/torch_gpt2_bench.py: plain PyTorch fp32, TF32, bf16 and fp16 autocast, and Hugging Face
 * PEFT prompt tuning where peft imports), with each side's peak GPU memory.
 */
import type { CudaPrecision } from "../../server/model/cuda/cuda_engine.ts";
import { CUDA_PRECISIONS } from "../../server/model/cuda/cuda_engine.ts";
import { asGpt2, type LoadedModel } from "../../server/model/weights.ts";
import {
  type Figures,
  figures,
  flops,
  ratios,
  round,
  timeEngine,
  type Timings,
  torchWorkloadArgs,
  type Workload,
} from "../../bench/engine_work.ts";
import { cudaEngine } from "./engines.ts";

export const GPU_WORK: Workload = {
  batch: 16,
  seq: 128,
  virtual: 10,
  answer: 8,
  steps: 5,
  genPrompt: 32,
  genTokens: 16,
  concurrent: 32,
};
/** The dry run's: the same code paths, sized for the emulation. */
export const DRY_WORK: Workload = {
  batch: 2,
  seq: 24,
  virtual: 4,
  answer: 4,
  steps: 1,
  genPrompt: 8,
  genTokens: 2,
  concurrent: 4,
};

type Row = Figures & { peak_mib?: number };

export interface ShapeBench {
  ours: Record<string, Row | { failed: string }>;
  torch: Record<string, Row | { failed: string }> | { failed: string };
  peft: Record<string, unknown> | string | null;
  /** ours at each precision over PyTorch at the same precision (> 1: ours faster). */
  ratios: Record<string, ReturnType<typeof ratios> | null>;
}

export async function benchShape(
  model: LoadedModel,
  dir: string,
  opts: { emulate: boolean; python: string; root: string },
): Promise<ShapeBench> {
  const work = opts.emulate ? DRY_WORK : GPU_WORK;
  const f = flops(asGpt2(model).config, work);
  const ours: ShapeBench["ours"] = {};
  for (const precision of CUDA_PRECISIONS) {
    try {
      const e = cudaEngine(model, precision, opts.emulate);
      try {
        const t = await timeEngine(e.engine, work);
        ours[precision] = {
          ...figures(t, f, work),
          peak_mib: round(e.device!.peakBytes / 2 ** 20),
        };
      } finally {
        e.dispose();
      }
    } catch (err) {
      ours[precision] = { failed: (err as Error).message };
    }
    console.log(`  ours ${precision}: ${JSON.stringify(ours[precision])}`);
  }
  const torch = await runTorch(dir, work, opts);
  const table: ShapeBench["torch"] = "failed" in torch ? { failed: String(torch.failed) } : {};
  let peft: ShapeBench["peft"] = null;
  if (!("failed" in torch)) {
    for (const p of CUDA_PRECISIONS) {
      const r = torch[p] as (Timings & { peak_mib?: number }) | { failed: string } | undefined;
      if (!r) continue;
      (table as Record<string, unknown>)[p] = "failed" in r
        ? r
        : { ...figures(r, f, work), peak_mib: r.peak_mib };
    }
    peft = peftFigures(torch.peft, work);
  }
  const rs: ShapeBench["ratios"] = {};
  for (const p of CUDA_PRECISIONS) {
    const a = ours[p], b = "failed" in table ? undefined : table[p];
    rs[p] = a && b && !("failed" in a) && !("failed" in b) ? ratios(a, b as Row) : null;
  }
  console.log(`  torch: ${JSON.stringify(table)}`);
  console.log(`  peft: ${JSON.stringify(peft)}`);
  console.log(`  ours / torch: ${JSON.stringify(rs)}`);
  return { ours, torch: table, peft, ratios: rs };
}

/** PEFT's timings as tokens/s (its train step projects every row: the usual PEFT cost). */
function peftFigures(peft: unknown, w: Workload): ShapeBench["peft"] {
  if (peft === undefined) return null;
  if (typeof peft === "string") return peft;
  const tokens = w.batch * w.seq;
  return Object.fromEntries(
    Object.entries(peft as Record<string, Record<string, number | string>>).map(([p, r]) => [
      p,
      "failed" in r ? r : {
        train_tokens_per_s: round(tokens / (r.train_step_s as number)),
        forward_tokens_per_s: round(tokens / (r.forward_s as number)),
        peak_mib: r.peak_mib,
      },
    ]),
  );
}

async function runTorch(
  dir: string,
  work: Workload,
  opts: { emulate: boolean; python: string; root: string },
): Promise<Record<string, unknown>> {
  // On the CPU (the dry run) PyTorch has fp32 and bf16 autocast only.
  const precisions: CudaPrecision[] = opts.emulate ? ["fp32", "bf16"] : [...CUDA_PRECISIONS];
  const cmd = new Deno.Command(opts.python, {
    args: [
      `${opts.root}bench/torch_gpt2_bench.py`,
      dir,
      ...torchWorkloadArgs(work),
      ...["--device", opts.emulate ? "cpu" : "cuda", "--precision", precisions.join(",")],
      "--peft",
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const out = await cmd.output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    return { failed: `torch_gpt2_bench.py exited ${out.code}: ${err}` };
  }
  return JSON.parse(stdout.split("\n").at(-1)!);
}
