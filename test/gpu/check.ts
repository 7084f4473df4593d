/**
 * The Deno side of the GPU check (run.sh runs it step by step): each step writes
 * `<work>/results/<step>.json` ({ pass, summary, ... }) and exits 1 when it fails.
 *
 *   check.ts generate --work W --shapes gpt2,gpt2-medium
 *   check.ts oracle   --work W --shapes ... --python PY [--emulate]
 *   check.ts serving  --work W --shapes ... [--emulate]      (the first shape)
 *   check.ts training --work W --shapes ... [--emulate]      (the first shape)
 *   check.ts bench    --work W --shapes ... --python PY [--emulate]
 *   check.ts verdict  --work W --out OUT
 *
 * --emulate: the cuda engine runs on the CPU emulation of its device (the dry run).
 */
import { parseArgs } from "node:util";
import { loadModel } from "../../server/model/mod.ts";
import { loadTokenizer } from "../../server/model/tokenizer.ts";
import { writeRandomCheckpoint } from "../../server/model/testing/gpt2_checkpoint.ts";
import { cudaEngine, oracleEngines } from "./engines.ts";
import { benchShape } from "./gpu_bench.ts";
import { DECODE_STEPS, encodeCase, engineOutputs, makeCase } from "./oracle_case.ts";
import { encodeSafetensors } from "../../server/model/safetensors.ts";
import { checkServing } from "./serving_check.ts";
import { checkTraining, TRAIN_STEPS } from "./training_check.ts";
import { checkShape, modelDir } from "./shapes.ts";
import { verdict } from "./verdict.ts";

const root = new URL("../../", import.meta.url).pathname;
const { values: args, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    work: { type: "string" },
    shapes: { type: "string", default: "gpt2,gpt2-medium" },
    python: { type: "string", default: "python3" },
    out: { type: "string" },
    emulate: { type: "boolean", default: false },
  },
});
const step = positionals[0];
if (!args.work) throw new Error("--work is required");
const work = args.work;
const shapes = args.shapes.split(",");
shapes.forEach(checkShape);
const emulate = args.emulate;

interface StepResult {
  pass: boolean;
  summary: string;
  [detail: string]: unknown;
}

const fmt = (x: number) => x.toExponential(1);

async function generate(): Promise<StepResult> {
  const files: Record<string, string[]> = {};
  for (const shape of shapes) {
    const dir = modelDir(work, shape);
    files[shape] = await writeRandomCheckpoint(dir, checkShape(shape), {
      dtype: "F32",
      prefix: true, // as save_pretrained writes them
      tokenizer: "json",
      seed: 1,
    });
    const m = await loadModel(dir); // the service's own loader reads it back
    console.log(`  ${shape}: ${dir} (${m.config.nLayer} layers, C ${m.config.nEmbd})`);
  }
  return { pass: true, summary: shapes.join(", "), files };
}

