/**
 * The GPU benchmark of the cuda engine (scripts/gpu-check.sh runs it): GPT-2 124M- and
 * 345M-shaped random weights, batch 16 x 128, per precision setting:
 * - prompt-tuning training tokens/s: 10 virtual tokens + 118 token rows per sequence, loss on every
 *   next token (as a PEFT run with labels = input ids), the input-embedding gradient, AdamW on the
 *   prompt (host side, as the trainer does);
 * - forward tokens/s: the same 16 x 128 rows, logits at each sequence's last row (what serving
 *   and scoring read; the contract never projects the other rows);
 * - mixed-task continuous batching requests/s: 64 requests over three tasks of 10, 20 and 30
 *   virtual tokens, 32 new tokens each, through the service's own scheduler, batch limit 16.
 * Printed next to the Hugging Face PEFT figures on an H100 (issue 14): training 60k tokens/s fp32,
 * 79k bf16; forward 348k tokens/s bf16.
 *
 * Run: deno run -A bench/cuda_bench.ts [--shapes 124m,345m] [--precisions fp32,tf32,bf16]
 *        [--steps 10] [--requests 64] [--emulate] [--json FILE]
 * --emulate runs the emulated device (CPU) on a `tiny` shape only: a smoke test of this script.
 */
import { parseArgs } from "node:util";
import type { Gpt2Config } from "../server/model/config.ts";
import { createCudaEngine, type CudaPrecision } from "../server/model/cuda/cuda_engine.ts";
import { emulatedDevice } from "../server/model/testing/emulated_cuda_device.ts";
import type { Engine } from "../server/model/engine.ts";
import { loadTokenizer } from "../server/model/tokenizer.ts";
import type { Gpt2Weights, LoadedModel } from "../server/model/weights.ts";
import type { Matrix } from "../server/model/half.ts";
import { uniform } from "../server/model/testing/random.ts";
import { validateTemplate } from "../server/prompts/template.ts";
import { InferenceService, type ServedTask } from "../server/serving/inference_service.ts";
import { PromptSlots } from "../server/serving/prompt_slots.ts";
import { Scheduler } from "../server/serving/scheduler.ts";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    shapes: { type: "string", default: "124m,345m" },
    precisions: { type: "string", default: "fp32,tf32,bf16" },
    steps: { type: "string", default: "10" },
    requests: { type: "string", default: "64" },
    emulate: { type: "boolean", default: false },
    json: { type: "string" },
  },
});

const SHAPES: Record<string, { nLayer: number; nEmbd: number; nHead: number }> = {
  "124m": { nLayer: 12, nEmbd: 768, nHead: 12 },
  "345m": { nLayer: 24, nEmbd: 1024, nHead: 16 },
  tiny: { nLayer: 2, nEmbd: 64, nHead: 4 },
};
const BATCH = 16, SEQ = 128, VIRTUAL = 10, NEW_TOKENS = 32, MAX_BATCH = 16;
const STEPS = Number(args.steps), REQUESTS = Number(args.requests);
const PEFT_H100 = { trainFp32: 60_000, trainBf16: 79_000, forwardBf16: 348_000 };