async function oracle(): Promise<StepResult> {
  const reports: Record<string, unknown> = {};
  let pass = true;
  const lines: string[] = [];
  for (const shape of shapes) {
    const dir = modelDir(work, shape);
    const model = await loadModel(dir);
    const { vocabSize: V, nEmbd: C } = model.config;
    const c = makeCase(model.weights.wte, V, C);
    const caseDir = `${work}/oracle/${shape}`;
    await Deno.mkdir(caseDir, { recursive: true });
    const casePath = `${caseDir}/case.safetensors`;
    await Deno.writeFile(casePath, encodeCase(c, C, { shape, decode_steps: `${DECODE_STEPS}` }));
    const outputs: string[] = [];
    for (const spec of oracleEngines(emulate)) {
      const path = `${caseDir}/${spec.label.replace(" ", "-")}.safetensors`;
      try {
        const e = spec.open(model);
        try {
          const tensors = await engineOutputs(e.engine, c);
          await Deno.writeFile(
            path,
            encodeSafetensors(tensors, {
              label: e.label,
              precision: e.precision,
              engine: e.engine.name,
            }),
          );
          outputs.push(path);
        } finally {
          e.dispose();
        }
      } catch (err) {
        pass = false;
        lines.push(`${shape} ${spec.label}: engine failed: ${(err as Error).message}`);
      }
    }
    const json = `${caseDir}/oracle.json`;
    const run = await new Deno.Command(args.python, {
      args: [
        `${root}test/gpu/oracle.py`,
        ...["--model", dir, "--case", casePath, "--json", json],
        ...["--device", emulate ? "cpu" : "auto"],
        ...outputs,
      ],
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (run.code !== 0) pass = false;
    try {
      const r = JSON.parse(await Deno.readTextFile(json));
      reports[shape] = r;
      for (const x of r.results as Record<string, Record<string, number | boolean>>[]) {
        lines.push(
          `${shape} ${x.label}: ${x.pass ? "pass" : "FAIL"} logits ${fmt(x.logits.err as number)}` +
            ` grad ${
              fmt(x.grad.err as number)
            } decode ${x.decode_tokens.agree}/${x.decode_tokens.of}`,
        );
      }
    } catch (err) {
      pass = false;
      lines.push(`${shape}: oracle wrote no result (exit ${run.code}): ${(err as Error).message}`);
    }
  }
  return { pass, summary: lines.join("; "), reports };
}

async function serving(): Promise<StepResult> {
  const dir = modelDir(work, shapes[0]);
  const model = await loadModel(dir);
  const e = cudaEngine(model, "fp32", emulate);
  try {
    const r = await checkServing(e.engine, model.weights.wte, await loadTokenizer(dir));
    const pass = r.differing.length === 0 && r.mixedSteps > 0 && r.maxBatch > 1;
    return {
      pass,
      summary: `${shapes[0]} ${e.engine.name}: ${r.requests - r.differing.length}/${r.requests} ` +
        `requests identical alone and mixed, ${r.mixedSteps} mixed prefill+decode steps, ` +
        `batches up to ${r.maxBatch}, ${r.seconds.toFixed(1)} s`,
      ...r,
    };
  } finally {
    e.dispose();
  }
}

async function training(): Promise<StepResult> {
  const dir = modelDir(work, shapes[0]);
  const model = await loadModel(dir);
  const e = cudaEngine(model, "fp32", emulate);
  try {
    const r = await checkTraining(e.engine, model, await loadTokenizer(dir), work);
    const pass = r.steps === TRAIN_STEPS && r.losses.every(Number.isFinite) &&
      r.lastLosses < r.firstLosses && r.validations > 0 && r.written.length === 2 &&
      r.written.every((w) => w.finite);
    return {
      pass,
      summary:
        `${shapes[0]} ${e.engine.name}: ${r.steps} steps, loss ${r.firstLosses.toFixed(3)} -> ${
          r.lastLosses.toFixed(3)
        } (first/last 3), ${r.validations} validations, ` +
        `${r.written.map((w) => `${w.task} v${w.version}`).join(", ")} written, ` +
        `${Math.round(r.tokensPerSecond)} tokens/s`,
      ...r,
    };
  } finally {
    e.dispose();
  }
}

async function bench(): Promise<StepResult> {
  const results: Record<string, unknown> = {};
  let pass = true;
  const lines: string[] = [];
  for (const shape of shapes) {
    console.log(`${shape}:`);
    const model = await loadModel(modelDir(work, shape));
    const r = await benchShape(model, modelDir(work, shape), {
      emulate,
      python: args.python,
      root,
    });
    results[shape] = r;
    const failed = Object.entries(r.ours).filter(([, v]) => "failed" in v).map(([p]) => p);
    if (failed.length > 0 || "failed" in r.torch) pass = false;
    lines.push(
      `${shape}: ours ${failed.length ? `failed at ${failed.join(", ")}` : "ran"}, torch ${
        "failed" in r.torch ? "failed" : "ran"
      }`,
    );
  }
  return { pass, summary: lines.join("; "), shapes: results };
}

const steps: Record<string, () => Promise<StepResult>> = {
  generate,
  oracle,
  serving,
  training,
  bench,
};

if (step === "verdict") {
  if (!args.out) throw new Error("--out is required");
  const { line, pass } = await verdict(work, args.out);
  console.log(line);
  Deno.exit(pass ? 0 : 1);
}
const run = steps[step];
if (!run) throw new Error(`step must be one of ${[...Object.keys(steps), "verdict"].join(", ")}`);
let result: StepResult;
try {
  result = await run();
} catch (err) {
  result = { pass: false, summary: `threw: ${(err as Error).stack ?? err}` };
}
await Deno.mkdir(`${work}/results`, { recursive: true });
await Deno.writeTextFile(`${work}/results/${step}.json`, JSON.stringify(result, null, 2) + "\n");
console.log(`${step}: ${result.pass ? "pass" : "FAIL"}: ${result.summary}`);
Deno.exit(result.pass ? 0 : 1);