/** GPT-2-shaped random weights (scale 0.02 as GPT-2's initialiser; unit layer-norm gains). */
function randomModel(shape: string): LoadedModel {
  const s = SHAPES[shape];
  if (!s) throw new RangeError(`unknown shape ${shape}: one of ${Object.keys(SHAPES).join(", ")}`);
  const C = s.nEmbd, F = 4 * C, V = 50257, P = 1024;
  const config: Gpt2Config = {
    vocabSize: V,
    nPositions: P,
    nEmbd: C,
    nLayer: s.nLayer,
    nHead: s.nHead,
    nInner: F,
    layerNormEpsilon: 1e-5,
    activation: "gelu_new",
    bosTokenId: V - 1,
    eosTokenId: V - 1,
    tieWordEmbeddings: true,
  };
  let seed = 1;
  const r = (n: number) => uniform(n, seed++, 0.02);
  const ones = (n: number) => new Float32Array(n).fill(1);
  const weights: Gpt2Weights = {
    wte: r(V * C),
    wpe: r(P * C),
    lnFG: ones(C),
    lnFB: r(C),
    layers: Array.from({ length: s.nLayer }, () => ({
      ln1G: ones(C),
      ln1B: r(C),
      attnW: r(C * 3 * C),
      attnB: r(3 * C),
      attnProjW: r(C * C),
      attnProjB: r(C),
      ln2G: ones(C),
      ln2B: r(C),
      fcW: r(C * F),
      fcB: r(F),
      fcProjW: r(F * C),
      fcProjB: r(C),
    })),
  };
  return { dir: `random:${shape}`, config, weights, weightsHash: `random-${shape}` };
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

/** Prompt tuning: seconds for STEPS steps after 2 warm-up steps; returns tokens/s. */
async function trainTokensPerSecond(engine: Engine): Promise<number> {
  const { nEmbd: C, vocabSize: V } = engine.config;
  const prompt = uniform(VIRTUAL * C, 7, 0.02); // [VIRTUAL, C] the trained parameter
  const m = new Float32Array(prompt.length), v = new Float32Array(prompt.length);
  const T = SEQ - VIRTUAL;
  const ids = Int32Array.from(uniform(BATCH * T, 9, 1), (x) => Math.floor((x + 1) / 2 * (V - 1)));
  const tokenRows = engine.embed(ids); // [BATCH * T, C]
  const lossRows: number[] = [], targets: number[] = [];
  for (let b = 0; b < BATCH; b++) {
    for (let t = 0; t < T - 1; t++) {
      lossRows.push(b * SEQ + VIRTUAL + t);
      targets.push(ids[b * T + t + 1]);
    }
  }
  const input = {
    embeds: new Float32Array(BATCH * SEQ * C), // [BATCH * SEQ, C]
    seqs: Array.from({ length: BATCH }, () => ({ length: SEQ })),
    lossRows: Int32Array.from(lossRows),
    targets: Int32Array.from(targets),
  };
  let step = 0;
  const once = async () => {
    for (let b = 0; b < BATCH; b++) {
      input.embeds.set(prompt, b * SEQ * C);
      input.embeds.set(tokenRows.subarray(b * T * C, (b + 1) * T * C), (b * SEQ + VIRTUAL) * C);
    }
    const { gradEmbeds } = await engine.lossAndGrad(input);
    // AdamW (lr 0.03, betas 0.9/0.999) on the prompt: its gradient is the sum over the batch.
    step++;
    for (let i = 0; i < prompt.length; i++) {
      let g = 0;
      for (let b = 0; b < BATCH; b++) g += gradEmbeds[b * SEQ * C + i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      const mh = m[i] / (1 - 0.9 ** step), vh = v[i] / (1 - 0.999 ** step);
      prompt[i] -= 0.03 * (mh / (Math.sqrt(vh) + 1e-8) + 0.01 * prompt[i]);
    }
  };
  await once();
  await once();
  const s = await timed(async () => {
    for (let i = 0; i < STEPS; i++) await once();
  });
  return (BATCH * SEQ * STEPS) / s;
}

async function forwardTokensPerSecond(engine: Engine): Promise<number> {
  const { nEmbd: C } = engine.config;
  const input = {
    embeds: uniform(BATCH * SEQ * C, 11, 0.05), // [BATCH * SEQ, C]
    seqs: Array.from({ length: BATCH }, () => ({ length: SEQ })),
    logitRows: Int32Array.from({ length: BATCH }, (_, b) => b * SEQ + SEQ - 1),
  };
  await engine.forward(input);
  const s = await timed(async () => {
    for (let i = 0; i < STEPS; i++) await engine.forward(input);
  });
  return (BATCH * SEQ * STEPS) / s;
}

async function mixedRequestsPerSecond(engine: Engine, wte: Matrix): Promise<number> {
  const { nEmbd: C, vocabSize: V } = engine.config;
  const tokenizer = await loadTokenizer(`${root}models/tiny-gpt2`); // GPT-2's 50257 tokens
  const task = (name: string, virtual: number, seed: number): ServedTask => ({
    name,
    version: 1,
    totalVirtualTokens: virtual,
    table: uniform(virtual * C, seed, 0.02),
    template: validateTemplate({
      taskname: name,
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      prompt_template_fields: ["sentence", "label"],
      total_virtual_tokens: virtual,
      virtual_token_splits: [virtual],
      truncate_field: null,
      answer_only_loss: true,
      answer_field: "label",
    }, "bench"),
  });
  const tasks = new Map([["a", 10], ["b", 20], ["c", 30]].map(([n, k], i) => [
    n as string,
    task(n as string, k as number, 100 + i),
  ]));
  const slots = new PromptSlots({
    vocabSize: V,
    hidden: C,
    wte,
    maxSlots: 4,
    maxVirtualTokens: 32,
  });
  const scheduler = new Scheduler({
    engine,
    embedder: slots,
    decode: (ids) => tokenizer.decode(ids),
    eosId: tokenizer.eosId,
    limits: { maxBatchSize: MAX_BATCH },
  });
  const service = new InferenceService({
    describeTask: (name) => Promise.resolve(tasks.get(name)!),
    loadTable: (name) => Promise.resolve(tasks.get(name)!.table!),
    tokenizer,
    slots,
    scheduler,
  });
  const sentence = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding " +
    "period in 2007 , representing 7.7 % of net sales .";
  const requests = Array.from({ length: REQUESTS }, (_, i) => ({
    task: ["a", "b", "c"][i % 3],
    fields: { sentence: `${sentence} (${i})` },
    options: { maxNewTokens: NEW_TOKENS, minNewTokens: NEW_TOKENS }, // no early EOS
  }));
  await service.infer(requests[0]); // warm-up
  const s = await timed(async () => {
    await Promise.all(requests.map((r) => service.infer(r)));
  });
  return REQUESTS / s;
}

const shapes = args.emulate ? ["tiny"] : args.shapes.split(",");
const precisions = args.precisions.split(",") as CudaPrecision[];
const results: Record<string, unknown>[] = [];
for (const shape of shapes) {
  const model = randomModel(shape);
  for (const precision of precisions) {
    const engine = createCudaEngine(model, {
      precision,
      ...(args.emulate ? { device: emulatedDevice() } : {}),
    });
    const row = {
      shape,
      precision,
      engine: engine.name,
      trainTokensPerS: Math.round(await trainTokensPerSecond(engine)),
      forwardTokensPerS: Math.round(await forwardTokensPerSecond(engine)),
      mixedRequestsPerS: Number(
        (await mixedRequestsPerSecond(engine, model.weights.wte)).toFixed(2),
      ),
    };
    engine.dispose();
    results.push(row);
    console.log(
      `${shape} ${
        precision.padEnd(4)
      }  train ${row.trainTokensPerS} tok/s  forward ${row.forwardTokensPerS} tok/s  mixed ${row.mixedRequestsPerS} req/s  (${row.engine})`,
    );
  }
}
console.log(
  `PEFT on an H100 (124M shape, issue 14): train ${PEFT_H100.trainFp32} tok/s fp32, ${PEFT_H100.trainBf16} bf16; forward ${PEFT_H100.forwardBf16} tok/s bf16`,
);
const out = JSON.stringify({
  batch: BATCH,
  seq: SEQ,
  virtual: VIRTUAL,
  newTokens: NEW_TOKENS,
  requests: REQUESTS,
  results,
  peftH100: PEFT_H100,
});
console.log(out);
if (args.json) await Deno.writeTextFile(args.json, out + "\n");
